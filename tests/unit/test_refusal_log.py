"""The agent's log of refused connections: bounded under a flood, no refusal missing from it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from agents.serve.identity import Peer
from agents.serve.server import RefusalLog

NOBODY = Peer(pid=10, uid=65534, gid=65534, user="nobody", groups=())
DAEMON = Peer(pid=11, uid=1, gid=1, user="daemon", groups=())
PER_USER = "too many connections from nobody (2)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused_total(lines: list[str]) -> dict[tuple[int, str], int]:
    """What the log says was refused, per (uid, reason): one per full line, plus summaries."""
    out: dict[tuple[int, str], int] = {}
    for line in lines:
        if m := re.match(r"client \S+\(uid=(\d+)\) pid=\d+ refused: (.*) \(further", line):
            key, n = (int(m[1]), m[2]), 1
        else:
            m = re.fullmatch(
                r"refused (\d+) more connections from uid (\d+) \(\w+\) .*s: (.*)", line
            )
            assert m, line
            key, n = (int(m[2]), m[3]), int(m[1])
        out[key] = out.get(key, 0) + n
    return out


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    logger = logging.getLogger("test.refusals")
    handler = _Lines()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_a_flood_logs_its_first_refusal_then_one_summary_per_interval(logged: list[str]) -> None:
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), interval=10.0, clock=clock)
    for _ in range(1000):
        refusals.refused(NOBODY, PER_USER)
        clock.now += 0.0004  # 1,000 in 0.4 s
    assert len(logged) == 1 and logged[0].startswith("client nobody(uid=65534) pid=10 refused:")
    assert refusals.flush() == pytest.approx(9.6)  # the interval is not over: nothing yet
    assert len(logged) == 1

    clock.now = 1010.0
    refusals.refused(NOBODY, PER_USER)  # the last of the interval
    assert refusals.flush() == pytest.approx(10.0)
    assert logged[1] == (
        f"refused 1000 more connections from uid 65534 (nobody) in the last 10 s: {PER_USER}"
    )
    clock.now = 1015.0
    refusals.refused(NOBODY, PER_USER)  # the flood goes on into the next interval
    clock.now = 1020.0
    assert refusals.flush() is not None
    assert logged[2].startswith("refused 1 more connections from uid 65534")
    clock.now = 1030.0
    assert refusals.flush() is None  # a quiet interval ends the run
    assert len(logged) == 3

    refusals.refused(NOBODY, PER_USER)  # a new run is logged in full again
    assert len(logged) == 4 and "refused: too many" in logged[3]
    assert _refused_total(logged) == {(65534, PER_USER): 1003}


def test_each_user_and_reason_has_its_own_run_and_stopping_loses_none(
    logged: list[str],
) -> None:
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), interval=10.0, clock=clock)
    for _ in range(5):
        refusals.refused(NOBODY, PER_USER)
        refusals.refused(NOBODY, "too many clients (3)")
        refusals.refused(DAEMON, "too many clients (3)")
    assert len(logged) == 3  # one first line each
    clock.now += 2.0
    assert refusals.flush(final=True) is None  # stopping: what is counted is said now
    assert len(logged) == 6
    assert _refused_total(logged) == {
        (65534, PER_USER): 5,
        (65534, "too many clients (3)"): 5,
        (1, "too many clients (3)"): 5,
    }
