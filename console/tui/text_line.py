"""Widgets for text: one line that changes often (the banner, the source), one said in parts
that wraps between them (the fleet's totals), and a block of lines (the node view's parts, the
alerts' count).

``Static.update`` asks for a new layout of the whole screen each time, as its content might
change size; a line of fixed height never does, so ``TextLine`` only repaints itself.

Both show what they are given literally (see ``style.clean``): these lines quote node names,
link errors and the operator's filter, and a string handed to a Textual widget is otherwise
read as markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.reactive import reactive
from textual.visual import VisualType
from textual.widget import Widget
from textual.widgets import Static

from console.tui.style import clean, plain


class TextLine(Widget):
    DEFAULT_CSS = """
    TextLine {
        height: 1;
    }
    """

    text: reactive[str] = reactive("", layout=False)

    def render(self) -> Text:
        return plain(self.text)


def packed(
    parts: Sequence[str], width: int, room: Sequence[int] | None = None, sep: str = " "
) -> list[str]:
    """``parts`` joined by ``sep`` into lines of at most ``width`` cells, a part never split
    (a part wider than the line gets one of its own, cut when drawn). ``room``: the cells each
    part may take at most (its values' domain), so that the lines break in the same places
    whatever the values; else each part's own length."""
    lines: list[str] = []
    used = 0
    for i, part in enumerate(parts):
        size = room[i] if room is not None else cell_len(part)
        if lines and used + len(sep) + size <= width:
            lines[-1] += sep + part
            used += len(sep) + size
        else:
            lines.append(part)
            used = size
    return lines


class PartsLine(TextLine):
    """A line said in parts (the fleet's totals, then the filter's note and the sort) that goes
    on to as many lines as the terminal's width needs, breaking only between parts: one line
    at 80 columns cut off the alert count, the filter's note and the sort, with no mark. The
    layout changes only when the number of lines does."""

    parts: reactive[tuple[str, ...]] = reactive((), layout=False)

    def watch_parts(self, parts: tuple[str, ...]) -> None:
        self.text = " ".join(parts)
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _lines(self) -> list[str]:
        width = self.content_size.width
        return packed([clean(p) for p in self.parts], width) if width else [self.text]

    def _fit(self) -> None:
        height = max(1, len(self._lines()))
        if self.styles.height is None or self.styles.height.value != height:
            self.styles.height = height

    def render(self) -> Text:
        return Text("\n").join(plain(line) for line in self._lines())


class TextBlock(Static):
    """A ``Static`` that never reads markup: a ``str`` is shown line by line as it is (control
    characters escaped), a ``Text`` as built (``text_table`` and ``plain`` clean their parts)."""

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id, markup=False)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        if isinstance(content, str):
            content = Text("\n".join(clean(line) for line in content.split("\n")), end="")
        super().update(content, layout=layout)
