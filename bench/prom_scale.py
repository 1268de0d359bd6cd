"""The console's view of a large fleet from Prometheus (issue 7): time to the first full
screen and what each refresh costs, beside the SSH source at the largest size this machine
holds, in one run.

The Prometheus side, from the nodes up:

- N simulated nodes of 8 GPUs, each's ``/metrics`` page rendered per scrape by the agent's own
  ``MetricsCollector`` and ``render`` (gzip level 1 past ``GZIP_MIN``, as ``agents.export.exporter``
  sends it), over that node's newest sample, its own inventory (UUIDs from the simulator seeded
  per node) and ops state. The samples are the agent's ``Sampler`` on simulated H100s, a pool of
  readings per node template, re-timed so each node takes a sample every second at its own
  phase, as agents do. 5,000 agent processes do not fit on this machine, so a few node-host
  processes each serve many nodes, one URL path per node (``/node/NAME/metrics``) on an asyncio
  HTTP server; Prometheus sees one target per node (its own ``instance`` label) and gets the
  very bytes that node's agent would send. What serving costs the node hosts is reported, not
  judged: on a fleet each agent pays for its own page on its own node.
- A real Prometheus (Debian's 2.42, started by the tests' own launcher,
  ``tests/integration/prometheus.py``) scraping every node each ``--scrape`` seconds (15 s,
  the common setting; dcgm-exporter's default Helm chart uses the same).
- The console: ``PromSource`` polling every 5 s (its default), first alone (the model, as
  ``status`` and the screen's feed use it: CPU, wall time and bytes of each poll), then under
  the real ``FleetApp`` on Textual's headless driver (everything computed, nothing written to
  a terminal): the time from starting the source to the first frame the screen displays with
  every node live, and the process's CPU while it refreshes.

The SSH side: ``--ssh-nodes`` real agents (``agents.serve.daemon.Agent`` on simulated H100s, their
replay buffers filled as after 15 minutes up) behind embedded asyncssh servers in node-host
processes (``bench/ops.py``'s), and the same ``FleetApp`` on ``FleetLinks``: the time to the
first full screen and the console's CPU per second once steady.

Everything shares this machine's cores, with whatever else runs on it (the load average is
recorded): every cost here is an upper bound on the same work on a quiet machine.

    python bench/prom_scale.py                          # 5,000 nodes, SSH at 500: ~6 min
    python bench/prom_scale.py --nodes 200 --ssh-nodes 50 --polls 4 --window 10   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import psutil
from benchlib import machine_facts, publish, run_header, spawn_node_hosts, stop_node_hosts
from rich.console import RenderableType
from textual.screen import Screen

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' Prometheus launcher (tests/integration/prometheus.py)

from agents.protocol import NodeState, Sample  # noqa: E402
from console.model.fleet import FleetState  # noqa: E402
from console.model.inventory import NodeEntry, parse_inventory  # noqa: E402
from console.sources.prometheus.client import PromClient  # noqa: E402
from console.sources.prometheus.source import PromSource  # noqa: E402
from console.sources.prometheus.view import SLOW_EVERY  # noqa: E402
from console.tui.app import FleetApp  # noqa: E402
from tests.integration.prometheus import PrometheusServer, start_prometheus  # noqa: E402

HERE = Path(__file__).resolve()
DEFAULT_OUT = HERE.parent / "results" / "prom_scale.json"
GPUS = 8
TEMPLATES = 16  # distinct simulated nodes whose readings the fleet's samples are drawn from
TICKS = 30  # readings per template, cycled
POOL_NODES = 250  # nodes per pool (node0001-0250 in pool00, ...)
SIZE = (200, 60)
POLL_S = 5.0
FIRST_LIMIT_S = 180.0  # for the first full view, polls failing included
FRESH_LIMIT_S = 300.0  # the same, with Prometheus started at the same time
MB = 1_000_000


def node_name(i: int) -> str:
    return f"node{i:04d}"


def inventory_text(count: int) -> str:
    groups = []
    for first in range(1, count + 1, POOL_NODES):
        last = min(count, first + POOL_NODES - 1)
        pool = f"pool{(first - 1) // POOL_NODES:02d}"
        groups.append(f'[[group]]\nname = "{pool}"\npool = "{pool}"\n')
        groups.append(f'nodes = "node[{first:04d}-{last:04d}]"\n')
    return "".join(groups)


# --------------------------------------------------------------------------------------------
# Node hosts: one process serving many nodes' /metrics pages


def _collectors(count: int, first: int, interval: float) -> dict[bytes, Any]:
    """Each node's real collector, by the path Prometheus asks for its page."""
    from agents.export.metrics import MetricsCollector
    from agents.gpu.sim import SimBackend
    from agents.host import HostSampler
    from agents.sampler import Sampler

    host = HostSampler()
    host.prime()
    pools: list[list[Sample]] = []
    for t in range(TEMPLATES):
        sampler = Sampler(SimBackend(GPUS, seed=t, node=f"t{t}"), host, history_len=TICKS)
        pools.append([sampler.tick()[0] for _ in range(TICKS)])

    def newest(pool: list[Sample], phase: float) -> Callable[[], Sample]:
        def latest() -> Sample:  # the sample an agent ticking at ``phase`` holds now
            k = math.floor(time.time() / interval - phase)
            return msgspec.structs.replace(pool[k % TICKS], seq=k, ts=(k + phase) * interval)

        return latest

    out: dict[bytes, Any] = {}
    for i in range(first, first + count):
        name = node_name(i)
        inv = SimBackend(GPUS, seed=i, node=name).inventory()
        state = NodeState(pool=f"pool{(i - 1) // POOL_NODES:02d}")
        out[f"/node/{name}/metrics".encode()] = MetricsCollector(
            node=name,
            latest=newest(pools[i % TEMPLATES], (i * 0.618) % 1.0),
            gpus=lambda inv=inv: inv,  # type: ignore[misc]
            state=lambda state=state: state,  # type: ignore[misc]
            interval=interval,
            scheduler="none",
        )
    return out


async def _serve_pages(count: int, first: int, interval: float) -> None:
    from agents.export.exporter import CONTENT_TYPE, GZIP_MIN
    from agents.export.metrics import render

    pages = _collectors(count, first, interval)
    served = [0, 0]  # pages, bytes sent

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive, as Prometheus reuses its connection to a target
                head = await reader.readuntil(b"\r\n\r\n")
                request, _, headers = head.partition(b"\r\n")
                parts = request.split()
                collector = pages.get(parts[1]) if len(parts) == 3 else None
                if collector is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                body = render(collector.collect())
                extra = b""
                if b"gzip" in headers.lower() and len(body) >= GZIP_MIN:
                    body, extra = gzip.compress(body, 1), b"Content-Encoding: gzip\r\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: " + CONTENT_TYPE.encode() + b"\r\n"
                    + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )  # fmt: skip
                served[0] += 1
                served[1] += len(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=4096)
    port = int(server.sockets[0].getsockname()[1])
    print(json.dumps({"port": port, "first": first, "count": count}), flush=True)
    while await asyncio.to_thread(sys.stdin.readline):  # until the parent closes stdin
        print(json.dumps({"pages": served[0], "bytes": served[1]}), flush=True)
    server.close()


# --------------------------------------------------------------------------------------------
# The console side


class TimedApp(FleetApp):
    """The real app, noting the first frame displayed after a refresh that found every node
    live (the fleet table rebuilt from a model holding all of them)."""

    def __init__(self, fleet: FleetState, **kw: Any) -> None:
        super().__init__(fleet, refresh_s=0.5, **kw)
        self.full_refresh: float | None = None
        self.full_screen: float | None = None
        self.complete: float | None = None  # every node's GPU identities known too

    def refresh_fleet(self) -> None:
        super().refresh_fleet()
        if self.full_refresh is None and all(v.link == "live" for v in self.fleet.nodes.values()):
            self.full_refresh = time.perf_counter()
        if (
            self.complete is None
            and self.full_refresh is not None
            and all(
                v.inventory is not None and all(g.uuid for g in v.inventory.gpus)
                for v in self.fleet.nodes.values()
            )
        ):
            self.complete = time.perf_counter()

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        super()._display(screen, renderable)
        if renderable is not None and self.full_refresh is not None and self.full_screen is None:
            self.full_screen = time.perf_counter()


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _live(fleet: FleetState) -> int:
    return sum(v.link == "live" for v in fleet.nodes.values())


async def _screen(
    app: TimedApp, started: float, window: float, limit: float, others: list[psutil.Process]
) -> dict[str, Any]:
    """Run ``app`` headless until its first full screen, then ``window`` seconds steady."""
    me = psutil.Process()
    runner = asyncio.create_task(app.run_async(headless=True, size=SIZE))
    try:
        while app.full_screen is None:
            if runner.done():
                runner.result()
                raise RuntimeError("the app stopped")
            if time.perf_counter() - started > limit:
                live = _live(app.fleet)
                raise RuntimeError(f"no full screen in {limit:g} s ({live} nodes live)")
            await asyncio.sleep(0.05)
        first = app.full_screen - started
        while app.complete is None:  # the static set too (GPU identities, limits)
            if time.perf_counter() - started > limit:
                break
            await asyncio.sleep(0.05)
        complete = None if app.complete is None else app.complete - started
        await asyncio.sleep(window / 4)  # past the burst of the first screen
        cpu0, wall0 = _cpu(me), time.perf_counter()
        others0 = [_cpu(p) for p in others]
        await asyncio.sleep(window)
        wall = time.perf_counter() - wall0
        cpu = _cpu(me) - cpu0
        others_cpu = [_cpu(p) - c for p, c in zip(others, others0, strict=True)]
        live = _live(app.fleet)
    finally:
        app.exit()
        await asyncio.gather(runner, return_exceptions=True)
    return {
        "first_full_screen_s": first,
        "complete_s": complete,
        "window_s": wall,
        "console_cpu_percent": 100 * cpu / wall,
        "others_cpu_percent": [100 * c / wall for c in others_cpu],
        "live_at_end": live,
        "console_rss_mb": me.memory_info().rss / MB,
    }


async def prom_console(
    url: str, entries: list[NodeEntry], polls: int, window: float, prom: psutil.Process
) -> dict[str, Any]:
    """The source alone for ``polls`` polls, then under the screen."""
    me = psutil.Process()
    client = PromClient(url)  # counts the bytes of its answers (not gzipped: it does not ask)
    source = PromSource(entries, url, client=client, poll_s=POLL_S)
    rows: list[dict[str, Any]] = []
    faults: list[str] = []
    first_full = None
    started = time.perf_counter()
    prom0 = _cpu(prom)
    k = 0
    while len(rows) < polls:
        cpu0, wall0, bytes0 = time.process_time(), time.perf_counter(), client.bytes_read
        await source.poll()
        wall = time.perf_counter() - wall0
        k += 1
        if source.fault is not None:  # the source polls again, as it does on a screen
            faults.append(f"poll {k}: {source.fault}")
            if time.perf_counter() - started > FIRST_LIMIT_S:
                raise RuntimeError(f"no full view in {FIRST_LIMIT_S:g} s: {faults[-1]}")
        else:
            live = _live(source.fleet)
            if first_full is None and live == len(entries):
                first_full = time.perf_counter() - started
            if first_full is not None:
                rows.append({
                    "behind": source.behind,
                    "cpu_s": time.process_time() - cpu0,
                    "wall_s": wall,
                    "bytes": client.bytes_read - bytes0,
                    "live": live,
                })  # fmt: skip
        await asyncio.sleep(max(0.0, POLL_S - wall))
    prom_cpu = _cpu(prom) - prom0
    model_wall = time.perf_counter() - started
    model_rss = me.memory_info().rss / MB

    del source  # the screen's source starts from nothing, as on a fresh start
    fleet_source = PromSource(entries, url, poll_s=POLL_S)
    app = TimedApp(fleet_source.fleet, feed=fleet_source, source=f"prometheus {url}")
    screen = await _screen(app, time.perf_counter(), window, FIRST_LIMIT_S, [prom])
    screen["faults"] = fleet_source.fault
    # rows[0]: the poll that gave the first full view (the fast set); then the catch-up polls
    # (static and slow sets, CATCH_UP_NODES nodes a poll) until no node is behind; then
    # steady polls, news only.
    caught = next((i for i, r in enumerate(rows) if r["behind"] == 0), len(rows) - 1)
    catch_up, steady = rows[1 : caught + 1], rows[caught + 1 :] or rows[-1:]
    return {
        "first_full_model_s": first_full,
        "faults": faults,
        "polls": rows,
        "first_poll": rows[0],
        "catch_up_polls": len(catch_up),
        "catch_up_poll": _mean_poll(catch_up or rows[:1]),
        "steady": _mean_poll(steady),
        "steady_max": {k: max(r[k] for r in steady) for k in ("cpu_s", "wall_s", "bytes")},
        "mean_cpu_s_per_poll": sum(r["cpu_s"] for r in steady) / len(steady),
        "mean_bytes_per_poll": sum(r["bytes"] for r in steady) / len(steady),
        "model_rss_mb": model_rss,
        "prometheus_cpu_percent_while_polled": 100 * prom_cpu / model_wall,
        "screen": screen,
    }


def _mean_poll(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("cpu_s", "wall_s", "bytes")}


async def fresh_console(
    url: str, entries: list[NodeEntry], prom_started: float, window: float
) -> dict[str, Any]:
    """The screen started with Prometheus (``prom_started``, unix time): what an operator
    sees after both restarted; bounded by how fast Prometheus itself gets every node."""
    source = PromSource(entries, url, poll_s=POLL_S)
    app = TimedApp(source.fleet, feed=source, source=f"prometheus {url}")
    started = time.perf_counter()
    late = time.time() - prom_started  # this process's start, after Prometheus'
    screen = await _screen(app, started, window, FRESH_LIMIT_S, [])
    screen["started_after_prometheus_s"] = late
    screen["first_full_screen_from_prometheus_start_s"] = late + screen["first_full_screen_s"]
    if screen["complete_s"] is not None:
        screen["complete_from_prometheus_start_s"] = late + screen["complete_s"]
    return screen


async def ssh_console(nodes: int, window: float) -> dict[str, Any]:
    from ops import start_node_hosts

    from console.sources.ssh.fleetlinks import FleetLinks
    from console.sources.ssh.link import LinkOptions

    hosts = await asyncio.to_thread(start_node_hosts, nodes, max(1, math.ceil(nodes / 100)), 900)
    try:
        links = FleetLinks(hosts.inventory.nodes, LinkOptions(ssh_config=[]))
        app = TimedApp(links.fleet, links=links, source="ssh")
        others = [psutil.Process(p) for p in hosts.pids]
        result = await _screen(app, time.perf_counter(), window, 180.0, others)
    finally:
        await asyncio.to_thread(stop_node_hosts, hosts.procs)
    result["node_hosts"] = len(hosts.procs)
    return result


# --------------------------------------------------------------------------------------------
# One size, Prometheus side


def _in_child(mode: str, *argv: str) -> dict[str, Any]:
    """One console side in a fresh process of its own, so that its RSS and CPU are its own
    (memory one side freed is not handed back to the system for the other)."""
    done = subprocess.run(
        [sys.executable, str(HERE), mode, *argv], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the {mode[1:]} console exited with {done.returncode}")
    said: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in said:
        raise RuntimeError(said["error"])
    return said


def _child(mode: str, argv: list[str]) -> None:
    try:
        if mode == "_prom":
            url, nodes, polls, window, pid = argv
            entries = parse_inventory(inventory_text(int(nodes)), "bench").nodes
            prom = psutil.Process(int(pid))
            said = asyncio.run(prom_console(url, entries, int(polls), float(window), prom))
        elif mode == "_fresh":
            url, nodes, prom_started, window = argv
            entries = parse_inventory(inventory_text(int(nodes)), "bench").nodes
            said = asyncio.run(fresh_console(url, entries, float(prom_started), float(window)))
        else:
            said = asyncio.run(ssh_console(int(argv[0]), float(argv[1])))
    except (RuntimeError, OSError) as exc:
        said = {"error": str(exc)}
    print(json.dumps(said), flush=True)


def _node_hosts(nodes: int, hosts: int) -> list[tuple[Any, dict[str, Any]]]:
    return spawn_node_hosts(str(HERE), nodes, hosts, 1.0)


def _served(procs: list[Any]) -> tuple[int, int]:
    pages = sent = 0
    for proc in procs:
        proc.stdin.write("count\n")
        proc.stdin.flush()
        said = json.loads(proc.stdout.readline())
        pages, sent = pages + said["pages"], sent + said["bytes"]
    return pages, sent


def _wait_scraped(prom: PrometheusServer, nodes: int, limit: float) -> float:
    """Seconds until Prometheus holds a sample time for every node."""
    t0 = time.perf_counter()
    while True:
        if prom.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{prom.log()[-2000:]}")
        try:
            got = prom.query("count(gpufleet_sample_timestamp_seconds)")
        except (OSError, AssertionError):
            got = []
        if got and int(float(got[0]["value"][1])) >= nodes:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > limit:
            have = int(float(got[0]["value"][1])) if got else 0
            raise RuntimeError(f"Prometheus had {have} of {nodes} nodes after {limit:g} s")
        time.sleep(1.0)


def _scrape_health(prom: PrometheusServer) -> dict[str, Any]:
    """How Prometheus' own scrapes went: any target down, and the slowest scrape."""
    up = {state: prom.query(f"count(up == {v})") for state, v in (("up", 1), ("down", 0))}
    worst = prom.query("max(scrape_duration_seconds)")
    series = prom.query("sum(scrape_samples_scraped)")
    return {
        "targets": {k: int(float(r[0]["value"][1])) if r else 0 for k, r in up.items()},
        "max_scrape_duration_s": float(worst[0]["value"][1]) if worst else None,
        "samples_per_scrape_round": int(float(series[0]["value"][1])) if series else None,
    }


def prom_size(nodes: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    hosts_n = max(1, min(args.node_hosts, nodes // 50 or 1))
    t0 = time.perf_counter()
    ready = _node_hosts(nodes, hosts_n)
    procs = [p for p, _ in ready]
    prom = None
    try:
        hosts_up = time.perf_counter() - t0
        targets = [
            (f"127.0.0.1:{said['port']}",
             {"__metrics_path__": f"/node/{node_name(i)}/metrics", "instance": node_name(i)})
            for _, said in ready
            for i in range(said["first"], said["first"] + said["count"])
        ]  # fmt: skip
        root = tmp / f"prometheus-{nodes}"
        prom_started = time.time()
        prom = start_prometheus(
            root,
            targets,
            scrape_interval=f"{args.scrape:g}s",
            scrape_timeout=f"{min(10.0, args.scrape):g}s",
        )
        pp = psutil.Process(prom.proc.pid)
        # Scenario 1: the console started with Prometheus (both just restarted), while this
        # process watches for Prometheus itself to hold every node.
        child = subprocess.Popen(
            [sys.executable, str(HERE), "_fresh", prom.base_url, str(nodes), repr(prom_started),
             str(args.window / 3)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_scraped(prom, nodes, 4 * args.scrape + 60)
            scraped_s = time.time() - prom_started
        finally:
            out, _ = child.communicate()
        said = out.strip().splitlines()[-1] if out.strip() else ""
        fresh: dict[str, Any] = json.loads(said) if said else {"error": f"rc {child.returncode}"}
        time.sleep(args.scrape)  # a full round of scrapes more, so every node has two
        health = _scrape_health(prom)
        hosts_cpu0 = [_cpu(psutil.Process(p.pid)) for p in procs]
        prom_cpu0, wall0 = _cpu(pp), time.perf_counter()
        console = _in_child(
            "_prom", prom.base_url, str(nodes), str(args.polls), str(args.window), str(pp.pid)
        )
        wall = time.perf_counter() - wall0
        hosts_cpu = sum(
            _cpu(psutil.Process(p.pid)) - c for p, c in zip(procs, hosts_cpu0, strict=True)
        )
        prom_cpu = _cpu(pp) - prom_cpu0
        pages, sent = _served(procs)
        health_after = _scrape_health(prom)
        return {
            "nodes": nodes,
            "gpus": nodes * GPUS,
            "node_hosts": hosts_n,
            "node_hosts_ready_s": hosts_up,
            "prometheus_all_scraped_s": scraped_s,
            "prometheus_just_started": fresh,
            "scrape": health,
            "scrape_after": health_after,
            "prometheus_rss_mb": pp.memory_info().rss / MB,
            "prometheus_cpu_percent": 100 * prom_cpu / wall,
            "node_hosts_cpu_percent": 100 * hosts_cpu / wall,
            "pages_served": pages,
            "page_bytes_served": sent,
            "console": console,
        }
    finally:
        if prom is not None:
            prom.stop()
        stop_node_hosts(procs)


# --------------------------------------------------------------------------------------------
# Report


def report(results: dict[str, Any]) -> str:
    p = results["parameters"]
    rows = [
        f"Prometheus {p['scrape']:g} s scrape, console polls every {POLL_S:g} s "
        f"(a node's slow readings every {SLOW_EVERY}th); load average at start "
        f"{results['loadavg_start']}, at the end {results.get('loadavg_end')}.",
        "",
    ]
    for a in results["attempts"]:
        if "error" in a:
            rows.append(f"attempt at {a['nodes']} nodes: {a['error']}")
        elif a["console"]["faults"]:
            faults = a["console"]["faults"]
            rows.append(
                f"at {a['nodes']} nodes, {len(faults)} poll(s) failed before the first full "
                f"view (the source polls again): {faults[0]}"
            )
        if "error" not in a:
            rows.append(
                f"at {a['nodes']} nodes: {a['scrape']['samples_per_scrape_round']} series "
                f"scraped per round; every node in Prometheus {a['prometheus_all_scraped_s']:.0f}"
                f" s after it started; slowest scrape {a['scrape']['max_scrape_duration_s']:.2f}"
                f" s; targets {a['scrape_after']['targets']}"
            )
    rows += [
        "",
        "| source | nodes | GPUs | first full screen s | every node complete s | console CPU % "
        "of a core | console RSS MB | Prometheus RSS MB / CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    polls = [
        "",
        "The source alone (Prometheus holding the fleet), per poll: the first (the fast set of "
        "every node), the catch-up (static and slow sets, mean of the polls until every node "
        "has them), then steady (news only; mean / max), and steady per 30 s (6 polls):",
        "",
        "| nodes | CPU s first / catch-up / steady mean / max | wall s first / catch-up / "
        "steady mean / max | MB first / catch-up / steady mean / max | steady per 30 s: CPU s,"
        " MB |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in results["attempts"]:
        if "error" in a:
            continue
        c, s = a["console"], a["console"]["screen"]
        f, k, m, x = c["first_poll"], c["catch_up_poll"], c["steady"], c["steady_max"]
        fresh = a.get("prometheus_just_started", {})
        rows.append(
            f"| prometheus, holding the fleet | {a['nodes']} | {a['gpus']} | "
            f"{s['first_full_screen_s']:.1f} | {_opt(s.get('complete_s'))} | "
            f"{s['console_cpu_percent']:.0f} | {s['console_rss_mb']:.0f} | "
            f"{a['prometheus_rss_mb']:.0f} / {a['prometheus_cpu_percent']:.0f} |"
        )
        if "error" in fresh:
            rows.append(f"| prometheus, just started | {a['nodes']} | {fresh['error']} |")
        elif fresh:
            rows.append(
                f"| prometheus, just started (from its start; it held every node after "
                f"{a['prometheus_all_scraped_s']:.0f} s) | {a['nodes']} | {a['gpus']} | "
                f"{fresh['first_full_screen_from_prometheus_start_s']:.1f} | "
                f"{_opt(fresh.get('complete_from_prometheus_start_s'))} | "
                f"{fresh['console_cpu_percent']:.0f} | {fresh['console_rss_mb']:.0f} | |"
            )
        polls.append(
            f"| {a['nodes']} ({c['catch_up_polls']} catch-up polls) | {f['cpu_s']:.2f} / "
            f"{k['cpu_s']:.2f} / {m['cpu_s']:.2f} / "
            f"{x['cpu_s']:.2f} | {f['wall_s']:.2f} / {k['wall_s']:.2f} / {m['wall_s']:.2f} / "
            f"{x['wall_s']:.2f} | {f['bytes'] / MB:.1f} / {k['bytes'] / MB:.1f} / "
            f"{m['bytes'] / MB:.1f} / {x['bytes'] / MB:.1f} | {6 * m['cpu_s']:.1f}, "
            f"{6 * m['bytes'] / MB:.0f} |"
        )
    ssh = results.get("ssh")
    if ssh and "error" not in ssh:
        rows.append(
            f"| ssh | {ssh['nodes']} | {ssh['nodes'] * GPUS} | {ssh['first_full_screen_s']:.1f}"
            f" | {_opt(ssh.get('complete_s'))} | {ssh['console_cpu_percent']:.0f} | "
            f"{ssh['console_rss_mb']:.0f} | |"
        )
    elif ssh:
        rows.append(f"ssh at {ssh['nodes']} nodes: {ssh['error']}")
    r = results.get("ratios")
    if r:
        rows += [
            "",
            f"At {r['prom_nodes']} nodes from Prometheus against {r['ssh_nodes']} over SSH: "
            f"first full screen {r['first_screen_ratio']:.2f}x the SSH one's; console CPU per "
            f"node {r['cpu_per_node_ratio']:.2f}x the SSH one's "
            f"({r['prom_cpu_ms_per_node_s']:.3f} against {r['ssh_cpu_ms_per_node_s']:.3f} "
            "ms of CPU per node per second).",
        ]
    return "\n".join(rows + polls)


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratios(results: dict[str, Any]) -> dict[str, Any] | None:
    ok = [a for a in results["attempts"] if "error" not in a]
    ssh = results.get("ssh")
    if not ok or not ssh or "error" in ssh:
        return None
    a = max(ok, key=lambda a: a["nodes"])
    s = a["console"]["screen"]
    prom_per_node = 10 * s["console_cpu_percent"] / a["nodes"]  # ms per node per second
    ssh_per_node = 10 * ssh["console_cpu_percent"] / ssh["nodes"]
    return {
        "prom_nodes": a["nodes"],
        "ssh_nodes": ssh["nodes"],
        "first_screen_ratio": s["first_full_screen_s"] / ssh["first_full_screen_s"],
        "prom_cpu_ms_per_node_s": prom_per_node,
        "ssh_cpu_ms_per_node_s": ssh_per_node,
        "cpu_per_node_ratio": prom_per_node / ssh_per_node,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--nodes", default="5000", help="sizes to try, largest first (5000,3000): stops at "
        "the first that Prometheus holds, and reports the attempts before it",
    )  # fmt: skip
    p.add_argument("--ssh-nodes", type=int, default=500, help="0: leave the SSH side out")
    p.add_argument("--scrape", type=float, default=15.0, help="Prometheus' scrape interval, s")
    p.add_argument("--polls", type=int, default=13, help="polls of the source alone")
    p.add_argument("--window", type=float, default=30.0, help="seconds measured on the screen")
    p.add_argument("--node-hosts", type=int, default=4, help="processes serving /metrics")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    sizes = [int(n) for n in args.nodes.split(",")]
    started = dt.datetime.now(dt.UTC)
    logging.getLogger("gpufleet").setLevel(logging.ERROR)
    results: dict[str, Any] = {
        **run_header("prom_scale", started),
        "parameters": {
            "nodes": sizes,
            "ssh_nodes": args.ssh_nodes,
            "scrape": args.scrape,
            "polls": args.polls,
            "window": args.window,
            "node_hosts": args.node_hosts,
            "gpus_per_node": GPUS,
            "poll_s": POLL_S,
            "slow_every": SLOW_EVERY,
        },
        "machine": machine_facts(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "attempts": [],
    }
    with tempfile.TemporaryDirectory(prefix="gf-promscale-") as tmp:
        for nodes in sizes:
            print(f"prometheus: {nodes} nodes ...", file=sys.stderr, flush=True)
            try:
                results["attempts"].append(prom_size(nodes, args, Path(tmp)))
                break
            except (RuntimeError, AssertionError, OSError) as exc:
                results["attempts"].append({"nodes": nodes, "error": str(exc)[-1500:]})
                print(f"  failed: {exc}", file=sys.stderr, flush=True)
    if args.ssh_nodes:
        print(f"ssh: {args.ssh_nodes} nodes ...", file=sys.stderr, flush=True)
        try:
            ssh = _in_child("_ssh", str(args.ssh_nodes), str(args.window))
            results["ssh"] = {"nodes": args.ssh_nodes, **ssh}
        except (RuntimeError, OSError) as exc:
            results["ssh"] = {"nodes": args.ssh_nodes, "error": str(exc)}
    results["ratios"] = _ratios(results)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results.update(run_header("prom_scale", started))
    publish(results, report(results), args.out)
    return 0 if any("error" not in a for a in results["attempts"]) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_prom", "_ssh", "_fresh"):
        logging.getLogger("gpufleet").setLevel(logging.ERROR)
        _child(sys.argv[1], sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_nodes":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        logging.getLogger("gpufleet").setLevel(logging.ERROR)
        asyncio.run(_serve_pages(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(main())
