"""``gpufleet drain / resume / reassign / restart`` for scripts, end to end: the console
command, SSH (the demo's embedded server), the real agents (on simulated GPUs) and back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import demo_process

pytestmark = pytest.mark.integration
TRICKY = 'fan "A"; $(reboot) `id` ünï'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Eight quiet nodes: demo01-04 in pool train, demo05-08 in pool infer."""
    with demo_process(tmp_path_factory.mktemp("ops"), nodes=8, faults=False) as (_, inventory):
        yield inventory


def gpufleet(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console", *args, "--inventory", str(inventory)],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def states(inventory: Path, nodes: str) -> dict[str, tuple[str, str | None]]:
    done = gpufleet(inventory, "status", nodes, "--json")
    return {n["name"]: (n["state"], n["reason"]) for n in json.loads(done.stdout)}


def test_without_a_terminal_nothing_is_done_without_yes(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo05", "--reason", "r")
    assert done.returncode == 2
    assert "drain 1 node(s): demo05" in done.stderr
    assert "needs --yes when there is no terminal" in done.stderr
    assert states(fleet, "demo05") == {"demo05": ("schedulable", None)}


def test_dry_run_sends_nothing(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo06", "--reason", "r", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    [line] = json.loads(done.stdout)
    assert line["name"] == "demo06"
    assert line["message"].startswith("dry run: would drain")
    assert states(fleet, "demo06") == {"demo06": ("schedulable", None)}


def test_drain_resume_with_a_reason_kept_literally(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo07", "--reason", TRICKY, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    [line] = json.loads(done.stdout)
    assert line["outcome"] == "ok"
    assert line["message"].startswith(("draining", "drained"))
    state, reason = states(fleet, "demo07")["demo07"]
    assert (state in ("draining", "drained"), reason) == (True, TRICKY)
    again = gpufleet(fleet, "drain", "demo07", "--reason", "other", "--yes", "--json")
    assert json.loads(again.stdout)[0]["message"] == f"already {state}"
    back = gpufleet(fleet, "resume", "demo07", "--yes")
    assert back.returncode == 0, back.stderr
    assert "schedulable" in back.stdout
    assert states(fleet, "demo07")["demo07"][0] == "schedulable"


def test_the_guard_refuses_a_pool_emptied_and_force_passes(fleet: Path) -> None:
    refused = gpufleet(fleet, "drain", "pool=train", "--reason", "r", "--yes")
    assert refused.returncode == 2
    assert "pool train: 4 of 4 nodes would be out of service" in refused.stderr
    assert "refused without --force" in refused.stderr
    assert {s for s, _ in states(fleet, "pool=train").values()} == {"schedulable"}
    forced = gpufleet(fleet, "drain", "pool=train", "--reason", "r", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert {s for s, _ in states(fleet, "pool=train").values()} <= {"draining", "drained"}
    assert gpufleet(fleet, "resume", "pool=train", "--yes").returncode == 0


def test_reassign_and_restart_say_so_per_node(fleet: Path) -> None:
    moved = gpufleet(fleet, "reassign", "demo08", "--pool", "spare", "--reason", "r", "--yes")
    assert moved.returncode == 0, moved.stderr
    assert "-> spare" in moved.stdout
    # A simulated node's "agent" would be this machine's real unit: not on its list. (A GPU
    # reset, which it does allow, is in test_operations.py, where the GPU's work is known.)
    restart = gpufleet(fleet, "restart", "demo07", "--target", "agent", "--reason", "r", "--yes")
    assert restart.returncode == 1, "some (here: all reached) nodes refused"
    assert "refused" in restart.stdout
    assert "unknown_target: agent is not a restart target on demo07 (allowed: gpu0" in (
        restart.stdout
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["drain", "demo01"], "Missing option '--reason'"),
        (["drain", "demo01", "--reason", " ", "--yes"], "drain needs a reason"),
        (["drain", "gpu[01-02]", "--reason", "r", "--yes"], "not in the inventory"),
        (["drain", "--reason", "r", "--yes"], "name the nodes"),
        (["reassign", "demo01", "--pool", "a b", "--reason", "r", "--yes"], "pool must be"),
        (["drain", "demo01", "--reason", "\x1b[2J", "--yes"], "control or format character"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(fleet: Path, args: list[str], says: str) -> None:
    done = gpufleet(fleet, *args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_the_fleet_audit_merges_the_nodes_logs(fleet: Path) -> None:
    assert gpufleet(fleet, "drain", "demo06", "--reason", "audit me", "--yes").returncode == 0
    assert gpufleet(fleet, "resume", "demo06", "--yes").returncode == 0
    done = gpufleet(fleet, "audit", "demo0[5-6]", "--since", "1h")
    assert done.returncode == 0, done.stderr
    mine = [line.split() for line in done.stdout.splitlines() if line.startswith("demo06")]
    # NODE, TIME (UTC) (a date and a time), WHO, OP, RESULT, WHY
    assert ["drain", "ok", "audit"] in [cells[4:7] for cells in mine]
    assert ["resume", "ok"] in [cells[4:6] for cells in mine]
    doc = json.loads(gpufleet(fleet, "audit", "demo06", "--json").stdout)
    assert {"node": "demo06", "op": "drain"}.items() <= doc[-2].items()
    assert [e["ts"] for e in doc] == sorted(e["ts"] for e in doc)
    bad = gpufleet(fleet, "audit", "demo06", "--since", "soon")
    assert bad.returncode == 2
    assert "--since 'soon'" in bad.stderr


def test_drain_wait_returns_when_the_node_is_drained(fleet: Path) -> None:
    """A quiet demo node's GPUs may be working: with --timeout 2 the agent counts it drained
    within two seconds either way, and --wait returns once it has said so."""
    done = gpufleet(
        fleet, "drain", "demo05", "--reason", "wait for me", "--wait", "--timeout", "2", "--yes"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("demo05  ok")
    assert done.stdout.rstrip().endswith("; drained")
    assert states(fleet, "demo05")["demo05"] == ("drained", "wait for me")
    assert gpufleet(fleet, "resume", "demo05", "--yes").returncode == 0
