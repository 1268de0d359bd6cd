"""The watchdog path: a GPU read that hangs stalls sampling but not the socket, the log says
so, and systemd stops being fed (so it restarts the agent). The hanging backend is a stand-in
because a real hung NVML call cannot be produced without a GPU; the socket, the daemon and the
sd_notify datagrams are real."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from agents import daemon
from agents.client import AgentClient
from agents.config import AgentConfig, AgentSection
from agents.gpu.base import GpuInventory, XidEvent
from agents.gpu.sim import SimBackend
from agents.protocol import GpuReading
from agents.sdnotify import Notifier

pytestmark = pytest.mark.integration


class HangingBackend:
    """The simulator, except that ``read`` blocks while ``hang`` is set."""

    name: Literal["sim"] = "sim"

    def __init__(self) -> None:
        self.sim = SimBackend(2)
        self.hang = threading.Event()
        self.release = threading.Event()

    def inventory(self) -> GpuInventory:
        return self.sim.inventory()

    def read(self) -> list[GpuReading]:
        if self.hang.is_set():
            self.release.wait(30)
        return self.sim.read()

    def read_slow(self) -> dict[int, dict[str, int | None]]:
        return self.sim.read_slow()

    def start_events(self) -> None:
        return None

    def drain_events(self) -> list[XidEvent]:
        return []

    def close(self) -> None:
        self.release.set()


async def _until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (it reads a socket and a log, nothing to await) with a deadline."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_hung_read_stops_the_watchdog_but_not_the_socket(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon, "STALL_MIN_SECONDS", 0.3)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_tmp / "notify"))
    notify.setblocking(False)
    messages: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                return messages

    cfg = AgentConfig(
        agent=AgentSection(
            socket=str(short_tmp / "agent.sock"), state_dir=str(short_tmp / "state"), interval=0.05
        )
    )
    backend = HangingBackend()
    agent = daemon.Agent(
        cfg, backend, notifier=Notifier({"NOTIFY_SOCKET": str(short_tmp / "notify")})
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.serving.wait(), 10)
        await _until(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 3, "watchdog pings")

        caplog.set_level(logging.ERROR, logger="gpufleet.agent")
        backend.hang.set()
        await _until(lambda: "sampling stalled" in caplog.text, "the stall to be logged")
        messages.clear()
        drain()
        await asyncio.sleep(0)  # let any ping already sent arrive before counting
        pings_before = sum("WATCHDOG=1" in m for m in drain())

        # The socket still answers while sampling is stuck.
        reply = await asyncio.to_thread(
            lambda: AgentClient(cfg.agent.socket, stream=False).request("ping")
        )
        assert reply.ok
        await _until(lambda: any("sampling stalled" in m for m in drain()), "STATUS=stalled")
        assert sum("WATCHDOG=1" in m for m in drain()) == pings_before, "fed while stuck"

        backend.hang.clear()
        backend.release.set()
        await _until(lambda: sum("WATCHDOG=1" in m for m in drain()) > pings_before, "pings again")
    finally:
        stop.set()
        backend.release.set()
        await asyncio.wait_for(task, 10)
        notify.close()
