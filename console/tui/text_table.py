"""A small table as one block of text (the node view's GPUs and processes).

A DataTable per view cost about 50 ms to fill and draw each time a node was opened, for eight
rows; a few rows of fixed-width text cost next to nothing and read the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text

#: A cell: its text and a Rich style ("" for none).
Cell = tuple[str, str]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], gap: int = 2) -> Text:
    """Columns as wide as their widest cell; the header in bold; "n/a" and friends as given."""
    widths = [cell_len(h) for h in headers]
    for row in rows:
        for i, (value, _) in enumerate(row):
            widths[i] = max(widths[i], cell_len(value))
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, h in enumerate(headers):
        out.append(h.ljust(widths[i] + gap), style="bold")
    for row in rows:
        out.append("\n")
        for i, (value, style) in enumerate(row):
            out.append(value + " " * (widths[i] - cell_len(value) + gap), style=style)
    return out
