"""`gpufleet demo`: simulated agents behind an embedded SSH server, reached by the real console
commands, with scripted incidents showing up as alerts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    inventory = tmp_path / "demo.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "demo", "--headless", "--faults", "--nodes", "6",
         "--gpus-per-node", "2", "--inventory-out", str(inventory), "--seconds", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: inventory.exists() or proc.poll() is not None, 30, "the demo inventory")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    yield proc, inventory
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    finally:
        proc.kill()


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
        out = status(inventory, "--json", "--wait", "10")
        doc = {n["name"]: {a["kind"] for a in n["alerts"]} for n in json.loads(out.stdout)}
        overheated = "temperature" in doc["demo03"]
        lost = {"xid", "gpu_lost"} <= doc["demo05"] or "gpu_lost" in doc["demo05"]
        return doc if overheated and lost else None

    doc = wait_for(alerts, 60, "the overheat and the XID 79 to show")
    assert "slowdown" in doc["demo03"]
    assert doc["demo01"] == set(), "nodes without incidents stay quiet"
