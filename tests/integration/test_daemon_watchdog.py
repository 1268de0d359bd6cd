"""The watchdog path: a GPU read that hangs stalls sampling but not the socket, the log says
so, and systemd stops being fed (so it restarts the agent). The hanging backend is a stand-in
because a real hung NVML call cannot be produced without a GPU; the socket, the daemon and the
sd_notify datagrams are real."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Literal

import pytest

from agents.config import AgentConfig, AgentSection
from agents.gpu.base import GpuInventory, XidEvent
from agents.gpu.sim import SimBackend
from agents.protocol import GpuReading
from agents.serve import daemon
from agents.serve.client import AgentClient
from agents.serve.sdnotify import Notifier
from tests.conftest import until

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


def _agent(short_tmp: Path, backend: HangingBackend, watchdog_usec: int) -> daemon.Agent:
    cfg = AgentConfig(
        agent=AgentSection(
            socket=str(short_tmp / "agent.sock"), state_dir=str(short_tmp / "state"), interval=0.05
        )
    )
    env = {"NOTIFY_SOCKET": str(short_tmp / "notify"), "WATCHDOG_USEC": str(watchdog_usec)}
    return daemon.Agent(cfg, backend, notifier=Notifier(env))


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting what the agent says."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def count(self, text: str) -> int:
        return sum(text in m for m in self.read())


async def test_hung_read_stops_the_watchdog_but_not_the_socket(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon, "STALL_MIN_SECONDS", 0.3)
    notify = NotifyListener(short_tmp / "notify")
    backend = HangingBackend()
    agent = _agent(short_tmp, backend, watchdog_usec=100_000)  # a ping every 50 ms
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.serving.wait(), 10)
        await until(lambda: notify.count("WATCHDOG=1") >= 3, "watchdog pings")

        caplog.set_level(logging.ERROR, logger="gpufleet.agents")
        backend.hang.set()
        await until(lambda: notify.count("STATUS=sampling stalled") >= 1, "the stall reported")
        pings = notify.count("WATCHDOG=1")
        # The stall is reported again one stall period (0.3 s, six ping periods) later: in
        # between, a watchdog fed regardless of progress would have pinged about six times.
        await until(lambda: notify.count("STATUS=sampling stalled") >= 2, "a second report")
        assert notify.count("WATCHDOG=1") == pings, "the watchdog was fed while stuck"
        assert "sampling stalled" in caplog.text

        # The socket still answers while sampling is stuck.
        reply = await asyncio.to_thread(
            lambda: AgentClient(str(short_tmp / "agent.sock"), stream=False).request("ping")
        )
        assert reply.ok

        backend.hang.clear()
        backend.release.set()
        await until(lambda: notify.count("WATCHDOG=1") > pings, "pings again")
    finally:
        stop.set()
        backend.release.set()
        await asyncio.wait_for(task, 10)
        notify.sock.close()


async def test_slow_sampling_interval_still_feeds_the_watchdog(short_tmp: Path) -> None:
    """A sampling interval longer than the watchdog period must not get the agent killed."""
    notify = NotifyListener(short_tmp / "notify")
    backend = HangingBackend()
    cfg = AgentConfig(
        agent=AgentSection(
            socket=str(short_tmp / "agent.sock"),
            state_dir=str(short_tmp / "state"),
            interval=60.0,
            slow_interval=60.0,
        )
    )
    env = {"NOTIFY_SOCKET": str(short_tmp / "notify"), "WATCHDOG_USEC": "100000"}
    agent = daemon.Agent(cfg, backend, notifier=Notifier(env))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.serving.wait(), 10)
        await until(lambda: notify.count("WATCHDOG=1") >= 5, "pings between samples")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        notify.sock.close()


async def test_stop_during_a_hung_read_shuts_down(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "STALL_MIN_SECONDS", 0.3)
    notify = NotifyListener(short_tmp / "notify")
    backend = HangingBackend()
    agent = _agent(short_tmp, backend, watchdog_usec=100_000)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.serving.wait(), 10)
    backend.hang.set()
    await until(lambda: notify.count("STATUS=sampling stalled") >= 1, "the stall reported")
    stop.set()
    await asyncio.wait_for(task, 5)  # without waiting for the read, which never returns
    assert not (short_tmp / "agent.sock").exists()
    assert notify.count("STOPPING=1") == 1
    backend.release.set()
    notify.sock.close()
