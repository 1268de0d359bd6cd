"""What serving ``/metrics`` costs the agent, at Prometheus' usual scrape intervals.

One agent at a time (``python -m agents serve --backend sim --gpus 8`` at 1 Hz, no console
connected, so the exporter's share is not hidden under a stream's), in four modes, one after
the other so they never compete for the CPU:

- ``off``: no ``[metrics]`` section (the baseline);
- ``on idle``: the exporter listening, never scraped (its server thread's own wake-ups);
- ``15 s`` and ``1 s``: scraped as Prometheus scrapes: ``GET /metrics`` with
  ``Accept-Encoding: gzip`` on a kept-alive connection, reconnecting when the agent closed it.

The agent's CPU is utime + stime from /proc/<pid>/stat (every thread, the exited ones
included) over the window after a warm-up; the scrape's response time is the scraper's wall
time from sending the request to the last byte. Then, in this process, the collector and
renderer alone for an 8-GPU sample (``time.thread_time``), which is the CPU a scrape adds.

    python bench/metrics_cost.py                  # ~5 min; JSON in bench/results/metrics_cost.json
    python bench/metrics_cost.py --seconds 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from benchlib import machine_facts, publish, run_header

from agents.export.metrics import MetricsCollector, render
from agents.gpu.sim import SimBackend
from agents.host import HostSampler
from agents.protocol import NodeState
from agents.sampler import Sampler

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "metrics_cost.json"
GPUS = 8
MODES: tuple[tuple[str, float | None, bool], ...] = (
    ("off", None, False),
    ("on idle", None, True),
    ("15 s", 15.0, True),
    ("1 s", 1.0, True),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


class ThreadClock(threading.Thread):
    """The agent's on-CPU nanoseconds per thread (/proc/<pid>/task/*/schedstat), read every
    0.2 s and kept per thread id, so a connection thread that exits still counts (up to its
    last reading). Finer than utime + stime's 10 ms ticks, which round a 60 s window of an
    agent using 0.15 % of a core to 9 ticks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.seen: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def read(self) -> dict[int, int]:
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            with self.lock:
                self.seen[int(task.name)] = ns
        with self.lock:
            return dict(self.seen)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.read()


def cpu_between(start: dict[int, int], end: dict[int, int]) -> float:
    return sum(ns - start.get(tid, 0) for tid, ns in end.items()) / 1e9


class Scraper(threading.Thread):
    """Prometheus' side: one request every ``interval`` on a kept-alive connection."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.times: list[float] = []
        self.sizes: list[tuple[int, int]] = []  # (bytes on the wire, bytes of text)
        self.errors = 0

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            for _ in range(2):  # a connection the agent closed while idle: reconnect once
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    t0 = time.perf_counter()
                    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
                    resp = conn.getresponse()
                    body = resp.read()
                    self.times.append(time.perf_counter() - t0)
                    text = gzip.decompress(body) if resp.getheader("Content-Encoding") else body
                    self.sizes.append((len(body), len(text)))
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = None
            else:
                self.errors += 1
        if conn is not None:
            conn.close()


def measure(
    mode: str, interval: float | None, on: bool, warmup: float, window: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gf-mc-", dir="/tmp") as tmp:
        root = Path(tmp)
        port = free_port()
        config = f'[metrics]\nlisten = "127.0.0.1:{port}"\n' if on else ""
        (root / "agent.toml").write_text(config)
        log = (root / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agents", "serve", "--config", str(root / "agent.toml"),
             "--socket", str(root / "agent.sock"), "--state-dir", str(root / "state"),
             "--backend", "sim", "--gpus", str(GPUS), "--interval", "1"],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while b"serving" not in (root / "agent.log").read_bytes():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "agent.log").read_text())
                time.sleep(0.05)
            proc = psutil.Process(agent.pid)
            clock = ThreadClock(agent.pid)
            clock.start()
            scraper = Scraper(port, interval) if interval is not None else None
            if scraper is not None:
                scraper.start()
            time.sleep(warmup)
            first = len(scraper.times) if scraper else 0
            c0, s0, t0 = cpu_seconds(proc), clock.read(), time.monotonic()
            time.sleep(window)
            c1, s1, t1 = cpu_seconds(proc), clock.read(), time.monotonic()
            clock.stop.set()
            rss = proc.memory_info().rss
            if scraper is not None:
                scraper.stop.set()
                scraper.join(15)
        finally:
            agent.terminate()
            agent.wait(15)
            log.close()
    times = scraper.times[first:] if scraper else []
    out: dict[str, Any] = {
        "mode": mode,
        "scrape_interval_s": interval,
        "window_s": t1 - t0,
        "agent_cpu_s": cpu_between(s0, s1),
        "agent_cpu_percent": 100 * cpu_between(s0, s1) / (t1 - t0),
        "agent_cpu_ticks_s": c1 - c0,  # utime + stime, 10 ms ticks: a cross-check
        "agent_threads_seen": len(s1),
        "agent_rss_bytes": rss,
        "scrapes": len(times),
        "scrape_errors": scraper.errors if scraper else 0,
    }
    if times:
        ms = sorted(1000 * t for t in times)
        out["response_ms"] = {
            "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
            "max": ms[-1],
        }
        out["bytes_gzip"], out["bytes_text"] = scraper.sizes[-1] if scraper else (0, 0)
    return out


def render_cost(repeats: int) -> dict[str, Any]:
    """CPU of one scrape's collect + render for an 8-GPU sample, in this process."""
    backend = SimBackend(GPUS, seed=1)
    sampler = Sampler(backend, HostSampler(), history_len=5)
    sampler.host.prime()
    sample, _ = sampler.tick()
    collector = MetricsCollector(
        node="bench", latest=lambda: sample, gpus=backend.inventory, state=lambda: NodeState(),
        interval=1.0, scheduler="none", clock=lambda: sample.ts,
    )  # fmt: skip
    page = render(collector.collect())
    each = []
    for _ in range(repeats):
        t0 = time.thread_time()
        render(collector.collect())
        each.append(time.thread_time() - t0)
    t0 = time.thread_time()
    for _ in range(repeats):
        gzip.compress(page, 1)
    gz = (time.thread_time() - t0) / repeats
    backend.close()
    return {
        "collect_render_ms_median": 1000 * statistics.median(each),
        "gzip_ms_mean": 1000 * gz,
        "series": page.count(b"\n") - 2 * page.count(b"# TYPE"),
        "bytes_text": len(page),
        "bytes_gzip": len(gzip.compress(page, 1)),
    }


def report(results: dict[str, Any]) -> str:
    base = next(
        (m["agent_cpu_percent"] for m in results["modes"] if m["mode"] == "off"),
        results["modes"][0]["agent_cpu_percent"],
    )
    lines = [
        f"Agent (sim, {GPUS} GPUs, 1 Hz, no console) CPU with /metrics, "
        f"{results['window_s']:.0f} s windows after {results['warmup_s']:.0f} s warm-up:",
        "",
        "| /metrics | scrapes | agent CPU % of a core | vs off | response p50 / p99 ms |"
        " bytes (gzip / text) | RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results["modes"]:
        r = m.get("response_ms")
        resp = f"{r['p50']:.2f} / {r['p99']:.2f}" if r else "n/a"
        size = f"{m['bytes_gzip']} / {m['bytes_text']}" if r else "n/a"
        delta = m["agent_cpu_percent"] - base
        lines.append(
            f"| {m['mode']} | {m['scrapes']} | {m['agent_cpu_percent']:.3f} | "
            f"{delta:+.3f} | {resp} | {size} | {m['agent_rss_bytes'] / 1e6:.1f} |"
        )
    rc = results["render"]
    lines += [
        "",
        f"One scrape's collect + render in-process: {rc['collect_render_ms_median']:.3f} ms CPU "
        f"(+ {rc['gzip_ms_mean']:.3f} ms gzip) for {rc['series']} series, "
        f"{rc['bytes_text']} bytes ({rc['bytes_gzip']} gzipped).",
    ]
    return "\n".join(lines)


def args_help() -> str:
    return ", ".join(name for name, _, _ in MODES)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window per mode")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2000, help="in-process renders timed")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--modes", default=",".join(m for m, _, _ in MODES), help="which, comma-separated"
    )
    args = ap.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    chosen = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in chosen if m not in {name for name, _, _ in MODES}]
    if unknown:  # a mode not measured must not pass for one measured
        ap.error(f"--modes: unknown {', '.join(map(repr, unknown))} (known: {args_help()})")
    modes = [measure(m, i, on, args.warmup, args.seconds) for m, i, on in MODES if m in chosen]
    results: dict[str, Any] = {
        **run_header("metrics_cost", started),
        "machine": machine_facts(),
        "gpus": GPUS,
        "warmup_s": args.warmup,
        "window_s": args.seconds,
        "modes": modes,
        "render": render_cost(args.repeats),
    }
    results.update(run_header("metrics_cost", started))  # with the duration, now known
    publish(results, report(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
