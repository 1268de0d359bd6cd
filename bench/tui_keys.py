"""The screen under load: 1,000 simulated nodes streaming at 1 Hz, keys pressed, latency from
key press to screen updated, and the CPU the screen's process uses.

The frames come from a separate feeder process (the agent's own sampler on simulated H100s, a
pool of readings per node template, renumbered and re-timed each second), one line per frame
prefixed with the node's name, into this process, which decodes each frame and applies it to
the ``FleetState`` exactly as a link does. SSH is left out on purpose: its cost is measured by
``fanin.py``; this measures the model and the screen.

The app is the real ``FleetApp`` on Textual's headless driver (everything is computed, the
bytes are not written to a terminal). A key goes in the way a terminal driver delivers it
(``driver.send_message``), and "screen updated" is the first frame the compositor hands to
the display after it, in which the key's effect is visible (the cursor moved, the sort
changed, the view opened). The steady 2 Hz refresh keeps running throughout.

    python bench/tui_keys.py               # ~3 min: 1000 nodes, 200 presses of each key
    python bench/tui_keys.py --nodes 200 --keys 20 --warmup 3 --idle 5   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from benchlib import machine_facts, publish, run_header
from rich.console import RenderableType
from textual import events
from textual.screen import Screen

from agents.gpu.sim import SimBackend
from agents.host import HostSampler, host_info
from agents.protocol import NodeState, decode, encode
from agents.sampler import Sampler, inventory_frame
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.tui.app import FleetApp
from console.tui.fleet_view import FleetScreen

HERE = str(Path(__file__).resolve())
DEFAULT_OUT = Path(HERE).parent / "results" / "tui_keys.json"
GPUS = 8
TEMPLATES = 16  # distinct simulated nodes the fleet's readings are drawn from
TICKS = 30  # readings per template, cycled
TARGET_P99_MS = 100.0
SIZE = (200, 60)
KEYS = {
    "down": "cursor down one row",
    "pagedown": "cursor down one page",
    "s": "sort by the next column (re-sorts every row)",
    "enter": "open the node view (then escape back, not timed)",
}


def names(count: int) -> list[str]:
    return [f"node{i:04d}" for i in range(1, count + 1)]


def inventory_text(count: int) -> str:
    """Four pools of equal share, as a fleet of this size would have."""
    groups = []
    quarter = max(1, count // 4)
    for k, pool in enumerate(("train", "infer", "research", "spare")):
        first, last = k * quarter + 1, count if k == 3 else (k + 1) * quarter
        if first <= last:
            groups.append(f'[[group]]\nname = "{pool}"\npool = "{pool}"\n')
            groups.append(f'nodes = "node[{first:04d}-{last:04d}]"\n')
    return "".join(groups)


# --------------------------------------------------------------------------------------------
# The feeder: a process writing "name<TAB>frame" lines, every node once a second


def feed(count: int) -> None:
    host = HostSampler()
    host.prime()
    info = host_info()
    pools = []
    inventories = []
    for t in range(TEMPLATES):
        backend = SimBackend(GPUS, seed=t, node=f"t{t}")
        sampler = Sampler(backend, host, history_len=TICKS)
        pools.append([sampler.tick()[0] for _ in range(TICKS)])
        inventories.append(backend.inventory())
    out = sys.stdout.buffer
    for i, name in enumerate(names(count)):
        inv = inventory_frame(name, inventories[i % TEMPLATES], info, NodeState())
        out.write(name.encode() + b"\t" + encode(inv))
    seq = 0
    tick = 0
    slices = 50  # nodes tick at their own phase, as real agents do: spread over the second
    everyone = names(count)
    start = time.monotonic()
    while True:
        for k in range(slices):
            now = time.time()
            for i in range(k, count, slices):
                seq += 1
                sample = pools[i % TEMPLATES][(tick + i) % TICKS]
                frame = msgspec.structs.replace(sample, seq=seq, ts=now)
                out.write(everyone[i].encode() + b"\t" + encode(frame))
            out.flush()
            time.sleep(max(0.0, start + tick + (k + 1) / slices - time.monotonic()))
        tick += 1


# --------------------------------------------------------------------------------------------
# The screen, timed


class TimedApp(FleetApp):
    """The real app, noting when each frame reaches the display and what it showed."""

    def __init__(self, fleet: FleetState) -> None:
        super().__init__(fleet, requester=None, source="bench")
        self.frames: list[tuple[float, tuple[Any, ...]]] = []

    def signature(self) -> tuple[Any, ...]:
        screen = self.screen
        if isinstance(screen, FleetScreen):
            return ("fleet", screen.table.cursor_row, screen.sort_column)
        return (type(screen).__name__,)

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        if renderable is not None:
            self.frames.append((time.perf_counter(), self.signature()))
        super()._display(screen, renderable)


async def _ingest(count: int, fleet: FleetState) -> None:
    feeder = await asyncio.create_subprocess_exec(
        sys.executable, HERE, "_feed", str(count), stdout=asyncio.subprocess.PIPE, limit=1 << 20
    )
    assert feeder.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        while line := await feeder.stdout.readline():
            name, _, data = line.partition(b"\t")
            frame = decode(data)
            fleet.apply(name.decode(), frame, loop.time())  # type: ignore[arg-type]
    finally:
        if feeder.returncode is None:
            feeder.kill()
            await feeder.wait()


def _send(app: TimedApp, key: str) -> None:
    """As a terminal driver delivers a key read from the terminal."""
    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(app)
    assert app._driver is not None
    app._driver.send_message(event)


async def _updated(app: TimedApp, after: float, before: tuple[Any, ...], limit: float) -> float:
    """Seconds from ``after`` to the first displayed frame whose signature is not ``before``."""
    deadline = time.perf_counter() + limit
    seen = 0
    while time.perf_counter() < deadline:
        frames = app.frames
        for t, sig in frames[seen:]:
            if t >= after and sig != before:
                return t - after
        seen = len(frames)
        await asyncio.sleep(0.001)
    raise RuntimeError(f"the screen did not change within {limit:g} s (from {before})")


async def _room_below(app: TimedApp) -> None:
    """Back to the top (untimed) when the cursor is within a page of the end, so that every
    timed cursor key has somewhere to go."""
    screen = app.screen
    if (
        isinstance(screen, FleetScreen)
        and screen.table.cursor_row >= screen.table.row_count - SIZE[1]
    ):
        before = app.signature()
        _send(app, "ctrl+home")
        if before != ("fleet", 0, before[2]):
            await _updated(app, time.perf_counter(), before, 5.0)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def measure(count: int, keys: int, warmup: float, idle: float) -> dict[str, Any]:
    fleet = FleetState(parse_inventory(inventory_text(count), "bench").nodes)
    app = TimedApp(fleet)
    ingest = asyncio.create_task(_ingest(count, fleet))
    runner = asyncio.create_task(app.run_async(headless=True, size=SIZE))
    rng = random.Random(7)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while not all(v.link == "live" for v in fleet.nodes.values()):
            if ingest.done():
                ingest.result()
                raise RuntimeError("the feeder stopped")
            if loop.time() > deadline:
                raise RuntimeError("not every node went live in 120 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)
        if runner.done():
            runner.result()
            raise RuntimeError("the app stopped")
        # The steady state first: frames in, the screen redrawn at 2 Hz, nobody typing.
        idle0, idle_wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle)
        idle_cpu = time.process_time() - idle0
        idle_wall = time.perf_counter() - idle_wall0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        frames0 = len(app.frames)
        latencies: dict[str, list[float]] = {k: [] for k in KEYS}
        for _ in range(keys):
            for key in KEYS:
                await asyncio.sleep(rng.uniform(0.05, 0.25))  # between an operator's keys
                await _room_below(app)
                before = app.signature()
                t0 = time.perf_counter()
                _send(app, key)
                latencies[key].append(await _updated(app, t0, before, 5.0))
                if key == "enter":
                    _send(app, "escape")
                    await _updated(app, time.perf_counter(), app.signature(), 5.0)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        samples_applied = sum(len(v.history) for v in fleet.nodes.values())
    finally:
        app.exit()
        await asyncio.gather(runner, return_exceptions=True)
        ingest.cancel()
        await asyncio.gather(ingest, return_exceptions=True)
    wall = wall1 - wall0
    return {
        "nodes": count,
        "gpus": count * GPUS,
        "idle_window_s": idle_wall,
        "idle_cpu_percent": 100 * idle_cpu / idle_wall,
        "keys_window_s": wall,
        "keys_per_s": keys * len(KEYS) / wall,
        "keys_cpu_percent": 100 * (cpu1 - cpu0) / wall,
        "frames_displayed": len(app.frames) - frames0,
        "history_samples_held": samples_applied,
        "keys": {
            key: {
                "what": KEYS[key],
                "count": len(v),
                "p50_ms": 1000 * _quantile(v, 0.50),
                "p99_ms": 1000 * _quantile(v, 0.99),
                "max_ms": 1000 * max(v),
            }
            for key, v in latencies.items()
        },
    }


def report(results: dict[str, Any]) -> str:
    r = results["result"]
    rows = [
        f"{r['nodes']} nodes ({r['gpus']} GPUs) streaming at 1 Hz; screen {SIZE[0]}x{SIZE[1]}.",
        f"The screen's process: {r['idle_cpu_percent']:.1f} % of one core with nobody typing "
        f"({r['idle_window_s']:.0f} s: frames decoded and applied, redrawn at 2 Hz); "
        f"{r['keys_cpu_percent']:.1f} % while keys came at {r['keys_per_s']:.1f} a second.",
        "",
        "| key | what | presses | p50 ms | p99 ms | max ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, k in r["keys"].items():
        rows.append(
            f"| `{key}` | {k['what']} | {k['count']} | {k['p50_ms']:.1f} | {k['p99_ms']:.1f} | "
            f"{k['max_ms']:.1f} |"
        )
    worst = max(k["p99_ms"] for k in r["keys"].values())
    rows += ["", f"worst p99 {worst:.1f} ms (target < {TARGET_P99_MS:g} ms)"]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--keys", type=int, default=200, help="presses of each kind of key")
    p.add_argument("--warmup", type=float, default=10.0, help="after every node is live")
    p.add_argument("--idle", type=float, default=20.0, help="seconds measured with no keys")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.nodes < 1 or args.keys < 1:
        print("tui_keys: error: --nodes and --keys must be at least 1", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    try:
        result = asyncio.run(measure(args.nodes, args.keys, args.warmup, args.idle))
    except RuntimeError as exc:
        print(f"tui_keys: error: {exc}", file=sys.stderr)
        return 1
    worst = max(k["p99_ms"] for k in result["keys"].values())
    results: dict[str, Any] = {
        **run_header("tui_keys", started),
        "parameters": {
            "idle": args.idle,
            "nodes": args.nodes,
            "keys": args.keys,
            "warmup": args.warmup,
            "size": SIZE,
            "gpus_per_node": GPUS,
        },
        "machine": machine_facts(),
        "result": result,
        "targets": {"p99_ms": TARGET_P99_MS, "p99_met": worst < TARGET_P99_MS},
    }
    publish(results, report(results), args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_feed":
        with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
            feed(int(sys.argv[2]))
    else:
        sys.exit(main())
