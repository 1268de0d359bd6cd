"""What the agent costs a node, next to what spawning a sampler per poll costs.

Three things, measured one after the other in one run (never at the same time, so they do not
compete for the CPU):

1. The agent, steady state: ``python -m agents serve --backend sim`` at 1 Hz with one streaming
   client (history off). After a warm-up, its CPU time is measured over a window and divided by
   the samples the client received: utime + stime of the agent process and any children (from
   /proc/<pid>/stat via psutil, in 10 ms ticks) and, finer, the per-thread nanosecond run time
   from /proc/<pid>/task/*/schedstat, which is used when no thread came or went. Its RSS is read
   once a second.
2. Spawn-per-poll, the way ``ssh node nvidia-smi`` and gpustat-style tools poll today, two ways:
   our own one-shot CLI (``python -m agents once --json``) and a minimal one-shot Python sampler
   that imports only psutil and the simulator. Each poll's CPU is the delta of
   getrusage(RUSAGE_CHILDREN) around it (user + sys); its peak RSS comes from wait4() on that one
   child, because RUSAGE_CHILDREN's ru_maxrss is a running maximum over every child ever reaped.
3. For reference, nvidia-smi's wall time per poll as measured on a real H100
   (tests/fixtures/h100/nvml_timing.json, design.md §2): not measured in this run.

No root and no GPU needed. Prints a table and writes every raw figure as JSON.

    python bench/agent_cost.py                      # 10 s warm-up, 60 s window, 20 polls each
    python bench/agent_cost.py --seconds 10 --polls 5

``--backend nvml`` measures the same on a machine with NVIDIA GPUs (bench/gpu_check.sh runs it
on a lent GPU machine): the agent runs ``serve --backend nvml`` on every GPU the machine has
(``--gpus`` is ignored; the count is the one the agent's Inventory frame reports), and the
spawn-per-poll baselines become ``python -m agents once --json --backend nvml`` and the real
thing, ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (when nvidia-smi is on PATH),
measured the same way. The minimal Python sampler is for the simulator only. Without a driver,
``--backend nvml`` stops at once with one line saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from benchlib import machine_facts, once_argv, publish, run_header

from agents.config import AgentConfig
from agents.protocol import Inventory, Sample, encode, to_builtins
from agents.serve.client import AgentClient

REPO = Path(__file__).resolve().parent.parent
TIMING_FIXTURE = REPO / "tests" / "fixtures" / "h100" / "nvml_timing.json"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "agent_cost.json"

INTERVAL = 1.0  # seconds between the agent's samples: the "1 Hz" everything is compared at
TARGET_CPU_PERCENT = 0.2  # of one core, at 1 Hz with 8 GPUs (the target)
TARGET_RSS_MB = 60.0
SSH_SETUP_MS = 43.0  # one SSH connection with key auth on these machines (design.md §6)
MB = 1_000_000  # RSS is reported in MB of 10**6 bytes (the JSON keeps bytes)

NVML_POLL_TIMEOUT_S = 30.0  # nvml mode: a spawned poll that runs longer is killed, and fails

#: What people run to poll a node today (the query of design.md §2 and nvml_timing.json).
NVIDIA_SMI_ARGS = [
    "--query-gpu=index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,"
    "temperature.gpu,power.draw,clocks.sm,clocks.mem,pstate",
    "--format=csv,noheader,nounits",
]

#: The leanest honest one-shot poll: a fresh interpreter, psutil and the simulator, one read of
#: every GPU and of the host's CPU and memory, JSON on stdout. A one-shot process cannot report a
#: CPU *rate* without sleeping for a second reading, so it reports the raw counters.
MINIMAL_SAMPLER = """\
import sys, psutil, msgspec
from agents.gpu.sim import SimBackend
backend = SimBackend(int(sys.argv[1]))
out = {
    "gpus": backend.read(),
    "cpu_times": psutil.cpu_times()._asdict(),
    "memory": psutil.virtual_memory()._asdict(),
}
sys.stdout.buffer.write(msgspec.json.encode(out) + b"\\n")
"""


class Interrupted(Exception):
    """SIGTERM arrived: unwind through the cleanup, like Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


# --------------------------------------------------------------------------------------------
# The agent under test


def _proc_cpu_seconds(proc: psutil.Process) -> tuple[float, int]:
    """utime + stime of the process (all its threads) and of its children, waited or alive."""
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    kids = proc.children(recursive=True)
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            kt = kid.cpu_times()
            total += kt.user + kt.system
    return total, len(kids)


def _schedstat_ns(pid: int) -> dict[int, int]:
    """Per-thread on-CPU nanoseconds (/proc/<pid>/task/*/schedstat): the same run time that
    utime/stime are derived from, before /proc/<pid>/stat rounds it to clock ticks."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return out


@dataclass
class AgentProcess:
    root: Path
    gpus: int  # sim only: with nvml the agent samples every GPU the machine has
    backend: str = "sim"
    config_text: str = ""  # the agent's config file (--agent-config), empty by default
    proc: subprocess.Popen[bytes] | None = None
    served_at: float | None = None  # time.monotonic() when the log said "serving"

    @property
    def socket_path(self) -> str:
        return str(self.root / "agent.sock")

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def command(self) -> list[str]:
        gpus = ["--gpus", str(self.gpus)] if self.backend == "sim" else []
        return [
            sys.executable,
            "-m",
            "agents",
            "serve",
            "--backend",
            self.backend,
            *gpus,
            "--interval",
            str(INTERVAL),
            "--socket",
            self.socket_path,
            "--state-dir",
            str(self.root / "state"),
        ]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 20.0) -> None:
        # An empty config file unless --agent-config names one, so a /etc/gpufleet/agent.toml
        # on this host cannot leak in.
        config = self.root / "agent.toml"
        config.write_text(self.config_text)
        cmd = self.command()
        cmd[4:4] = ["--config", str(config)]
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C at the terminal reaches this script, which then stops
            # the agent itself (SIGTERM, then SIGKILL) rather than racing it.
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "serving" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not serve within {timeout:g} s:\n{self.log()}")
            time.sleep(0.05)
        self.served_at = time.monotonic()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s. Reaps the process (so that, from here on, its
        rusage is inside this process's RUSAGE_CHILDREN: measure spawns only after this)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class StreamCounter(threading.Thread):
    """One streaming client: reads frames and notes when each sample arrived, nothing else."""

    def __init__(self, client: AgentClient) -> None:
        super().__init__(name="stream-client", daemon=True)
        self.client = client
        self.arrivals: list[float] = []  # time.monotonic() per sample received
        self.frame_bytes: list[int] = []
        self.other_frames = 0
        self.inventory: Inventory | None = None  # the first one: what the agent samples
        self.error: str | None = None
        self._stopping = False

    def run(self) -> None:
        try:
            for frame in self.client.frames():
                if isinstance(frame, Sample):
                    self.arrivals.append(time.monotonic())
                    if len(self.frame_bytes) < 50:  # wire size; re-encoding costs us, not it
                        self.frame_bytes.append(len(encode(frame)))
                else:
                    if isinstance(frame, Inventory) and self.inventory is None:
                        self.inventory = frame
                    self.other_frames += 1
        except Exception as exc:  # reported in the results, never silently
            if not self._stopping:
                self.error = f"{type(exc).__name__}: {exc}"

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.arrivals) if t0 <= t < t1)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.client.sock.shutdown(socket.SHUT_RDWR)
        self.join(5)
        self.client.close()


def measure_agent(
    agent: AgentProcess, warmup: float, seconds: float, stack: contextlib.ExitStack
) -> tuple[dict[str, Any], Inventory | None]:
    agent.start()
    assert agent.proc is not None
    ps = psutil.Process(agent.proc.pid)
    client = AgentClient(agent.socket_path, history=False, timeout=10.0)
    counter = StreamCounter(client)
    counter.start()
    stack.callback(counter.stop)

    time.sleep(warmup)
    if counter.error:
        raise RuntimeError(f"streaming client failed during warm-up: {counter.error}")

    rss: list[int] = []
    uss: list[int] = []
    cpu0, kids0 = _proc_cpu_seconds(ps)
    sched0 = _schedstat_ns(ps.pid)
    ctx0 = ps.num_ctx_switches()
    w0 = time.monotonic()
    end = w0 + seconds
    next_read = w0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_read:
            mem = ps.memory_full_info()
            rss.append(mem.rss)
            uss.append(mem.uss)
            next_read += 1.0
        time.sleep(max(0.0, min(next_read, end) - time.monotonic()))
    w1 = time.monotonic()
    cpu1, kids1 = _proc_cpu_seconds(ps)
    sched1 = _schedstat_ns(ps.pid)
    ctx1 = ps.num_ctx_switches()
    threads = ps.num_threads()
    window = w1 - w0

    # Samples published in the window reach the client within milliseconds; count arrivals in
    # the window itself.
    received = counter.count_between(w0, w1)
    expected = window / INTERVAL
    ticks_cpu = cpu1 - cpu0
    sched_cpu = sum(ns - sched0.get(tid, 0) for tid, ns in sched1.items()) / 1e9
    # Both are the agent's CPU time (the kernel derives utime+stime from the same runtime), but
    # /proc/<pid>/stat rounds to clock ticks, +-10 ms over the window: +-17 % of 60 samples'
    # worth at this agent's cost. Use the per-thread nanosecond sum when it covers everything:
    # no thread started or ended in the window and no children (else fall back to the ticks).
    precise = set(sched0) == set(sched1) and kids0 == kids1 == 0
    cpu = sched_cpu if precise else ticks_cpu
    arrivals = [t for t in counter.arrivals if w0 <= t < w1]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    if counter.error:
        raise RuntimeError(f"streaming client failed during the window: {counter.error}")

    def per_sample(seconds: float) -> float | None:
        return seconds / received if received else None

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1e3

    def pct(seconds: float | None) -> float | None:  # CPU s per sample x 1 sample/s, in %
        return None if seconds is None else seconds / INTERVAL * 100.0

    return {
        "pid": ps.pid,
        "command": shlex.join(agent.command()),
        "warmup_s": warmup,
        "window_s": window,
        "interval_s": INTERVAL,
        "cpu_s": cpu,
        "cpu_source": "schedstat" if precise else "ticks",
        "cpu_s_ticks": ticks_cpu,
        "cpu_s_schedstat": sched_cpu,
        "cpu_sources": {
            "ticks": "psutil cpu_times: utime+stime+children of /proc/<pid>/stat, 1/CLK_TCK s",
            "schedstat": "sum over /proc/<pid>/task/*/schedstat run time, ns (live threads)",
        },
        "threads_stable": set(sched0) == set(sched1),
        "children_seen": max(kids0, kids1),
        "threads": threads,
        "ctx_switches_voluntary": ctx1.voluntary - ctx0.voluntary,
        "ctx_switches_involuntary": ctx1.involuntary - ctx0.involuntary,
        "samples_received": received,
        "samples_expected": expected,
        "other_frames_total": counter.other_frames,
        "sample_gap_max_s": max(gaps) if gaps else None,
        "sample_frame_bytes_mean": (
            statistics.fmean(counter.frame_bytes) if counter.frame_bytes else None
        ),
        "cpu_ms_per_sample": ms(per_sample(cpu)),
        "cpu_ms_per_sample_ticks": ms(per_sample(ticks_cpu)),
        "cpu_ms_per_sample_schedstat": ms(per_sample(sched_cpu)),
        "cpu_percent_one_core_at_1hz": pct(per_sample(cpu)),
        "cpu_percent_one_core_at_1hz_ticks": pct(per_sample(ticks_cpu)),
        "cpu_percent_one_core_at_1hz_schedstat": pct(per_sample(sched_cpu)),
        "cpu_percent_one_core_wall": cpu / window * 100.0,
        "rss_bytes": rss,
        "rss_median_mb": statistics.median(rss) / MB,
        **_ring_projection(rss, agent.served_at, w1),
        "rss_max_mb": max(rss) / MB,
        "uss_median_mb": statistics.median(uss) / MB,
    }, counter.inventory


def _ring_projection(rss: list[int], served_at: float | None, now: float) -> dict[str, Any]:
    """The agent keeps ``history`` seconds of samples for new clients, so its RSS grows until
    that ring is full (900 samples by default: 15 minutes), longer than any sensible window.
    Extrapolate linearly to a full ring from the growth seen in the window; labelled as such."""
    ring = AgentConfig().history_len  # the bench passes an empty config: the defaults hold
    held = ring if served_at is None else min(ring, 1 + int((now - served_at) / INTERVAL))
    out: dict[str, Any] = {"history_ring_samples": ring, "history_ring_held_at_end": held}
    if len(rss) >= 3:
        slope, _ = statistics.linear_regression(range(len(rss)), rss)  # bytes per second read
        per_sample = slope * INTERVAL
        out["rss_growth_bytes_per_sample"] = per_sample
        out["rss_full_ring_extrapolated_mb"] = (rss[-1] + max(0.0, per_sample) * (ring - held)) / MB
    return out


# --------------------------------------------------------------------------------------------
# Spawn-per-poll baselines


@dataclass
class Poll:
    cpu_s: float  # getrusage(RUSAGE_CHILDREN) delta, user + sys
    cpu_s_wait4: float  # the same child's own rusage from wait4, as a cross-check
    wall_s: float
    maxrss_kb: int


@dataclass
class Baseline:
    name: str
    command: list[str]
    polls: list[Poll] = field(default_factory=list)
    warmup_polls: int = 1
    expect_gpus: bool = True
    output: str = "json"  # how to count the GPUs it reported: "json" or "csv" (nvidia-smi)
    timeout: float | None = None  # per poll; None: wait for ever (sim)

    def summary(self) -> dict[str, Any]:
        cpu = [p.cpu_s for p in self.polls]
        wall = [p.wall_s for p in self.polls]
        rss = [p.maxrss_kb for p in self.polls]
        return {
            "name": self.name,
            "command": shlex.join(self.command),
            "polls": len(self.polls),
            "warmup_polls_discarded": self.warmup_polls,
            "cpu_ms_per_poll_mean": statistics.fmean(cpu) * 1e3,
            "cpu_ms_per_poll_median": statistics.median(cpu) * 1e3,
            "cpu_ms_per_poll_min": min(cpu) * 1e3,
            "cpu_ms_per_poll_max": max(cpu) * 1e3,
            "cpu_percent_one_core_at_1hz": statistics.fmean(cpu) * 100.0,
            "wall_ms_per_poll_mean": statistics.fmean(wall) * 1e3,
            "wall_ms_per_poll_median": statistics.median(wall) * 1e3,
            "maxrss_mb_max": max(rss) * 1024 / MB,
            "maxrss_mb_median": statistics.median(rss) * 1024 / MB,
            "raw": [dataclasses.asdict(p) for p in self.polls],
        }


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class _Deadline:
    """Kills a spawned poll that runs past ``seconds`` (nvml mode: a hung nvidia-smi or driver
    must not eat a lent GPU machine's time). The child is killed only while it is still ours:
    ``reaping`` is called once it has exited but before it is reaped, so its pid cannot have
    been reused."""

    def __init__(self, pid: int, seconds: float) -> None:
        self.pid = pid
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)

    def reaping(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def spawn_poll(
    cmd: list[str],
    scratch: Path,
    gpus: int | None,
    output: str = "json",
    timeout: float | None = None,
) -> Poll:
    """Run one one-shot sampler to completion; check it really sampled ``gpus`` GPUs."""
    errfile = scratch / "poll.stderr"
    before = _children_cpu()
    t0 = time.perf_counter()
    with errfile.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    deadline = _Deadline(proc.pid, timeout) if timeout is not None else None
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        if deadline is not None:  # exited (or killed), not yet reaped: stop the timer first
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            deadline.reaping()
        # Reap it ourselves: wait4 gives this child's own rusage (ru_maxrss in KB on Linux).
        _, status, ru = os.wait4(proc.pid, 0)
    except BaseException:
        if deadline is not None:
            deadline.reaping()
        if proc.returncode is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -9
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    after = _children_cpu()
    if deadline is not None and deadline.fired:
        raise RuntimeError(f"{shlex.join(cmd)} ran past {timeout:g} s and was killed")
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {proc.returncode}:\n{errfile.read_text(errors='replace')}"
        )
    if gpus is not None:
        if output == "csv":  # nvidia-smi --format=csv,noheader: one line per GPU
            sampled = [row for row in out.decode(errors="replace").splitlines() if row.strip()]
        else:
            doc = json.loads(out)
            sampled = doc["sample"]["gpus"] if "sample" in doc else doc["gpus"]
        if len(sampled) != gpus:
            raise RuntimeError(f"{shlex.join(cmd)} reported {len(sampled)} GPUs, not {gpus}")
    return Poll(
        cpu_s=after - before,
        cpu_s_wait4=ru.ru_utime + ru.ru_stime,
        wall_s=wall,
        maxrss_kb=ru.ru_maxrss,
    )


def measure_baseline(base: Baseline, polls: int, scratch: Path, gpus: int) -> dict[str, Any]:
    expect = gpus if base.expect_gpus else None
    for _ in range(base.warmup_polls):  # page cache and .pyc files warm, as in steady polling
        spawn_poll(base.command, scratch, expect, base.output, base.timeout)
    for _ in range(polls):
        base.polls.append(spawn_poll(base.command, scratch, expect, base.output, base.timeout))
    return base.summary()


def measure_baseline_or_error(
    base: Baseline, polls: int, scratch: Path, gpus: int
) -> dict[str, Any]:
    """As measure_baseline, but a failing baseline becomes a result saying why (nvml mode: one
    tool failing on a lent GPU machine must not cost the other figures), and a poll past
    NVML_POLL_TIMEOUT_S is killed."""
    base.timeout = NVML_POLL_TIMEOUT_S
    try:
        return measure_baseline(base, polls, scratch, gpus)
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        return {
            "name": base.name,
            "command": shlex.join(base.command),
            "error": f"{type(exc).__name__}: {exc}",
            "polls_done": len(base.polls),
        }


# --------------------------------------------------------------------------------------------
# Reporting


def _h100_reference() -> dict[str, Any] | None:
    try:
        smi = json.loads(TIMING_FIXTURE.read_text())["nvidia_smi"]
    except (OSError, KeyError, ValueError):
        return None
    return {
        "source": str(TIMING_FIXTURE.relative_to(REPO)),
        "query_gpu_csv": {
            "cmd": smi["query_gpu_csv"]["cmd"],
            "median_s": smi["query_gpu_csv"]["median_s"],
        },
        "q_xml": {"cmd": smi["q_xml"]["cmd"], "median_s": smi["q_xml"]["median_s"]},
    }


def _ratio(num: float, den: float) -> float | None:
    """None where the agent's CPU rounded to zero ticks (a window too short to resolve it)."""
    return num / den if den > 0 else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _spawned(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """This run's spawn-per-poll baselines, in table order, each with its short name."""
    once = ("gpufleet-agent once", results["spawn_once_cli"])
    if results["parameters"].get("backend", "sim") != "nvml":
        return [once, ("minimal python sampler", results["spawn_minimal"])]
    smi = results["spawn_nvidia_smi"]
    return [once] if "skipped" in smi else [once, ("nvidia-smi --query-gpu", smi)]


def _cpu_ratio(b: dict[str, Any], agent: dict[str, Any]) -> float | None:
    if "cpu_ms_per_poll_mean" not in b or agent["cpu_ms_per_sample"] is None:
        return None
    return _ratio(b["cpu_ms_per_poll_mean"], agent["cpu_ms_per_sample"])


def _gpu_summary(gpu: dict[str, Any]) -> str:
    """'1x NVIDIA H100 80GB HBM3, driver 580.159.04' from the agent's Inventory frame."""
    names: dict[str, int] = {}
    for info in gpu["gpus"]:
        name = info.get("name") or "unnamed GPU"
        names[name] = names.get(name, 0) + 1
    cards = ", ".join(f"{n}x {name}" for name, n in names.items()) or "no GPUs"
    return f"{cards}, driver {gpu['driver_version'] or 'unknown'}"


def report(results: dict[str, Any]) -> str:
    a = results["agent"]
    params = results["parameters"]
    nvml = params.get("backend", "sim") == "nvml"
    spawned = _spawned(results)
    g = params["gpus"]
    rows = [
        (
            "agent (streaming, per sample)",
            _fmt(a["cpu_ms_per_sample"], ".3f"),
            _fmt(a["cpu_percent_one_core_at_1hz"], ".3f"),
            "n/a",
            f"{a['rss_median_mb']:.1f} (max {a['rss_max_mb']:.1f})",
        ),
    ]
    for name, b in spawned:
        if "error" in b:
            rows.append((f"spawn-per-poll: {name}", "failed", "n/a", "n/a", "n/a"))
            continue
        rows.append(
            (
                f"spawn-per-poll: {name}",
                _fmt(b["cpu_ms_per_poll_mean"], ".1f"),
                _fmt(b["cpu_percent_one_core_at_1hz"], ".2f"),
                _fmt(b["wall_ms_per_poll_mean"], ".1f"),
                f"{b['maxrss_mb_max']:.1f}",
            )
        )
    head = ("", "CPU ms/sample|poll", "% core @1 Hz", "wall ms/poll", "RSS MB")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    if nvml:
        what = f"{g} GPUs through NVML ({_gpu_summary(results['gpu'])})"
    else:
        what = f"{g} simulated GPUs"
    out = [
        f"gpufleet agent cost: {what}, 1 Hz, "
        f"{a['window_s']:.0f} s window after {a['warmup_s']:g} s warm-up, "
        f"{params['polls']} polls per baseline",
        "",
        line(head),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        "",
    ]
    agent_cpu = a["cpu_ms_per_sample"]
    for name, b in spawned:
        if "error" in b:
            error = b["error"].splitlines()
            more = [f"    ... ({len(error) - 6} more lines in the JSON)"] if len(error) > 6 else []
            out += [f"spawn-per-poll ({name}) FAILED: {error[0]}"]
            out += [f"    {e}" for e in error[1:6]] + more
            continue
        ratio = _cpu_ratio(b, a)
        spec = ".0f" if ratio is None or ratio >= 10 else ".2g"  # nvidia-smi can be cheap
        out.append(
            f"spawn-per-poll ({name}) costs {_fmt(ratio, spec)}x the CPU of streaming "
            f"({b['cpu_ms_per_poll_mean']:.1f} ms vs {_fmt(agent_cpu, '.3f')} ms per sample)"
        )
    if nvml and "skipped" in results["spawn_nvidia_smi"]:
        out.append(f"nvidia-smi not measured: {results['spawn_nvidia_smi']['skipped']}")
    out.append("")
    pct = a["cpu_percent_one_core_at_1hz"]
    x = pct / TARGET_CPU_PERCENT
    by_ns = _fmt(a["cpu_percent_one_core_at_1hz_schedstat"], ".3f")
    by_ticks = _fmt(a["cpu_percent_one_core_at_1hz_ticks"], ".3f")
    cpu_verdict = f"{'MET' if pct < TARGET_CPU_PERCENT else 'NOT MET'} ({x:.2f}x the target)"
    over = a["rss_max_mb"] - TARGET_RSS_MB
    rss_verdict = "MET" if over < 0 else f"NOT MET (max is {over:.1f} MB over)"
    full = a.get("rss_full_ring_extrapolated_mb")
    ring_note = (
        [
            f"    RSS grows {a['rss_growth_bytes_per_sample'] / 1e3:.1f} KB per sample while the "
            f"{a['history_ring_samples']}-sample history ring fills",
            f"    ({a['history_ring_held_at_end']} held at the end): with the ring full, "
            f"about {full:.1f} MB (extrapolated, not measured)",
        ]
        if full is not None
        else ["    (window too short to extrapolate RSS to a full history ring)"]
    )
    out += [
        f"targets (the issue): the agent at 1 Hz with 8 GPUs ({g} here)",
        f"  CPU < {TARGET_CPU_PERCENT:g} % of one core: {pct:.3f} %  {cpu_verdict}",
        f"    (from {a['cpu_source']}; schedstat says {by_ns} %, ticks say {by_ticks} %)",
        f"  RSS < {TARGET_RSS_MB:g} MB: median {a['rss_median_mb']:.1f} MB, "
        f"max {a['rss_max_mb']:.1f} MB  {rss_verdict}",
        *ring_note,
        f"  samples received by the client: {a['samples_received']} of "
        f"{a['samples_expected']:.1f} expected",
        "",
    ]
    ref = results["h100_reference"]
    if ref is not None:
        csv_cmd = (
            ref["query_gpu_csv"]["cmd"].split(" --query-gpu")[0] + " --query-gpu=... --format=csv"
        )
        out += [
            "measured earlier on a real H100 (design.md §2), to compare with this run "
            "(wall time per poll):"
            if nvml
            else "measured on a real H100 (design.md §2), not in this run (wall time per poll):",
            f"  {csv_cmd}  about {ref['query_gpu_csv']['median_s'] * 1e3:.1f} ms",
            f"  {ref['q_xml']['cmd']}  about {ref['q_xml']['median_s'] * 1e3:.1f} ms",
            f"  (medians from {ref['source']})",
            "",
        ]
    floor = results["spawn_interpreter_floor"]
    tick_hz = results["machine"]["clock_ticks_per_s"]
    tick_ms = 1e3 / tick_hz / max(1, a["samples_received"])
    out += [
        "how it was measured:",
    ]
    started_as = (
        f"process, started directly (no shell, no pyenv shim): python as {sys.executable}, "
        f"nvidia-smi as {results['gpu']['nvidia_smi'] or '(not on PATH)'}"
        if nvml
        else f"python process, started directly (no shell, no pyenv shim) as {sys.executable}"
    )
    notes = [
        "agent: CPU = the agent process's run time over the window (all its threads, and "
        "children if any), divided by the samples the client got. Two readings of it: utime+stime "
        "from /proc/<pid>/stat via psutil, which come in whole clock ticks "
        f"(1/{tick_hz} s: +-{tick_ms:.3f} ms per sample at this window), and the per-thread "
        "nanosecond run time in /proc/<pid>/task/*/schedstat, used when no thread came or went "
        f"(this run: {a['cpu_source']}). RSS read once a second. The client runs in this process: "
        "its CPU is not counted.",
        f"baselines: each poll is a fresh {started_as}; CPU = getrusage(RUSAGE_CHILDREN) delta "
        "(user+sys) per poll, mean of the polls after one discarded warm-up poll; RSS = the "
        "largest poll's ru_maxrss (wait4). Wall ms is spawn to exit as seen by this process.",
        f"for scale, a bare `python -c pass` costs {floor['cpu_ms_per_poll_mean']:.1f} ms CPU and "
        f"{floor['wall_ms_per_poll_mean']:.1f} ms wall per start on this machine: the floor of "
        "any spawn-per-poll Python tool.",
        "`gpufleet-agent once` sleeps 0.25 s for a second host reading (rates): that is in its "
        "wall time, not its CPU.",
    ]
    if nvml:
        modes = {info.get("persistence_mode") for info in results["gpu"]["gpus"]}
        mode = {frozenset([True]): "on", frozenset([False]): "off"}.get(
            frozenset(modes), "mixed or unknown"
        )
        notes.append(
            "every spawned poll opens NVML afresh (nvmlInit, device handles), which the agent "
            "does once; the baselines run after the agent has stopped, so with persistence mode "
            "off the driver may also set the GPUs up again on each poll. Persistence mode "
            f"here, from the Inventory frame: {mode}."
        )
    notes.append(
        "no SSH hop: a real `ssh node nvidia-smi` also pays SSH session setup, about "
        f"{SSH_SETUP_MS:g} ms per connection on these machines (design.md §6), plus sshd's and "
        "the login shell's CPU; none of that is included, so the baselines are a floor."
    )
    for note in notes:
        out.append(textwrap.fill(note, 96, initial_indent="  - ", subsequent_indent="    "))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=60.0, help="agent measurement window (s)")
    p.add_argument("--warmup", type=float, default=10.0, help="agent warm-up before the window")
    p.add_argument("--polls", type=int, default=20, help="spawned polls per baseline")
    p.add_argument(
        "--backend",
        choices=["sim", "nvml"],
        default="sim",
        help="sim: simulated GPUs, anywhere; nvml: this machine's NVIDIA GPUs (default: sim)",
    )
    p.add_argument(
        "--gpus", type=int, default=None, help="simulated GPUs (sim; default 8; nvml ignores it)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    p.add_argument(
        "--agent-config",
        type=Path,
        default=None,
        help="the measured agent's config file (default: an empty one, every key at its default)",
    )
    args = p.parse_args(argv)
    if args.backend == "sim" and args.gpus is None:
        args.gpus = 8
    bad_gpus = args.gpus is not None and args.gpus < 1
    if args.seconds < 2 or args.warmup < 0 or args.polls < 1 or bad_gpus:
        p.error("need --seconds >= 2, --warmup >= 0, --polls >= 1, --gpus >= 1")
    return args


def _nvml_unavailable() -> str | None:
    """None when NVML opens here; else why not, in the agent's own words (no driver, ...)."""
    from agents.gpu.base import BackendUnavailable
    from agents.gpu.select import open_backend

    try:
        backend = open_backend("nvml")
    except BackendUnavailable as exc:
        return str(exc)
    backend.close()
    return None


def _package_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu_facts(inventory: Inventory, nvidia_smi: str | None) -> dict[str, Any]:
    return {
        "source": "the agent's Inventory frame",
        "count": len(inventory.gpus),
        "driver_version": inventory.driver_version,
        "cuda_version": inventory.cuda_version,
        "nvml_version": inventory.nvml_version,
        "nvidia_ml_py": _package_version("nvidia-ml-py"),
        "nvidia_smi": nvidia_smi,
        "gpus": to_builtins(inventory.gpus),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nvml = args.backend == "nvml"
    if nvml:
        why = _nvml_unavailable()
        if why is not None:
            print(f"agent_cost: error: --backend nvml: {why}", file=sys.stderr)
            return 1
        if args.gpus is not None:
            print(
                "agent_cost: --gpus is ignored with --backend nvml: the agent samples every GPU",
                file=sys.stderr,
            )
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="gf-bench-", dir="/tmp"))  # short: socket paths <= 108
    config = args.agent_config.read_text() if args.agent_config else ""
    agent = AgentProcess(tmp, args.gpus if not nvml else 0, args.backend, config)
    nvidia_smi = shutil.which("nvidia-smi") if nvml else None
    spawn: dict[str, dict[str, Any]] = {}
    inventory: Inventory | None = None
    gpus: int = args.gpus if not nvml else 0
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(agent.stop)
            print(
                f"agent: {args.warmup:g} s warm-up, then {args.seconds:g} s window ...",
                file=sys.stderr,
                flush=True,
            )
            agent_results, inventory = measure_agent(agent, args.warmup, args.seconds, stack)
        # The agent is reaped now; everything below is measured after it, alone.
        agent_results["exit_status"] = agent.proc.returncode if agent.proc else None
        agent_results["log_warnings"] = [
            line for line in agent.log().splitlines() if " WARNING " in line or " ERROR " in line
        ]
        if nvml:
            if inventory is None:
                raise RuntimeError("the agent sent no Inventory frame")
            gpus = len(inventory.gpus)
            if gpus == 0:
                raise RuntimeError(f"the agent found no GPUs: {inventory.backend_note}")

        sim_gpus = [] if nvml else ["--gpus", str(args.gpus)]
        once = Baseline(
            "gpufleet-agent once",
            once_argv(args.backend, *sim_gpus, "--config", str(tmp / "agent.toml")),
        )
        print(f"spawn-per-poll: {args.polls} polls each ...", file=sys.stderr, flush=True)
        children0 = _children_cpu()
        if nvml:
            # On a lent GPU machine one failing tool must not cost the other figures.
            spawn["spawn_once_cli"] = measure_baseline_or_error(once, args.polls, tmp, gpus)
            if nvidia_smi is None:
                spawn["spawn_nvidia_smi"] = {"skipped": "nvidia-smi is not on PATH"}
            else:
                smi = Baseline(
                    "nvidia-smi --query-gpu", [nvidia_smi, *NVIDIA_SMI_ARGS], output="csv"
                )
                spawn["spawn_nvidia_smi"] = measure_baseline_or_error(smi, args.polls, tmp, gpus)
        else:
            minimal = Baseline(
                "minimal python sampler",
                [sys.executable, "-c", MINIMAL_SAMPLER, str(args.gpus)],
            )
            spawn["spawn_once_cli"] = measure_baseline(once, args.polls, tmp, gpus)
            spawn["spawn_minimal"] = measure_baseline(minimal, args.polls, tmp, gpus)
        floor = Baseline("python -c pass", [sys.executable, "-c", "pass"], expect_gpus=False)
        floor_results = measure_baseline(floor, args.polls, tmp, gpus)
        children_total = _children_cpu() - children0
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: agent stopped, temporary files removed", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if not nvml:
            raise
        print(f"agent_cost: error: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratio_names = {
        "spawn_once_cli": "once_cli_cpu_per_poll_over_agent_cpu_per_sample",
        "spawn_minimal": "minimal_cpu_per_poll_over_agent_cpu_per_sample",
        "spawn_nvidia_smi": "nvidia_smi_cpu_per_poll_over_agent_cpu_per_sample",
    }
    results: dict[str, Any] = {
        **run_header("agent_cost", started),
        "parameters": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "polls": args.polls,
            "gpus": gpus,
            "interval": INTERVAL,
            "out": str(args.out),
            "backend": args.backend,
            "agent_config": config,
        },
        "machine": machine_facts(),
        **({"gpu": _gpu_facts(inventory, nvidia_smi)} if nvml and inventory else {}),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "agent": agent_results,
        **spawn,
        "spawn_interpreter_floor": floor_results,
        "spawn_children_cpu_s_total": children_total,
        "ratios": {
            ratio_names[key]: _cpu_ratio(value, agent_results) for key, value in spawn.items()
        },
        "targets": {
            "cpu_percent_one_core_at_1hz": TARGET_CPU_PERCENT,
            "rss_mb": TARGET_RSS_MB,
            "cpu_met": agent_results["cpu_percent_one_core_at_1hz"] < TARGET_CPU_PERCENT,
            "rss_met": agent_results["rss_max_mb"] < TARGET_RSS_MB,
        },
        "h100_reference": _h100_reference(),
        "not_included": {
            "ssh_session_setup_ms": SSH_SETUP_MS,
            "note": "baselines run locally, no SSH hop; source of the SSH figure: design.md §6",
        },
    }
    publish(results, report(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
