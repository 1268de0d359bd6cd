"""The keys of the view on screen, in one line at the bottom (and, in full, in ``?``).

Textual's Footer is not used: it builds a widget per key and rebuilds them whenever the
bindings change (every switch of view), and each rebuild left the old ones referenced from
the footer's data bindings, so a long session grew and slowed down. This is one line of text,
drawn from the screen's own bindings, so it cannot drift from what the keys do.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from rich.text import Text
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget

KEY_NAMES = {"slash": "/", "question_mark": "?", "space": "space", "escape": "esc", "colon": ":"}


def keys_of(screen: Screen[Any], *, shown_only: bool = False) -> list[tuple[str, str]]:
    """(key, what it does) for each binding the screen allows now (read-only hides verbs);
    ``shown_only`` keeps those marked for the bottom line."""
    out = []
    for b in [*screen.BINDINGS, *screen.app.BINDINGS]:
        if not isinstance(b, Binding) or not b.description or (shown_only and not b.show):
            continue
        action = b.action.split("(", 1)[0]
        if screen.check_action(action, ()) is False:
            continue
        key = b.key.split(",")[0]
        out.append((KEY_NAMES.get(key, key), b.description))
    return out


@runtime_checkable
class KeyNote(Protocol):
    """A view with something to say before its keys (the fleet view: how many rows are
    marked)."""

    @property
    def key_note(self) -> str: ...


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        background: $panel;
        padding: 0 1;
    }
    """

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        if isinstance(self.screen, KeyNote) and (note := self.screen.key_note):
            text.append(note, style="reverse bold")
            text.append("  ")
        keys = keys_of(self.screen, shown_only=True)
        # "? help" first: where the line is cut (80 columns), the way to every key stays
        keys.sort(key=lambda kw: kw[0] != "?")
        for key, what in keys:
            text.append(key, style="bold")
            text.append(f" {what}  ", style="dim" if key in ("q",) else "")
        return text
