"""The host's side of a sample, from psutil.

Rates (CPU percent, disk and network bytes per second) need two readings, so the sampler keeps
the previous counters and the first reading after start reports ``None`` for them rather than a
made-up zero. All reads together cost about 0.5 ms (design.md §2), cheap enough for every tick.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
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


class HostSampler:
    """Reads the host once per tick and turns counters into per-second rates."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._boot_id = read_boot_id()
        self._boot_time = psutil.boot_time()
        self._prev_t: float | None = None
        self._prev_disk: Any = None
        self._prev_net: Any = None

    def prime(self) -> None:
        """Take the baseline counters now so the next read has rates."""
        self._prev_t = self._monotonic()
        self._prev_disk = psutil.disk_io_counters()
        self._prev_net = psutil.net_io_counters()
        psutil.cpu_percent(percpu=True)

    def read(self) -> HostReading:
        t = self._monotonic()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        dt = t - self._prev_t if self._prev_t is not None else 0.0
        have_rates = self._prev_t is not None and dt > 0
        per_core: list[float] | None = psutil.cpu_percent(percpu=True) if have_rates else None
        if not have_rates:
            psutil.cpu_percent(percpu=True)  # the first call only sets psutil's baseline
        try:
            load: tuple[float, float, float] | None = os.getloadavg()
        except OSError:
            load = None

        def rate(now: Any, before: Any, attr: str) -> float | None:
            if not have_rates or now is None or before is None:
                return None
            return _rate(getattr(now, attr), getattr(before, attr), dt)

        reading = HostReading(
            cpu_percent=round(sum(per_core) / len(per_core), 1) if per_core else None,
            cpu_per_core=per_core,
            load=load,
            mem_total=vm.total,
            mem_used=vm.total - vm.available,
            mem_available=vm.available,
            swap_total=sw.total,
            swap_used=sw.used,
            disk_read_bps=rate(disk, self._prev_disk, "read_bytes"),
            disk_write_bps=rate(disk, self._prev_disk, "write_bytes"),
            net_rx_bps=rate(net, self._prev_net, "bytes_recv"),
            net_tx_bps=rate(net, self._prev_net, "bytes_sent"),
            uptime_s=max(0.0, time.time() - self._boot_time),
            boot_id=self._boot_id,
        )
        self._prev_t, self._prev_disk, self._prev_net = t, disk, net
        return reading
