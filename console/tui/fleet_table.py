"""The fleet table: a row per node, drawn a line at a time.

Why not Textual's DataTable: every cell update there re-measures and re-caches, and a fleet of
1,000 nodes changes every row every second; a refresh cost 100s of ms at 200 nodes. Here the
screen hands over the sorted rows at its steady rate, and only the lines on screen are
rendered (about 50, whatever the fleet's size), each cached until its row, its mark or the
cursor on it changes. The header stays at the top; the cursor stays on its node when rows move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.present.rows import COLUMNS, NodeSummary
from console.tui.style import Tone, tone_style
from console.tui.text_table import TableColumn, fit, layout

__all__ = ["Cell", "CellsOf", "FleetTable", "TableColumn", "fleet_columns"]

#: A node's name and a pool are as wide as the fleet's longest, up to this.
NAME_WIDTH_MAX: Final = 24


def fleet_columns(fits: dict[str, int]) -> list[TableColumn]:
    """The columns as ``console.present.rows.COLUMNS`` declares them, with the widths the fleet sets
    (``fits``: the longest name and pool); the reason takes the room left on a wide
    terminal."""
    out = []
    for c in COLUMNS:
        width = c.width or min(NAME_WIDTH_MAX, max(fits.get(c.key, 0), len(c.header)))
        narrowest = min(c.narrowest or width, width)
        out.append(TableColumn(c.key, c.header, width, narrowest, c.priority, grow=c.grow))
    return out


Cell = tuple[str, Tone]
CellsOf = Callable[[NodeSummary], list[Cell]]


class FleetTable(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    FleetTable {
        background: $surface;
    }
    FleetTable > .fleet-table--header {
        text-style: bold;
        background: $panel;
    }
    FleetTable > .fleet-table--cursor {
        background: $block-cursor-blurred-background;
    }
    FleetTable:focus > .fleet-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"fleet-table--header", "fleet-table--cursor"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,ctrl+home,g", "edge(0)", "top", show=False),
        Binding("end,ctrl+end,G", "edge(1)", "bottom", show=False),
        Binding("enter", "select", "open", show=False),
    ]

    class Selected(Message):
        """Enter or a double click on a node's row."""

        def __init__(self, node: str) -> None:
            super().__init__()
            self.node = node

    class HeaderClicked(Message):
        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    def __init__(self, columns: Sequence[TableColumn], cells: CellsOf, *, id: str) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self._cells_of = cells
        self.rows: list[NodeSummary] = []
        self.marked: set[str] = set()
        self.cursor_row = 0
        self._index: dict[str, int] = {}
        self._cache: dict[tuple[NodeSummary, bool, bool, int, int, int], Strip] = {}
        self._width = 0  # the width laid out for, and each column's width there (or None)
        self._widths: list[int | None] = []
        self._tones: dict[tuple[Tone, str], Style] = {}

    # -- data ---------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def row_names(self) -> list[str]:
        return [r.name for r in self.rows]

    def current_node(self) -> str | None:
        return self.rows[self.cursor_row].name if self.rows else None

    def set_rows(self, rows: list[NodeSummary]) -> None:
        """New rows (sorted, filtered); the cursor stays on the node it was on, if shown.
        Only the lines on screen whose row changed are redrawn."""
        current = self.current_node()
        top, height = self.scroll_offset.y, self._body()
        before = self.rows[top : top + height]
        self.rows = rows
        self._index = {r.name: i for i, r in enumerate(rows)}
        cursor = self._index.get(current, 0) if current else 0
        moved = cursor != self.cursor_row
        self.cursor_row = min(cursor, max(0, len(rows) - 1))
        self.virtual_size = Size(self._room(), len(rows) + 1)
        if moved and not top <= self.cursor_row < top + height:
            self.move_to(self.cursor_row)  # the node the cursor is on stays in sight
            return
        if len(self._cache) > 4 * max(64, self.size.height):
            self._cache.clear()
        after = rows[top : top + height]
        if moved or len(before) != len(after):
            self.refresh()
            return
        for y, (old, new) in enumerate(zip(before, after, strict=True)):
            if old != new:
                self.refresh(Region(0, y + 1, self._room(), 1))

    def cell_text(self, node: str, column: str) -> str:
        """What a cell says (for tests and the command palette), untruncated."""
        row = self.rows[self._index[node]]
        keys = [c.key for c in self.columns]
        return self._cells_of(row)[keys.index(column)][0]

    def shown_columns(self) -> list[str]:
        """The keys of the columns on screen at its width, left to right."""
        self._lay_out(self._room())
        return [c.key for c, w in zip(self.columns, self._widths, strict=True) if w is not None]

    def _lay_out(self, width: int) -> None:
        """The columns' widths for a table ``width`` cells wide (a mark column, then each
        column and a space)."""
        if width != self._width or not self._widths:
            self._width = width
            self._widths = layout(self.columns, width - 1, 1)

    def on_resize(self) -> None:
        self.virtual_size = Size(self._room(), len(self.rows) + 1)
        self.refresh()

    def set_marked(self, marked: set[str]) -> None:
        self.marked = set(marked)
        self.refresh()

    # -- drawing -----------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self._room()
        self._lay_out(width)
        if y == 0:
            return self._header().crop_extend(scroll_x, scroll_x + width, None)
        index = scroll_y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        cursor, marked = index == self.cursor_row, row.name in self.marked
        key = (row, cursor, marked, self._theme_key(), scroll_x, width)
        strip = self._cache.get(key)
        if strip is None:
            full = self._line(row, cursor, marked)
            strip = self._cache[key] = full.crop_extend(scroll_x, scroll_x + width, None)
        return strip

    def _theme_key(self) -> int:
        return hash(self.app.current_theme.name) ^ hash(self.has_focus)

    def _header(self) -> Strip:
        style = self.get_component_rich_style("fleet-table--header")
        text = Text(" ", style=style, no_wrap=True)
        for c, w in zip(self.columns, self._widths, strict=True):
            if w is not None:
                text.append(fit(c.label_in(w), w) + " ", style)
        return Strip(list(text.render(self.app.console))).extend_cell_length(self._width, style)

    def _line(self, row: NodeSummary, cursor: bool, marked: bool) -> Strip:
        """Segments straight from the cells (no Rich layout: every cell has its width)."""
        base = self.get_component_rich_style("fleet-table--cursor") if cursor else Style()
        segments = [Segment("*" if marked else " ", base)]
        for w, (value, tone) in zip(self._widths, self._cells_of(row), strict=True):
            if w is None:
                continue
            style = base + self._tone(tone) if tone != "plain" else base
            segments.append(Segment(fit(value, w), style))
            segments.append(Segment(" ", base))
        return Strip(segments).extend_cell_length(self._width, base)

    def _tone(self, tone: Tone) -> Style:
        key = (tone, self.app.current_theme.name)
        style = self._tones.get(key)
        if style is None:
            style = self._tones[key] = Style.parse(tone_style(self.app, tone))
        return style

    # -- moving -------------------------------------------------------------------------------

    def move_to(self, index: int) -> None:
        if not self.rows:
            return
        before = self.cursor_row
        self.cursor_row = max(0, min(len(self.rows) - 1, index))
        body = self._body()
        top = self.scroll_offset.y
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + body:
            self.scroll_to(y=self.cursor_row - body + 1, animate=False)
        else:  # no scroll: only the two lines the cursor left and reached are redrawn
            for row in (before, self.cursor_row):
                self.refresh(Region(0, row - top + 1, self._room(), 1))
            return
        self.refresh()

    def action_cursor(self, step: int) -> None:
        self.move_to(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_to(self.cursor_row + step * max(1, self._body() - 1))

    def _room(self) -> int:
        """Cells a row may take: the width less a vertical scrollbar (a fleet taller than the
        screen), so that the rows never run under it and the table never scrolls sideways."""
        return self.scrollable_content_region.width or self.size.width

    def _body(self) -> int:
        """Rows of nodes on screen: the height less the header (and a horizontal scrollbar,
        which a terminal narrower than the table shows)."""
        return max(1, self.scrollable_content_region.height - 1)

    def action_edge(self, end: int) -> None:
        self.move_to(len(self.rows) - 1 if end else 0)

    def action_select(self) -> None:
        node = self.current_node()
        if node is not None:
            self.post_message(self.Selected(node))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + self.scroll_offset.x - 1
            for c, w in zip(self.columns, self._widths, strict=True):
                if w is None:
                    continue
                if 0 <= x < w + 1:
                    self.post_message(self.HeaderClicked(c.key))
                    return
                x -= w + 1
            return
        index = self.scroll_offset.y + event.y - 1
        if 0 <= index < len(self.rows):
            self.move_to(index)
            if event.chain >= 2:
                self.action_select()
