"""What the agent's host reading costs per tick as a node's logical CPUs grow.

psutil parses a /proc/stat line per logical CPU for per-core figures: 181 us a read on the
H100's 16-CPU host (tests/fixtures/h100/nvml_timing.json, "psutil"). GPU nodes have many more
(a DGX H100: 224 threads). This runs both ways side by side, in one run, against a /proc/stat
with N CPU lines (psutil.PROCFS_PATH pointed at a copy of this machine's /proc files with the
stat file rewritten; the counters move between reads as a busy node's do):

- before: the agent's ``HostSampler`` as it was at ``BEFORE`` (read from git): per core on
  every tick (``psutil.cpu_percent(percpu=True)``), as psutil-based samplers usually read it;
- now: this checkout's ``HostSampler``: the total on the tick (one line), per core on the slow
  cadence.

Each figure is CPU time (``time.process_time``) per call, the median of ``--rounds`` rounds of
``--calls`` calls of ``read`` (the tick) and ``read_slow``; "per second at 1 Hz" adds one slow
read per ``--slow-interval`` s (the agent's default, 15). Needs this git checkout; no root and
no GPU.

    python bench/host_cost.py
    python bench/host_cost.py --cpus 2,16,224 --rounds 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import psutil
from benchlib import machine_facts, publish, run_header

from agents.host import HostSampler

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "host_cost.json"
#: The commit whose HostSampler is "before": the last with per core on every tick.
BEFORE = "7179359"
#: The /proc files the host reads open besides stat (copied as they are).
COPIED = ("meminfo", "vmstat", "diskstats", "loadavg", "uptime")


class FakeStat:
    """A /proc/stat with ``cpus`` CPU lines whose counters advance on every ``advance``."""

    def __init__(self, root: Path, cpus: int) -> None:
        self.path = root / "stat"
        self.cpus = cpus
        self.ticks = 0
        tail = [
            line
            for line in Path("/proc/stat").read_text().splitlines()
            if not line.startswith("cpu")
        ]
        self.tail = "\n".join(tail) + "\n"
        self.advance()

    def advance(self) -> None:
        self.ticks += 100
        t = self.ticks

        def line(name: str, scale: int) -> str:
            # user nice system idle iowait irq softirq steal guest guest_nice
            return f"{name} {3 * t * scale} 0 {t * scale} {6 * t * scale} 0 0 {t * scale} 0 0 0"

        lines = [line("cpu ", self.cpus), *(line(f"cpu{i}", 1) for i in range(self.cpus))]
        self.path.write_text("\n".join(lines) + "\n" + self.tail)


def per_call_us(fn: Callable[[], Any], advance: Callable[[], None], calls: int) -> float:
    """CPU time per call of ``fn``, the counters moved before each (not counted)."""
    spent = 0.0
    for _ in range(calls):
        advance()
        t0 = time.process_time()
        fn()
        spent += time.process_time() - t0
    return spent / calls * 1e6


def sampler_before() -> type[Any]:
    """``HostSampler`` as it was at ``BEFORE``, loaded from git as a module of its own."""
    git = shutil.which("git")
    if git is None:
        sys.exit("host_cost: git is not installed: the 'before' sampler comes from history")
    out = subprocess.run(
        [git, "-C", str(REPO), "show", f"{BEFORE}:agents/host.py"], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"host_cost: git show {BEFORE}: {out.stderr.strip()} (a shallow clone?)")
    module = types.ModuleType("host_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(out.stdout, f"{BEFORE}:agents/host.py", "exec"), module.__dict__)  # noqa: S102
    return cast(type[Any], module.HostSampler)


def measure(
    cpus: int, calls: int, rounds: int, slow_interval: float, before: type[Any]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gf-proc-") as tmp:
        root = Path(tmp)
        for name in COPIED:
            shutil.copyfile(f"/proc/{name}", root / name)
        (root / "net").mkdir()
        shutil.copyfile("/proc/net/dev", root / "net" / "dev")
        stat = FakeStat(root, cpus)
        old = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = str(root)
        try:
            assert len(psutil.cpu_times(percpu=True)) == cpus
            figures: dict[str, list[float]] = {}
            for name, cls in (("before", before), ("now", HostSampler)):
                # Each slow read 15 s after the last, as the agent's are (the new sampler
                # reads nothing but swap when asked again sooner).
                clock = itertools.count(step=slow_interval)
                sampler = cls(monotonic=functools.partial(next, clock))
                sampler.prime()
                tick: list[float] = figures.setdefault(f"{name}_tick", [])
                slow: list[float] = figures.setdefault(f"{name}_slow", [])
                for _ in range(rounds):
                    tick.append(per_call_us(sampler.read, stat.advance, calls))
                    slow.append(per_call_us(sampler.read_slow, stat.advance, calls))
                assert sampler.read().cpu_per_core is not None
        finally:
            psutil.PROCFS_PATH = old
    median = {k: statistics.median(v) for k, v in figures.items()}
    per_s = {
        name: median[f"{name}_tick"] + median[f"{name}_slow"] / slow_interval
        for name in ("before", "now")
    }
    return {
        "cpus": cpus,
        "raw_us": figures,
        **{f"{k}_us": v for k, v in median.items()},
        "before_per_s_us": per_s["before"],
        "now_per_s_us": per_s["now"],
        "ratio": per_s["now"] / per_s["before"],
    }


def table(rows: list[dict[str, Any]], slow_interval: float) -> str:
    every = f"every {slow_interval:g} s"
    lines = [
        f"| logical CPUs | before: tick us | before: slow read us ({every}) | now: tick us "
        f"| now: slow read us ({every}) | before, per second at 1 Hz: us (% of a core) "
        "| now, per second | now / before |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        b, n = r["before_per_s_us"], r["now_per_s_us"]
        lines.append(
            f"| {r['cpus']} | {r['before_tick_us']:.0f} | {r['before_slow_us']:.0f} "
            f"| {r['now_tick_us']:.0f} | {r['now_slow_us']:.0f} | {b:.0f} ({b / 1e4:.3f} %) "
            f"| {n:.0f} ({n / 1e4:.3f} %) | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", default="2,16,64,128,224", help="logical CPU counts to try")
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the median is kept)")
    parser.add_argument("--slow-interval", type=float, default=15.0, help="agent's default")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.cpus.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--cpus: expected counts of 1 or more separated by commas, got {args.cpus!r}")
    if not sys.platform.startswith("linux"):
        parser.error("Linux only: it rewrites a copy of /proc")
    started = dt.datetime.now(dt.UTC)
    before = sampler_before()
    rows = [measure(n, args.calls, args.rounds, args.slow_interval, before) for n in counts]
    results = {
        **run_header("host_cost", started),
        "before": BEFORE,
        "machine": machine_facts(),
        "rows": rows,
    }
    publish(results, table(rows, args.slow_interval), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
