"""Sparklines as text, so that a table cell can hold one: ``▁▂▅█▇▃``.

Headless (no Textual): the node view puts them in table cells, tests read them as strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

BLOCKS: Final = "▁▂▃▄▅▆▇█"
GAP: Final = " "  # no reading: a gap, never the lowest bar


def _buckets(values: Sequence[float | None], width: int) -> list[float | None]:
    """Squeeze to ``width`` points, each the highest of its share: a spike must survive."""
    if len(values) <= width:
        return list(values)
    out: list[float | None] = []
    for i in range(width):
        part = [v for v in values[i * len(values) // width : (i + 1) * len(values) // width]]
        known = [v for v in part if v is not None]
        out.append(max(known) if known else None)
    return out


def sparkline(
    values: Sequence[float | None], width: int, lo: float = 0.0, hi: float | None = None
) -> str:
    """All of ``values`` (oldest first) squeezed into at most ``width`` characters, scaled from
    ``lo`` to ``hi`` (default: the highest value), right-aligned so the newest is always last."""
    if width <= 0:
        return ""
    points = _buckets(values, width)
    known = [v for v in points if v is not None]
    top = hi if hi is not None else (max(known) if known else lo)
    span = top - lo
    chars = []
    for v in points:
        if v is None:
            chars.append(GAP)
            continue
        share = 0.0 if span <= 0 else min(1.0, max(0.0, (v - lo) / span))
        chars.append(BLOCKS[round(share * (len(BLOCKS) - 1))])
    return "".join(chars).rjust(width)
