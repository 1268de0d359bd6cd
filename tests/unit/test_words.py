"""How the console says values: one age scale, counts that agree with their nouns, aligned
tables with headers."""

from __future__ import annotations

import pytest

from console.present.words import age, ago, aligned, na, plural


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (None, "n/a"),
        (-3.0, "0s"),
        (0.4, "0s"),
        (3.5, "4s"),
        (59.4, "59s"),
        (59.6, "1m"),
        (60, "1m"),
        (103, "1m43s"),  # never "103s" beside "2m"
        (120, "2m"),
        (599, "9m59s"),
        (600, "10m"),
        (3599, "59m"),
        (3600, "1h"),
        (3900, "1h5m"),
        (36000, "10h"),
        (86400 * 3 + 7200, "3d2h"),
        (86400 * 12, "12d"),
    ],
)
def test_one_age_scale(seconds: float | None, said: str) -> None:
    assert age(seconds) == said


def test_ago() -> None:
    assert (ago(103), ago(None)) == ("1m43s ago", "n/a")


def test_plural() -> None:
    assert [plural(n, "error") for n in (0, 1, 2)] == ["0 errors", "1 error", "2 errors"]
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"


def test_na_is_never_0() -> None:
    assert (na(None), na(0), na(1.5, "{:.0f}")) == ("n/a", "0", "2")


def test_aligned_columns_under_their_headers() -> None:
    lines = aligned(
        ("NODE", "CHECK", "DETAIL"), [["demo01", "ok", "fine"], ["d2", "agent_down", "x y"]]
    )
    assert lines == [
        "NODE    CHECK       DETAIL",
        "demo01  ok          fine",
        "d2      agent_down  x y",
    ]
