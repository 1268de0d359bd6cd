"""``?``: the keys of the view underneath, from its own bindings (so it cannot drift)."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

from console.tui.key_bar import keys_of


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "close"),
        Binding("question_mark", "dismiss", "close", show=False),
    ]

    def __init__(self, under: Screen[Any]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        title = type(self.under).__name__.removesuffix("Screen").lower()
        # ``:`` is the app's own binding, so keys_of lists it once with the view's keys.
        lines = [f"{key:>8}  {what}" for key, what in keys_of(self.under)]
        with VerticalScroll(id="help", can_focus=False):
            yield Label(f"keys: {title} view", id="title", markup=False)
            yield Static("\n".join(lines), id="keys", markup=False)
            log = getattr(self.app, "log_path", None)
            hint = f"esc closes · the console's log: {log}" if log else "esc closes"
            yield Label(hint, id="hint", markup=False)
