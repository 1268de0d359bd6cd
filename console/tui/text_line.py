"""One line of text that changes often (the fleet's totals, the banner).

``Static.update`` asks for a new layout of the whole screen each time, as its content might
change size; a line of fixed height never does, so this one only repaints itself.
"""

from __future__ import annotations

from textual.reactive import reactive
from textual.widget import Widget


class TextLine(Widget):
    DEFAULT_CSS = """
    TextLine {
        height: 1;
    }
    """

    text: reactive[str] = reactive("", layout=False)

    def render(self) -> str:
        return self.text
