"""`gpufleet demo`: simulated agents behind an embedded SSH server, reached by the real console
commands, with scripted incidents showing up as alerts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.support.demo import demo_process

pytestmark = pytest.mark.integration


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    with demo_process(tmp_path, nodes=6, faults=True) as running:
        yield running


def status(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console", "status", "--inventory", str(inventory), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_status_against_the_demo_fleet(demo: tuple[subprocess.Popen[str], Path]) -> None:
    _, inventory = demo
    out = status(inventory, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [n["name"] for n in doc] == [f"demo0{i}" for i in range(1, 7)]
    assert {n["pool"] for n in doc} == {"train", "infer"}
    assert all(n["link"] == "live" and len(n["gpus"]) == 2 for n in doc)
    pool = status(inventory, "pool=infer", "--json")
    assert [n["name"] for n in json.loads(pool.stdout)] == ["demo04", "demo05", "demo06"]


def test_scripted_incidents_become_alerts(demo: tuple[subprocess.Popen[str], Path]) -> None:
    _, inventory = demo

    def alerts() -> dict[str, set[str]] | None:
        out = status(inventory, "--json", "--connect-wait", "10")
        doc = {n["name"]: {a["kind"] for a in n["alerts"]} for n in json.loads(out.stdout)}
        overheated = "temperature" in doc["demo03"]
        lost = {"xid", "gpu_lost"} <= doc["demo05"] or "gpu_lost" in doc["demo05"]
        return doc if overheated and lost else None

    doc = wait_for(alerts, "the overheat and the XID 79 to show", 60)
    assert "slowdown" in doc["demo03"]
    assert doc["demo01"] == set(), "nodes without incidents stay quiet"


def test_sigterm_ends_the_demo_and_removes_its_keys(tmp_path: Path) -> None:
    """Stopped as systemd or kill stops it, the demo removes its temporary directory, with the
    throwaway SSH keys in it, as it does on Ctrl-C (it used to leave them in /tmp)."""
    with demo_process(tmp_path, nodes=1, faults=False) as (proc, inventory):
        home = Path(tomllib.loads(inventory.read_text())["defaults"]["identity"]).parent
        assert home.name.startswith("gpufleet-demo-") and home.is_dir()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 128 + signal.SIGTERM
    assert not home.exists(), f"left behind: {sorted(p.name for p in home.iterdir())}"
