"""Widgets for text: one line that changes often (the fleet's totals, the banner, the source),
and a block of lines (the node view's parts, the alerts' count).

``Static.update`` asks for a new layout of the whole screen each time, as its content might
change size; a line of fixed height never does, so ``TextLine`` only repaints itself.

Both show what they are given literally (see ``style.clean``): these lines quote node names,
link errors and the operator's filter, and a string handed to a Textual widget is otherwise
read as markup.
"""

from __future__ import annotations

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


class TextBlock(Static):
    """A ``Static`` that never reads markup: a ``str`` is shown line by line as it is (control
    characters escaped), a ``Text`` as built (``text_table`` and ``plain`` clean their parts)."""

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id, markup=False)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        if isinstance(content, str):
            content = Text("\n".join(clean(line) for line in content.split("\n")), end="")
        super().update(content, layout=layout)
