"""``gpufleet`` as a script runs it, and ``gpufleet demo --headless`` in its own process for
the length of a test."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import wait_for


def gpufleet(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gpufleet ARGS --inventory INVENTORY`` as a script runs it: no terminal to ask on."""
    return subprocess.run(
        [sys.executable, "-m", "console", *args, "--inventory", str(inventory)],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.contextmanager
def demo_process(
    root: Path, *, nodes: int, faults: bool
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``gpufleet demo --headless`` in its own process, and the inventory it wrote."""
    inventory = root / "demo.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "demo", "--headless", "--nodes", str(nodes),
         "--gpus-per-node", "2", "--inventory-out", str(inventory), "--seconds", "120",
         *(["--faults"] if faults else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: inventory.exists() or proc.poll() is not None, "the demo inventory", 30)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, inventory
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        finally:
            proc.kill()
