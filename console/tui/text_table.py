"""Tables of fixed-width text: the column declaration and layout every table on the screen
shares, and a small table as one block of text (the node view's GPUs and processes).

A DataTable per view cost about 50 ms to fill and draw each time a node was opened, for eight
rows; a few rows of fixed-width text cost next to nothing and read the same.

A column's width comes from its declaration and the screen's width, never from the values
shown: a width that followed the values made a column jump whenever a GPU read 100 %, and a
wide value pushed the columns after it off the screen. Each table declares, per column, the
width its values' domain needs, how narrow it may get, and its priority; on a narrow terminal
columns shrink, then drop, lowest priority first (as k9s does), and text cut short ends in "…".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.text import Text

from console.tui.style import clean


@dataclass(frozen=True, slots=True)
class TableColumn:
    """One column as a table declares it.

    ``width`` fits every value of the column's domain (or the most a text column should take
    while others need room); ``min`` is the narrowest it may be before it is dropped (its
    label may then be cut); ``priority`` orders both: 1 is the last column to shrink or drop
    and the first to get room. A ``grow`` column takes what room is left at the end. ``short``:
    the label where the column is narrower than its label (rather than the label cut).
    """

    key: str
    label: str
    width: int
    min: int = 0  # 0: the same as width (a fixed column)
    priority: int = 1
    grow: bool = False
    short: str = ""

    def label_in(self, width: int) -> str:
        """The label for the column at ``width`` cells."""
        return self.short if self.short and cell_len(self.label) > width else self.label

    @property
    def narrowest(self) -> int:
        return min(self.min or self.width, self.width)


def layout(columns: Sequence[TableColumn], width: int, gap: int) -> list[int | None]:
    """Each column's width in ``width`` cells (``gap`` after each), or None where it does not
    fit: columns are dropped lowest priority first until the rest fit at their narrowest; the
    room left goes to the rest by priority up to their ``width``, then to ``grow`` columns."""
    order = sorted(range(len(columns)), key=lambda i: columns[i].priority)
    kept = list(order)
    need = sum(columns[i].narrowest + gap for i in kept)
    while need > width and len(kept) > 1:
        dropped = kept.pop()
        need -= columns[dropped].narrowest + gap
    widths: dict[int, int] = {i: columns[i].narrowest for i in kept}
    spare = max(0, width - need)
    for i in kept:
        more = min(spare, columns[i].width - widths[i])
        widths[i] += more
        spare -= more
    for i in kept:
        if columns[i].grow and spare:
            widths[i] += spare
            spare = 0
    return [widths.get(i) for i in range(len(columns))]


def fit(value: str, width: int) -> str:
    """``value`` as exactly ``width`` cells (wide characters counted as two), control
    characters escaped: padded, or cut with "…"."""
    if not (value.isascii() and value.isprintable()):
        value = clean(value)
        if cell_len(value) <= width:
            return set_cell_size(value, width)
        return set_cell_size(value, width - 1) + "…" if width > 0 else ""
    return value.ljust(width) if len(value) <= width else value[: width - 1] + "…"


#: A cell: its text and a Rich style ("" for none).
Cell = tuple[str, str]


def text_table(
    columns: Sequence[TableColumn], rows: Sequence[Sequence[Cell]], width: int, gap: int = 2
) -> Text:
    """The rows laid out in ``width`` cells by the columns' declaration; the header in bold;
    "n/a" and friends as given; every value literal (never markup, control characters
    escaped)."""
    widths = layout(columns, width + gap, gap)  # no gap needed after the last column
    shown = [(i, w) for i, w in enumerate(widths) if w is not None]
    last = shown[-1][0] if shown else -1
    out = Text(no_wrap=True, overflow="ellipsis", end="")
    for i, w in shown:
        out.append(fit(columns[i].label_in(w), w) + (" " * gap if i != last else ""), style="bold")
    for row in rows:
        out.append("\n")
        for i, w in shown:
            value, style = row[i]
            out.append(fit(value, w), style=style)
            if i != last:
                out.append(" " * gap)
    out.rstrip()
    return out


#: Cells a DataTable puts around each column's text, and the room kept for its vertical
#: scrollbar.
CELL_PAD = 2
SCROLLBAR = 2


def rest_width(table_width: int, widths: Sequence[int], narrowest: int = 20) -> int:
    """The width left to a DataTable's last column (an alert's text, an agent's answer, which
    wrap in it) after the columns of ``widths``: so that the table never scrolls sideways."""
    taken = sum(w + CELL_PAD for w in widths) + CELL_PAD + SCROLLBAR
    return max(narrowest, table_width - taken)
