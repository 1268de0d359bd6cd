"""The host's side of a sample, from psutil.

Two cadences, like the GPU reads. Every tick: CPU (total and per core), load and memory, what
an operator watches move second by second. On the slow cadence (its own thread): swap, disk and
network counters, which cost more to read (about 1.2 ms together against 0.6 ms for the rest,
measured by bench/agent_cost.py) and whose rates read better averaged over a few seconds anyway.

Rates need two readings, so the first reading after start reports ``None`` for them rather than
a made-up zero.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agents.protocol import HostInfo, HostReading

_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str | None:
    """Changes on every boot: how the console tells a reboot from a reconnect."""
    try:
        return _BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def host_info() -> HostInfo:
    return HostInfo(
        hostname=socket.gethostname(),
        kernel=platform.release(),
        cpu_count=psutil.cpu_count() or os.cpu_count() or 1,
        memory_total=psutil.virtual_memory().total,
        boot_id=read_boot_id(),
    )


def _rate(now: float, before: float, seconds: float) -> float:
    # Counters reset (a NIC re-created, a wrap) read as a negative delta: report 0, not garbage.
    return max(0.0, (now - before) / seconds)


@dataclass(frozen=True, slots=True)
class _SlowHost:
    swap_total: int = 0
    swap_used: int = 0
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None


class HostSampler:
    """Reads the host: ``read`` on every tick, ``read_slow`` on the slow thread."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._boot_id = read_boot_id()
        self._boot_time = psutil.boot_time()
        self._primed = False
        self._slow = _SlowHost()
        self._slow_lock = threading.Lock()
        self._prev_t: float | None = None
        self._prev_disk: Any = None
        self._prev_net: Any = None

    def prime(self) -> None:
        """Take the baselines now, so the next readings have rates."""
        psutil.cpu_percent(percpu=True)  # the first call only sets psutil's baseline
        self._primed = True
        self.read_slow()

    def read_slow(self) -> None:
        t = self._monotonic()
        sw = psutil.swap_memory()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        dt = t - self._prev_t if self._prev_t is not None else 0.0

        def rate(now: Any, before: Any, attr: str) -> float | None:
            if dt <= 0 or now is None or before is None:
                return None
            return _rate(getattr(now, attr), getattr(before, attr), dt)

        slow = _SlowHost(
            swap_total=sw.total,
            swap_used=sw.used,
            disk_read_bps=rate(disk, self._prev_disk, "read_bytes"),
            disk_write_bps=rate(disk, self._prev_disk, "write_bytes"),
            net_rx_bps=rate(net, self._prev_net, "bytes_recv"),
            net_tx_bps=rate(net, self._prev_net, "bytes_sent"),
        )
        self._prev_t, self._prev_disk, self._prev_net = t, disk, net
        with self._slow_lock:
            self._slow = slow

    def read(self) -> HostReading:
        if self._primed:
            per_core: list[float] | None = psutil.cpu_percent(percpu=True)
        else:
            self.prime()
            per_core = None
        vm = psutil.virtual_memory()
        try:
            load: tuple[float, float, float] | None = os.getloadavg()
        except OSError:
            load = None
        with self._slow_lock:
            slow = self._slow
        return HostReading(
            cpu_percent=round(sum(per_core) / len(per_core), 1) if per_core else None,
            cpu_per_core=per_core,
            load=load,
            mem_total=vm.total,
            mem_used=vm.total - vm.available,
            mem_available=vm.available,
            swap_total=slow.swap_total,
            swap_used=slow.swap_used,
            disk_read_bps=slow.disk_read_bps,
            disk_write_bps=slow.disk_write_bps,
            net_rx_bps=slow.net_rx_bps,
            net_tx_bps=slow.net_tx_bps,
            uptime_s=max(0.0, time.time() - self._boot_time),
            boot_id=self._boot_id,
        )
