"""``gpufleet audit`` and ``inventory check`` as a person reads them: a header over aligned
columns, and ``audit`` over every node when no selector is given (as ``status``). Against the
demo's own fleet: its SSH server, its real agents on simulated GPUs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.demo import demo_process, gpufleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three quiet nodes: demo01-02 in pool train, demo03 in pool infer."""
    with demo_process(tmp_path_factory.mktemp("readouts"), nodes=3, faults=False) as (_, inv):
        yield inv


def columns(header: str, line: str) -> dict[str, str]:
    """A row's cells by header: each column starts where its header does."""
    names = header.split("  ")
    names = [n.strip() for n in names if n.strip()]
    starts = [header.index(n) for n in names]
    return {
        n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)
    }


def test_audit_with_no_selector_reads_every_node_under_a_header(fleet: Path) -> None:
    for node in ("demo01", "demo03"):
        done = gpufleet(fleet, "drain", node, "--reason", f"why {node}", "--yes", "--force")
        assert done.returncode == 0, done.stderr
    done = gpufleet(fleet, "audit")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["NODE", "TIME", "(UTC)", "WHO", "OP", "RESULT", "WHY"]
    rows = [columns(header, line) for line in lines]
    drains = {r["NODE"]: r for r in rows if r["OP"] == "drain"}
    assert set(drains) == {"demo01", "demo03"}, "every node's log, none named"
    assert drains["demo03"]["RESULT"] == "ok"
    assert drains["demo03"]["WHY"].startswith("why demo03")


def test_inventory_check_has_a_header_over_aligned_columns(fleet: Path) -> None:
    done = gpufleet(fleet, "inventory", "check")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["NODE", "CHECK", "DETAIL"]
    rows = [columns(header, line) for line in lines]
    assert [r["NODE"] for r in rows] == ["demo01", "demo02", "demo03"]
    assert {r["CHECK"] for r in rows} == {"ok"}
    assert all("2 GPUs via sim" in r["DETAIL"] for r in rows)
