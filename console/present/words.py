"""How the console says a value, in one place: the screen, ``status``, ``audit`` and
``inventory check`` print the same thing the same way.

Unknown is ``n/a`` (never 0); an age is always one scale ("1m43s" beside "2m", never "103s"
beside "2m"); a count agrees with its noun ("1 error", "2 errors"). Headless: no Textual here,
so the commands and the model use it as the screen does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

NA: Final = "n/a"

#: (unit, its size in seconds, the next smaller unit's size): an age is said in the largest
#: unit it reaches, with the smaller one beside it while the larger is still a single digit.
_SCALES: Final = (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1))


def na(value: object, fmt: str = "{}") -> str:
    """``n/a`` for a value not known, never 0."""
    return NA if value is None else fmt.format(value)


def age(seconds: float | None) -> str:
    """A duration as an operator reads it at a glance: ``45s``, ``1m43s``, ``12m``, ``2h5m``,
    ``3d``. Whole seconds, to the nearest (a sample 3.5 s old is ``4s``); n/a when unknown."""
    if seconds is None:
        return NA
    s = max(0, round(seconds))
    for unit, size, small, small_size in _SCALES:
        if s >= size:
            big, rest = divmod(s, size)
            part = rest // small_size
            return f"{big}{unit}{part}{small}" if big < 10 and part else f"{big}{unit}"
    return f"{s}s"


def ago(seconds: float | None) -> str:
    """``age`` of something that happened: ``1m43s ago``."""
    return NA if seconds is None else f"{age(seconds)} ago"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 error``, ``0 errors``, ``2 errors`` (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A table for a terminal: the header, then each row, every column as wide as its widest
    cell but the last, which runs on (a reason or an error is read, not compared)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join(
            [*(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in [header, *rows]
    ]
