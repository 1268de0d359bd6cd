"""The host readings: CPU busy as psutil counts it, per core only on the slow cadence (its cost
grows with the node's CPUs), and each sampler on its own baselines. Real psutil on this
machine, with its readings replaced where a test needs exact numbers."""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest

from agents.host import HostSampler, _busy_percent

Times = type(psutil.cpu_times())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def times(**fields: float) -> Any:
    """A psutil cpu_times reading with these fields, the others 0."""
    return Times(**{name: fields.get(name, 0.0) for name in Times._fields})


def test_busy_is_counted_as_psutil_counts_it() -> None:
    zero = times()
    assert _busy_percent(zero, times(user=100, idle=300)) == 25.0
    assert _busy_percent(zero, times(user=100, iowait=100, idle=200)) == 25.0, "iowait: idle"
    if "guest" in Times._fields:  # Linux: guest time is inside user, counted once
        assert _busy_percent(zero, times(user=100, guest=50, idle=100)) == 50.0
    assert _busy_percent(zero, zero) == 0.0, "no time passed: nothing busy, no division"
    went_back = times(user=100, idle=300, iowait=50)
    assert _busy_percent(went_back, times(user=200, idle=400, iowait=0)) == 50.0, (
        "iowait going backwards (proc(5)) counts as 0, as psutil counts it"
    )


def test_the_tick_reads_one_cpu_line_and_the_slow_read_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bool] = []
    real = psutil.cpu_times

    def counted(percpu: bool = False) -> Any:
        calls.append(percpu)
        return real(percpu=percpu)

    monkeypatch.setattr(psutil, "cpu_times", counted)
    clock = Clock()
    sampler = HostSampler(monotonic=clock)
    first = sampler.read()
    assert first.cpu_percent is None and first.cpu_per_core is None, "no rates yet"
    calls.clear()
    for _ in range(5):
        reading = sampler.read()
        assert reading.cpu_percent is not None
    assert calls == [False] * 5, "a tick reads the total only"
    clock.now += 15
    sampler.read_slow()
    assert calls[-1] is True
    per_core = sampler.read().cpu_per_core
    assert per_core is not None and len(per_core) == psutil.cpu_count()
    assert all(0.0 <= c <= 100.0 for c in per_core)


def test_a_cpu_brought_online_gives_no_per_core_rates_until_the_next_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = [[times(user=0, idle=0)] * 2, [times(user=50, idle=50)] * 3]
    cores.append([times(user=100, idle=100)] * 3)
    total = psutil.cpu_times

    def fake(percpu: bool = False) -> Any:
        return cores.pop(0) if percpu else total()

    monkeypatch.setattr(psutil, "cpu_times", fake)
    clock = Clock()
    sampler = HostSampler(monotonic=clock)
    sampler.prime()  # 2 CPUs
    clock.now += 15
    sampler.read_slow()  # 3: not comparable
    assert sampler.read().cpu_per_core is None
    clock.now += 15
    sampler.read_slow()
    assert sampler.read().cpu_per_core == [50.0, 50.0, 50.0]


def test_a_slow_read_right_after_the_baseline_keeps_it_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent primes, then its slow thread reads at once: rates over microseconds are
    noise (CPU time moves in 10 ms ticks), so none are given then, and the next read's rates
    cover the whole time since the baseline."""
    cores = [[times(idle=0)], [times(user=30, idle=90)]]
    total = psutil.cpu_times
    monkeypatch.setattr(
        psutil, "cpu_times", lambda percpu=False: cores.pop(0) if percpu else total()
    )
    clock = Clock()
    sampler = HostSampler(monotonic=clock)
    sampler.prime()
    clock.now += 0.001
    sampler.read_slow()
    reading = sampler.read()
    assert reading.cpu_per_core is None and reading.disk_read_bps is None
    assert len(cores) == 1, "the baseline was kept, not read again"
    clock.now += 15
    sampler.read_slow()
    reading = sampler.read()
    assert reading.cpu_per_core == [25.0], "since the baseline, not since the early read"


def test_two_samplers_in_one_process_keep_their_own_baselines() -> None:
    """psutil.cpu_percent keeps one baseline per calling thread: two samplers read from one
    thread reset each other's, leaving a window of microseconds (0 % busy)."""
    a, b = HostSampler(), HostSampler()
    a.read()
    b.read()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # busy on one CPU for 0.3 s: 30 clock ticks
        pass
    b.read()
    busy = a.read().cpu_percent
    share = 100.0 / (psutil.cpu_count() or 1)  # one CPU busy, of the machine's
    assert busy is not None and busy >= share / 2, f"a's window was cut by b's read: {busy}"
