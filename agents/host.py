"""The host's side of a sample, from psutil.

Two cadences, like the GPU reads. Every tick: CPU (all cores together), load and memory, what
an operator watches move second by second. On the slow cadence (its own thread): CPU per core,
swap, disk and network counters, which cost more to read and read better averaged over a few
seconds anyway. Per core is there because its cost grows with the node: psutil parses a
/proc/stat line per logical CPU, ~10 us each (181 us a read on the H100's 16-CPU host, ~2 ms on
a 224-thread DGX H100: a 1 Hz agent's whole CPU budget), where the total is one line.

Rates need two readings, so the first reading after start reports ``None`` for them rather than
a made-up zero. Each sampler keeps its own previous CPU times (psutil.cpu_percent keeps one per
calling thread: two samplers read from one thread would reset each other's).
"""

from __future__ import annotations

import dataclasses
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


def _busy_percent(before: Any, now: Any) -> float:
    """The share of the time between two psutil ``cpu_times`` readings the CPU was busy,
    counted as psutil's ``cpu_percent`` counts it: each field's change at least 0 (iowait may
    go backwards, proc(5)), guest time already inside user on Linux, idle and iowait not
    busy."""
    delta = {f: max(0.0, float(getattr(now, f)) - float(getattr(before, f))) for f in now._fields}
    total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
    if total <= 0:
        return 0.0
    busy = total - delta["idle"] - delta.get("iowait", 0.0)
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 1)


#: The shortest time between slow reads that gives rates: CPU time moves in 10 ms ticks.
MIN_RATE_WINDOW_S = 0.1


@dataclass(frozen=True, slots=True)
class _SlowHost:
    cpu_per_core: list[float] | None = None
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
        self._prev_cpu: Any = None  # read's, on the tick
        self._prev_cores: list[Any] | None = None  # read_slow's

    def prime(self) -> None:
        """Take the baselines now, so the next readings have rates."""
        self._prev_cpu = psutil.cpu_times()
        self._primed = True
        self.read_slow()

    def read_slow(self) -> None:
        t = self._monotonic()
        sw = psutil.swap_memory()
        with self._slow_lock:
            last = self._slow
        if self._prev_t is not None and t - self._prev_t < MIN_RATE_WINDOW_S:
            # Read again at once (the slow thread's first read, just after ``prime``): rates
            # over microseconds would be noise (CPU time moves in 10 ms ticks). Keep the
            # baselines for the next read, and what was read before.
            slow = dataclasses.replace(last, swap_total=sw.total, swap_used=sw.used)
        else:
            slow = self._rates(t, sw)
        with self._slow_lock:
            self._slow = slow

    def _rates(self, t: float, sw: Any) -> _SlowHost:
        """The slow readings since the last baselines, which become these."""
        cores = psutil.cpu_times(percpu=True)
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        dt = t - self._prev_t if self._prev_t is not None else 0.0

        def rate(now: Any, before: Any, attr: str) -> float | None:
            if dt <= 0 or now is None or before is None:
                return None
            return _rate(getattr(now, attr), getattr(before, attr), dt)

        before = self._prev_cores
        # A CPU taken offline or brought back changes the list: no rates until the next read.
        per_core = (
            [_busy_percent(b, n) for b, n in zip(before, cores, strict=True)]
            if before is not None and len(before) == len(cores) and dt > 0
            else None
        )
        slow = _SlowHost(
            cpu_per_core=per_core,
            swap_total=sw.total,
            swap_used=sw.used,
            disk_read_bps=rate(disk, self._prev_disk, "read_bytes"),
            disk_write_bps=rate(disk, self._prev_disk, "write_bytes"),
            net_rx_bps=rate(net, self._prev_net, "bytes_recv"),
            net_tx_bps=rate(net, self._prev_net, "bytes_sent"),
        )
        self._prev_t, self._prev_disk, self._prev_net = t, disk, net
        self._prev_cores = cores
        return slow

    def read(self) -> HostReading:
        cpu: float | None = None
        if self._primed:
            now = psutil.cpu_times()
            cpu = _busy_percent(self._prev_cpu, now)
            self._prev_cpu = now
        else:
            self.prime()
        vm = psutil.virtual_memory()
        try:
            load: tuple[float, float, float] | None = os.getloadavg()
        except OSError:
            load = None
        with self._slow_lock:
            slow = self._slow
        return HostReading(
            cpu_percent=cpu,
            cpu_per_core=slow.cpu_per_core,
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
