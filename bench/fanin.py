"""Fan-in: N simulated nodes (8 GPUs each, 1 Hz) through SSH into the console's FleetState.

Two ways to get every node's numbers into the console each second, side by side in one run:

- stream (gpufleet): one SSH connection per node, a direct-streamlocal channel to the node's
  agent, and the agent pushes a sample each second. The nodes are the real agent daemon
  (``agents.serve.daemon.Agent`` on simulated H100s) behind one embedded asyncssh server, exactly as
  ``gpufleet demo`` runs them; the console side is ``NodeLink`` feeding ``FleetState``.
- exec (exec-per-poll, the way gpustat-web polls): one SSH connection per node, kept open, and
  each second an exec channel running ``gpufleet-agent once --json`` on the node, whose JSON is
  decoded and applied to the same ``FleetState``. The server runs that argv directly (no shell,
  as a ForceCommand would), so shell start-up does not inflate the baseline (design.md §6).

The console and the nodes run in separate processes so each one's CPU is its own: the console's
process CPU (user + system), RSS, and the latency from the agent taking a sample (its ``ts``) to
the model holding it; the node side's CPU, spawned ``once`` processes included. Everything runs
on this one machine, so the nodes' work competes with the console's for the same cores: on a
real fleet each node pays its own share on its own CPU, and latency here is an upper bound.

    python bench/fanin.py                                   # N = 50, 200, 500; exec at N = 4
    python bench/fanin.py --nodes 50 --exec-nodes 4 --seconds 10 --warmup 5   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import psutil
from benchlib import (
    exec_server,
    machine_facts,
    once_argv,
    publish,
    run_header,
    stop_node_hosts,
)

from agents.protocol import Event, Inventory, Sample
from console.demo import demo_fleet
from console.model.fleet import FleetState
from console.model.inventory import NodeEntry, load_inventory
from console.sources.ssh.link import LinkOptions, NodeLink

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fanin.json"
GPUS = 8
INTERVAL = 1.0
CONNECTING_AT_ONCE = 32  # the console's bound on SSH handshakes in flight
TARGET_CONSOLE_CPU = 50.0  # % of one core at 500 nodes
TARGET_P99_S = 1.0
TARGET_RATIO = 5.0
MB = 1_000_000


# --------------------------------------------------------------------------------------------
# The node side: a process that plays N nodes until told to stop


async def _run_once(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """What the node's sshd would do for ``ssh node gpufleet-agent once --json``: run it, send
    its output, exit with its status. The client's command line is not parsed, only this argv."""
    child = await asyncio.create_subprocess_exec(
        *once_argv("sim", "--gpus", str(GPUS)), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = await child.communicate()
    process.stdout.write(out)
    process.exit(child.returncode or 0)


async def _serve_polls(root: Path, nodes: int, first: int) -> None:
    """The exec baseline's nodes: one asyncssh server, an inventory naming N nodes on it."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = root / "client_key"
    key_path.write_bytes(client_key.export_private_key())
    key_path.chmod(0o600)
    known = root / "known_hosts"
    server, port = await exec_server(client_key, _run_once, known)
    inventory = root / "fleet.toml"
    inventory.write_text(
        f'[defaults]\nhostname = "127.0.0.1"\nport = {port}\nuser = "bench"\n'
        f'identity = "{key_path}"\nknown_hosts = "{known}"\n\n'
        f'[[group]]\nname = "poll"\nnodes = "poll[{first}-{first + nodes - 1}]"\n'
    )
    _ready(inventory)
    await _until_stdin_closes()
    server.close()


async def _serve_agents(nodes: int, first: int) -> None:
    async with demo_fleet(nodes, GPUS, first) as fleet:
        _ready(fleet.inventory)
        await _until_stdin_closes()


def _ready(inventory: Path) -> None:
    print(json.dumps({"inventory": str(inventory)}), flush=True)


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


def nodes_main(mode: str, count: int, first: int) -> None:
    if mode == "stream":
        asyncio.run(_serve_agents(count, first))
        return
    with tempfile.TemporaryDirectory(prefix="gf-fanin-") as tmp:
        asyncio.run(_serve_polls(Path(tmp), count, first))


# --------------------------------------------------------------------------------------------
# The console side: connect, wait for every node, then measure a window


class TimedFleet(FleetState):
    """The console's model, noting how old each live sample is when the model takes it."""

    def __init__(self, entries: Sequence[NodeEntry]) -> None:
        super().__init__(entries)
        self.latencies: list[float] = []
        self.recording = False

    def apply(self, node: str, frame: Inventory | Sample | Event, now: float) -> None:
        super().apply(node, frame, now)
        if self.recording and isinstance(frame, Sample) and not frame.replay:
            self.latencies.append(time.time() - frame.ts)


class _Once(msgspec.Struct):
    inventory: Inventory
    sample: Sample


async def _poll(entry: NodeEntry, fleet: TimedFleet, gate: asyncio.Semaphore) -> None:
    """exec-per-poll: each second, one exec channel running ``once --json`` on the node."""
    assert entry.identity
    assert entry.known_hosts
    async with gate:
        conn = await asyncssh.connect(
            entry.hostname or entry.name,
            port=entry.port or 22,
            username=entry.user,
            client_keys=[entry.identity],
            known_hosts=entry.known_hosts,
            config=[],
        )
    decoder = msgspec.json.Decoder(_Once)
    loop = asyncio.get_running_loop()
    command = shlex.join(["gpufleet-agent", "once", "--json"])
    async with conn:
        due = loop.time()
        while True:
            result = await conn.run(command, encoding=None, check=True)
            assert isinstance(result.stdout, bytes)
            once = decoder.decode(result.stdout)
            now = loop.time()
            if fleet.nodes[entry.name].inventory is None:
                fleet.apply(entry.name, once.inventory, now)
            fleet.apply(entry.name, once.sample, now)
            due = max(due + INTERVAL, now)  # late polls are not made up: gpustat-web neither
            await asyncio.sleep(due - loop.time())


def _cpu(proc: psutil.Process, children: bool) -> float:
    t = proc.cpu_times()
    total: float = t.user + t.system
    return total + (t.children_user + t.children_system if children else 0.0)


async def _console(
    mode: str, inventories: list[Path], node_pids: list[int], warmup: float, seconds: float
) -> dict[str, Any]:
    entries = [e for path in inventories for e in load_inventory(path).nodes]
    fleet = TimedFleet(entries)
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    if mode == "stream":
        opts = LinkOptions(ssh_config=[])
        tasks = [asyncio.create_task(NodeLink(e, fleet, opts, gate).run()) for e in entries]
    else:
        tasks = [asyncio.create_task(_poll(e, fleet, gate)) for e in entries]

    async def screen() -> None:  # what the TUI does: age the model, flush at a steady rate
        while True:
            fleet.tick(loop.time())
            fleet.flush()
            await asyncio.sleep(0.25)

    tasks.append(asyncio.create_task(screen()))
    try:
        deadline = started + 120 + len(entries) * 0.2
        while not all(v.sample_at is not None for v in fleet.nodes.values()):
            failed = [t for t in tasks if t.done()]
            if failed:
                failed[0].result()  # its exception, as it is
            if loop.time() > deadline:
                missing = [v.name for v in fleet.nodes.values() if v.sample_at is None]
                raise RuntimeError(f"{len(missing)} nodes never answered, e.g. {missing[:3]}")
            await asyncio.sleep(0.1)
        all_live_s = loop.time() - started
        await asyncio.sleep(warmup)
        me, hosts = psutil.Process(), [psutil.Process(pid) for pid in node_pids]
        cpu0, t0 = _cpu(me, False), time.monotonic()
        ncpu0 = sum(_cpu(h, True) for h in hosts)
        fleet.recording = True
        await asyncio.sleep(seconds)
        fleet.recording = False
        cpu1, t1 = _cpu(me, False), time.monotonic()
        ncpu1 = sum(_cpu(h, True) for h in hosts)
        live = sum(v.link == "live" for v in fleet.nodes.values())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = t1 - t0
    lat = sorted(fleet.latencies)
    samples = len(lat)
    console_cpu, nodes_cpu = cpu1 - cpu0, ncpu1 - ncpu0
    return {
        "mode": mode,
        "nodes": len(entries),
        "gpus": len(entries) * GPUS,
        "connect_all_s": all_live_s,
        "window_s": wall,
        "samples": samples,
        "samples_expected": len(entries) * wall / INTERVAL,
        "live_at_end": live,
        "console_cpu_s": console_cpu,
        "console_cpu_percent": 100 * console_cpu / wall,
        "console_rss_mb": psutil.Process().memory_info().rss / MB,
        "nodes_cpu_s": nodes_cpu,
        "nodes_cpu_percent": 100 * nodes_cpu / wall,
        "cpu_ms_per_sample_console": 1000 * console_cpu / samples if samples else None,
        "cpu_ms_per_sample_total": 1000 * (console_cpu + nodes_cpu) / samples if samples else None,
        "latency_p50_s": _quantile(lat, 0.50),
        "latency_p99_s": _quantile(lat, 0.99),
        "latency_max_s": lat[-1] if lat else None,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def console_main(mode: str, inventories: str, node_pids: str, warmup: str, seconds: str) -> None:
    paths = [Path(p) for p in inventories.split(",")]
    pids = [int(p) for p in node_pids.split(",")]
    result = asyncio.run(_console(mode, paths, pids, float(warmup), float(seconds)))
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# The run: one trial per (mode, N), each with fresh node and console processes


def trial(mode: str, nodes: int, hosts: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Fresh node hosts (``hosts`` processes sharing the N nodes, so that simulating them is
    not held to one core by the GIL) and a fresh console process."""
    me = [sys.executable, str(Path(__file__).resolve())]
    hosts = max(1, min(hosts, nodes))
    print(f"{mode} x {nodes} nodes ...", file=sys.stderr, flush=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        first = 1
        for k in range(hosts):
            count = nodes // hosts + (k < nodes % hosts)
            procs.append(
                subprocess.Popen(
                    [*me, "_nodes", mode, str(count), str(first)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            first += count
        inventories = []
        for host in procs:
            assert host.stdout is not None
            line = host.stdout.readline()
            if not line:
                raise RuntimeError(f"a {mode} node host exited with {host.wait()}")
            inventories.append(json.loads(line)["inventory"])
        pids = ",".join(str(h.pid) for h in procs)
        console = subprocess.run(
            [*me, "_console", mode, ",".join(inventories), pids, str(warmup), str(seconds)],
            capture_output=True,
            text=True,
            check=False,
        )
        if console.returncode != 0:
            raise RuntimeError(f"console ({mode} x {nodes}): {console.stderr.strip()[-2000:]}")
        result: dict[str, Any] = json.loads(console.stdout.strip().splitlines()[-1])
        result["node_hosts"] = hosts
        return result
    finally:
        stop_node_hosts(procs)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def report(results: dict[str, Any]) -> str:
    rows = [
        "| mode | nodes | GPUs | samples/s | console CPU % of a core | console RSS MB | "
        "nodes CPU % | CPU ms per node-sample (console + nodes) | latency p50 / p99 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["trials"]:
        rows.append(
            f"| {r['mode']} | {r['nodes']} | {r['gpus']} | {r['samples'] / r['window_s']:.0f} "
            f"of {r['nodes'] / INTERVAL:.0f} | {r['console_cpu_percent']:.1f} | "
            f"{r['console_rss_mb']:.0f} | {r['nodes_cpu_percent']:.0f} | "
            f"{_fmt(r['cpu_ms_per_sample_total'], '.2f')} | "
            f"{_fmt(r['latency_p50_s'], '.3f')} / {_fmt(r['latency_p99_s'], '.3f')} |"
        )
    s = results["summary"]
    rows += [
        "",
        f"exec-per-poll costs {_fmt(s['exec_over_stream_cpu_per_sample'], '.1f')}x the CPU per "
        f"node-sample of streaming (console + nodes, both at {s['ratio_nodes']} nodes; "
        f"target >= {TARGET_RATIO:g}x).",
    ]
    big = s.get("largest_stream")
    if big:
        rows.append(
            f"streaming {big['nodes']} nodes: console {big['console_cpu_percent']:.1f} % of one "
            f"core (target < {TARGET_CONSOLE_CPU:g} %), p99 {_fmt(big['latency_p99_s'], '.3f')} s "
            f"(target < {TARGET_P99_S:g} s)."
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", default="50,200,500", help="streamed fleet sizes (comma list)")
    p.add_argument(
        "--exec-nodes",
        type=int,
        default=4,
        help="fleet size for exec-per-poll, and for the stream run it is compared with "
        "(each poll spawns a Python process: a 2-core machine keeps up with a few nodes)",
    )
    p.add_argument(
        "--node-hosts",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="processes that share the simulated nodes of a stream trial",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per trial")
    p.add_argument("--warmup", type=float, default=10.0, help="after every node answered")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    except ValueError:
        print(
            f"fanin: error: --nodes {args.nodes!r}: expected numbers like 50,200", file=sys.stderr
        )
        return 2
    if not sizes or min(sizes) < 1 or args.exec_nodes < 1:
        print("fanin: error: fleet sizes must be at least 1", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    trials = []
    try:
        exec_r = trial("exec", args.exec_nodes, 1, args.warmup, args.seconds)
        same = trial("stream", args.exec_nodes, 1, args.warmup, args.seconds)
        trials += [exec_r, same]
        for n in sizes:
            if n != args.exec_nodes:
                trials.append(trial("stream", n, args.node_hosts, args.warmup, args.seconds))
    except RuntimeError as exc:
        print(f"fanin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    streams = [t for t in trials if t["mode"] == "stream"]
    largest = max(streams, key=lambda t: t["nodes"])
    e, s = exec_r["cpu_ms_per_sample_total"], same["cpu_ms_per_sample_total"]
    ratio = e / s if e and s else None
    results: dict[str, Any] = {
        **run_header("fanin", started),
        "parameters": {
            "nodes": sizes,
            "exec_nodes": args.exec_nodes,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "gpus_per_node": GPUS,
            "interval_s": INTERVAL,
            "connecting_at_once": CONNECTING_AT_ONCE,
            "node_hosts": args.node_hosts,
        },
        "machine": machine_facts(),
        "trials": trials,
        "summary": {
            "ratio_nodes": args.exec_nodes,
            "exec_over_stream_cpu_per_sample": ratio,
            "largest_stream": largest,
            "targets": {
                "console_cpu_percent": TARGET_CONSOLE_CPU,
                "p99_s": TARGET_P99_S,
                "exec_over_stream": TARGET_RATIO,
                "cpu_met": largest["console_cpu_percent"] < TARGET_CONSOLE_CPU,
                "p99_met": (largest["latency_p99_s"] or math.inf) < TARGET_P99_S,
                "ratio_met": ratio is not None and ratio >= TARGET_RATIO,
            },
        },
    }
    publish(results, report(results), args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_nodes":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        nodes_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_console":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console_main(*sys.argv[2:7])
    else:
        sys.exit(main())
