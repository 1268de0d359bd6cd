"""Soak (issue 6): the demo fleet under random faults, restarts and actions for a set time.

N simulated nodes (8 GPUs each, 1 Hz: the real agent daemon on simulated H100s behind an
embedded asyncssh server, as ``gpufleet demo`` runs them, in separate node-host processes)
and, in this process, the console's own data path: ``FleetLinks`` over SSH feeding a
``FleetState``, aged and flushed twice a second and its rows recomputed as the fleet screen
does (``FleetApp.refresh_fleet``), without drawing. For ``--minutes`` it keeps doing, at
random (seeded) moments:

- GPU faults through the agent's request path: ``sim_inject`` (xid79, lost, clear, overheat,
  ecc, busy, idle) sent by the console's links, as any operator request is;
- actions through the console's real code path, ``console.ops.actions.run_action`` over the links,
  as the screen sends them once its dialog is confirmed: drain (with a timeout), resume,
  reassign between the two pools, restart gpuN (a simulated node allows GPU resets only; now
  and then ``restart agent``, which it must refuse), a few nodes at a time;
- agent restarts: the node host stops one agent (as ``systemctl stop`` does: the agent's stop
  path, its socket closed and removed, every client told "agent stopping") and starts a new
  one on the same state directory (audit log and ops state kept) 1 to ``--max-down`` seconds
  later. That is what a crash with ``Restart=on-failure`` or a ``systemctl restart`` looks
  like from the console, while the node's sshd stays up. Killing a whole node-host process
  would take its SSH server down with it and bring it back on another port with another host
  key: no real node does that, so it is not how agents are restarted here;
- hung nodes (``--stall-every``): one node-host process is stopped (SIGSTOP) for 3 to 12 s and
  continued, freezing its SSH server and agents at once, as a partition or a stuck machine
  looks to the console (its keepalive gives up on a link after about 5 s).

Then it stops by itself: faults and actions end, every agent is running again, every node
must be live again within ``--settle`` seconds, every agent's audit log is read (over the
links with the ``audit`` request, and in full from the node hosts' disks), and it reports:

- actions (and fault injections) issued, answered ok, refused (by the agent's code), not sent
  (the node was down: nothing happened) and lost in flight (the link dropped or the wait ran
  out after sending: it may have happened). Every answered request must be in its node's audit
  log exactly once, with the same request id and result; a request not sent must not be there;
  a lost one may be (the table says how many were); an entry no request explains is an error.
- samples: by the agents' sample numbers (consecutive per agent run; events have their own),
  the live stream within each session (a sample missing between two live ones is one the
  agent dropped or the link lost), and every sample of every agent run, live or replayed on a
  reconnect, against the numbers its node host saw in the agent's ring (missing only where
  the console was not connected when the agent stopped: the deliberate down windows); and by
  time, live samples against the time each node's link was live (outside the deliberate down
  windows) at 1 Hz, which is only as exact as one sample a session.
- reconnections per node (``NodeLink.sessions``) against the restarts and stalls that caused
  them, and how long a node took to be live again after its agent was back.
- RSS of the console and of each node host every ``--rss-every`` seconds: first, last, max
  and the slope (MB per hour) after a warm-up, flagged when it grows (the console's less
  what its model's bounded event and alert stores took on; node hosts only once their agents'
  buffers have turned over, see below); beside it Python's allocated blocks, and at the end
  the console's objects after a full collection, with the garbage only ``gc.freeze()`` kept.
- errors: every log record at ERROR from the console's and the node hosts' loggers (asyncio's
  unhandled task exceptions included); those of a node host while it was frozen on purpose
  are counted apart.

Exit 1 when an invariant failed (a request answered but not audited once, an audit entry no
request explains, a node not live again, a sample missing that no deliberate down window
explains, a reconnection nothing caused, an error outside a stall, RSS growing after the
warm-up on a run long enough to tell); the JSON is written either way.

Each agent's buffers (the replay and the ring of recent samples) are first filled as if it had
been up ``--history`` seconds (default 900: full, as on any node up 15 minutes), so that
their designed growth over the first 15 minutes does not read as a leak; a restarted agent
starts empty, as a real one does. Even so a node host grows while its agents' buffers turn
over once (120 kB/s for 25 agents streaming to a console, for 900 s, then flat: samples made
at start in one burst sit denser in memory than samples made a second apart among the
traffic), so node hosts are judged from 900 s on (``--minutes 20`` or more). Everything runs
on this one machine: agents, SSH servers and the console share its cores.

    python bench/soak.py                                # 100 nodes, 10 minutes
    python bench/soak.py --nodes 20 --minutes 1         # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil
from benchlib import machine_facts, publish, run_header, spawn_node_hosts, stop_node_hosts

from agents.config import AgentSection
from agents.ops.store import AuditLog
from agents.protocol import (
    MAX_AUDIT_READ,
    REQUEST_SPECS,
    AuditEntry,
    Event,
    Inventory,
    Response,
    Sample,
)
from agents.sampler import Sampler
from console.demo import DemoFleet, demo_fleet
from console.model.fleet import FleetState, LinkState
from console.model.heap import HeapFreezer
from console.model.inventory import NodeEntry, load_inventory
from console.ops.actions import Verb, pools, run_action
from console.ops.operate import build
from console.present.rows import RowCache, fleet_totals
from console.sources.delivery import NotDelivered
from console.sources.ssh.fleetlinks import FleetLinks
from console.sources.ssh.link import LinkOptions
from console.tui.app import REFRESH_S

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "soak.json"
GPUS: Final = 8
INTERVAL: Final = 1.0  # the agents' sampling interval (the demo's default)
MB: Final = 1_000_000
#: Faults injected through ``sim_inject``, with their weights.
FAULTS: Final = {
    "xid79": 1,
    "lost": 1,
    "clear": 3,
    "overheat": 2,
    "ecc": 1,
    "busy": 2,
    "idle": 2,
}
#: Verbs and their weights; a restart is ``gpuN``, or now and then ``agent`` (refused).
VERBS: Final[dict[Verb, int]] = {"drain": 3, "resume": 3, "reassign": 2, "restart": 2}
DRAIN_TIMEOUTS: Final = (5.0, 10.0, 30.0, 60.0)
RESTART_AGENT_SHARE: Final = 0.1
STALL_S: Final = (3.0, 12.0)
#: How long a request may wait for its answer (run_action's default wait is the links' 30 s).
FAULT_WAIT_S: Final = 10.0
#: A session that ends within this long after a stall ends was dropped by it (keepalive:
#: 1 s x 4).
STALL_DROP_S: Final = 6.0
#: Errors a node host logs within this long after it is continued count as the stall's.
STALL_ERROR_GRACE_S: Final = 10.0
#: The agents' buffers turn over in this long (the agent's default history): node hosts are
#: judged only after it.
AGENT_BUFFER_S: Final = AgentSection().history
#: RSS verdict: a run shorter than this after its warm-up is too short to judge.
RSS_MIN_JUDGED_S: Final = 240.0
#: ... and growth is flagged past both of these, fitted over the judged window.
RSS_GROWTH_MB: Final = 5.0
RSS_GROWTH_SHARE: Final = 0.02
ERRORS_KEPT: Final = 30


# --------------------------------------------------------------------------------------------
# Errors, as both sides capture them


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, counted, the first few kept: the soak's "any error"."""

    def __init__(self, echo: str) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.kept: list[tuple[float, str, str]] = []
        self._echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        if len(self.kept) < ERRORS_KEPT:
            self.kept.append((record.created, record.name, message[:300]))
        print(f"{self._echo}: {record.levelname} {record.name}: {message[:300]}", file=sys.stderr)


def capture_errors(echo: str) -> ErrorLog:
    """Errors to the soak's count (and stderr); nothing below ERROR is shown: an agent logs
    every state change and event as a warning, for the journal."""
    handler = ErrorLog(echo)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return handler


# --------------------------------------------------------------------------------------------
# The node side: a process that plays N nodes and obeys one JSON command per stdin line


def _age(sampler: Sampler, seconds: float, interval: float) -> None:
    """Fill the agent's buffers (the ring of recent samples and the replay sent to every
    console that connects) as if it had been up ``seconds``, by running its own sampler that
    many more times now: genuine samples, numbered on from the agent's own, only dated closer
    together. Copies of one sample, or samples without the slow-cadence values, would not do:
    the process would grow for 15 minutes while real samples replaced them (120 kB/s for 25
    agents, then flat, in a 20-minute run), which reads as a leak."""
    fill = min(sampler.replay.maxlen or 0, round(seconds / interval)) - len(sampler.replay)
    sampler.slow_tick()  # the slow-cadence values too, or the samples come out smaller
    for _ in range(max(0, fill)):
        sampler.record(sampler.read())  # its events go to the retold ones, as they would


class SeqBits:
    """A set of sequence numbers as a bit each: an agent run's samples, a few hundred bytes
    for ten minutes, so that counting them does not show in the RSS being measured."""

    __slots__ = ("bits", "count", "high", "low")

    def __init__(self) -> None:
        self.bits = bytearray()
        self.count = 0
        self.low = math.inf
        self.high = 0

    def mark(self, seq: int) -> None:
        byte, bit = divmod(seq, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(byte + 64 - len(self.bits)))
        if not self.bits[byte] >> bit & 1:
            self.bits[byte] |= 1 << bit
            self.count += 1
            self.low, self.high = min(self.low, seq), max(self.high, seq)

    def __contains__(self, seq: int) -> bool:
        byte, bit = divmod(seq, 8)
        return 0 <= byte < len(self.bits) and bool(self.bits[byte] >> bit & 1)


@dataclass
class Run:
    """One run of one agent, as its node host saw it (wall clock), and the numbers of the
    samples it made, noted from its ring at every ``heap`` command (each --rss-every
    seconds, far more often than the ring turns over), at its stop and at the report."""

    started: float
    stopped: float | None = None
    samples: SeqBits = field(default_factory=SeqBits)

    def summary(self) -> list[Any]:
        """[started, stopped, [first, last, the numbers between never noted in its ring]]
        (none while the notes come more often than the ring turns over)."""
        s = self.samples
        if not s.count:
            return [self.started, self.stopped, [0, -1, []]]
        first, last = int(s.low), s.high
        holes = [k for k in range(first, last) if k not in s]
        return [self.started, self.stopped, [first, last, holes]]


class NodeHostServer:
    """The commands a node host obeys, one JSON object per line on stdin, one reply each."""

    def __init__(self, fleet: DemoFleet, errors: ErrorLog) -> None:
        self.fleet = fleet
        self.errors = errors
        now = time.time()
        self.runs: dict[str, list[Run]] = {n: [Run(now)] for n in fleet.names}
        self.seeds = {n: i for i, n in enumerate(fleet.names)}  # as start_fleet seeded them
        self.down: set[str] = set()

    def note(self, name: str) -> None:
        """The samples in the agent's ring, into its current run's numbers."""
        mark = self.runs[name][-1].samples.mark
        for seq in self.fleet.agents[name].sampler.buffered_seqs():
            mark(seq)

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op, name = command["op"], command.get("node", "")
        if op == "stop":
            await self.fleet.stop_agent(name)
            self.down.add(name)
            self.note(name)
            self.runs[name][-1].stopped = time.time()
            return {"node": name}
        if op == "start":
            self.runs[name].append(Run(time.time()))
            await self.fleet.start_agent(name, seed=self.seeds[name])  # the same GPUs again
            self.down.discard(name)
            return {"node": name}
        if op == "report":
            runs = {}
            for node, mine in self.runs.items():
                if node not in self.down:
                    self.note(node)  # still running: so far
                runs[node] = [r.summary() for r in mine]
            return {"runs": runs, "errors": self.errors.kept, "error_count": self.errors.count}
        if op == "heap":
            blocks = sys.getallocatedblocks()
            running = [n for n in self.fleet.names if n not in self.down]
            for node in running:
                self.note(node)
            buffered = sum(len(self.fleet.agents[n].sampler.replay) for n in running)
            return {"blocks": blocks, "buffered": buffered}
        if op == "audit":
            since = float(command["since"])
            out = {}
            for node, agent in self.fleet.agents.items():
                entries = await asyncio.to_thread(_read_audit, agent.audit, since)
                out[node] = [
                    {"op": e.op, "result": e.result, "id": e.request_id, "args": e.args}
                    for e in entries
                ]
            return {"audit": out}
        raise ValueError(f"unknown command {op!r}")


def _read_audit(log: AuditLog, since: float) -> list[AuditEntry]:
    return list(log.entries(since))


async def _serve(count: int, first: int, history: float) -> None:
    errors = capture_errors(f"node host {os.getpid()}")
    async with demo_fleet(count, GPUS, first) as fleet:
        for agent in fleet.agents.values():
            _age(agent.sampler, history, agent.config.agent.interval)
        host = NodeHostServer(fleet, errors)
        print(json.dumps({"inventory": str(fleet.inventory)}), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):  # until stdin closes
            try:
                reply = await host.handle(json.loads(line))
            except Exception as exc:  # said to the parent, which fails the run with it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


def nodes_main(count: int, first: int, history: float) -> None:
    asyncio.run(_serve(count, first, history))


# --------------------------------------------------------------------------------------------
# The console side: the node hosts as the soak drives them


class NodeHost:
    """One node-host process: its commands (one at a time) and its freezing."""

    def __init__(self, proc: subprocess.Popen[str], names: list[str]) -> None:
        self.proc = proc
        self.names = names
        self.lock = asyncio.Lock()
        self.stalled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node host {self.pid} exited with {self.proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"node host {self.pid}: {command['op']}: {reply['error']}")
        return reply

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:
            return await asyncio.to_thread(self._call, command)

    async def stall(self, seconds: float) -> tuple[float, float, float]:
        """Freeze the whole process for ``seconds``; (monotonic from, to; wall from)."""
        async with self.lock:  # not in the middle of a command
            wall, began = time.time(), time.monotonic()
            os.kill(self.pid, signal.SIGSTOP)
            self.stalled = True
            try:
                await asyncio.sleep(seconds)
            finally:
                self.cont()
            return began, time.monotonic(), wall

    def cont(self) -> None:
        if self.stalled:
            os.kill(self.pid, signal.SIGCONT)
            self.stalled = False


def start_node_hosts(nodes: int, hosts: int, history: float) -> tuple[list[NodeHost], list[Any]]:
    """The node hosts (benchlib.spawn_node_hosts), their inventories merged into one."""
    out, entries = [], []
    for proc, said in spawn_node_hosts(str(Path(__file__).resolve()), nodes, hosts, history):
        mine = load_inventory(Path(said["inventory"])).nodes
        entries += mine
        out.append(NodeHost(proc, [e.name for e in mine]))
    return out, entries


# --------------------------------------------------------------------------------------------
# The console side: the model, counting what it is fed


class AgentRun(SeqBits):
    """One agent run as the console saw it: the numbers of the samples it got from it, live
    or replayed, and the agent's ts of the newest."""

    __slots__ = ("t_last",)

    def __init__(self) -> None:
        super().__init__()
        self.t_last = -math.inf


@dataclass
class Tally:
    """One node's counts, as the console side sees them."""

    runs: list[AgentRun] = field(default_factory=list)
    sessions: int = 0
    fresh: bool = False  # a session began (hello) and its first sample is still to come
    # the current session's live stream, by seq
    first_live: int | None = None
    last_live: int = 0
    live_n: int = 0
    # totals over closed sessions
    live_expected: int = 0
    live_missing: int = 0
    # by time: live intervals (console monotonic), and live samples in the counted window
    live_since: float | None = None
    intervals: list[tuple[float, float]] = field(default_factory=list)
    live_starts: list[float] = field(default_factory=list)
    live_in_window: int = 0

    def close_session(self) -> None:
        if self.first_live is not None:
            expected = self.last_live - self.first_live + 1  # samples are numbered apart
            self.live_expected += expected
            self.live_missing += expected - self.live_n
        self.first_live, self.last_live, self.live_n = None, 0, 0

    def end_live(self, now: float) -> None:
        if self.live_since is not None:
            self.intervals.append((self.live_since, now))
            self.live_since = None


class SoakFleet(FleetState):
    """The console's model, unchanged, noting per node what it was fed: sessions (each begins
    with the agent's hello), which agent run each belongs to, the live stream by seq, and when
    the link was live. A session's first sample is always replayed (the agent's buffer is
    never empty); it belongs to the run already known if it is no newer than the newest
    sample seen (the same agent replays what was seen) or numbered past it (the same agent,
    its buffer rolled over); otherwise a new agent run began (a restarted agent numbers from
    1, with fresh timestamps)."""

    def __init__(self, entries: Sequence[NodeEntry]) -> None:
        super().__init__(entries)
        self.tally = {e.name: Tally() for e in entries}
        self.window: tuple[float, float] | None = None  # (from, to) the counted window

    @property
    def counting(self) -> bool:
        return self.window is not None and math.isinf(self.window[1])

    def start_window(self, now: float) -> None:
        self.window = (now, math.inf)

    def end_window(self, now: float) -> None:
        assert self.window is not None
        self.window = (self.window[0], now)
        for t in self.tally.values():
            t.end_live(now)
            t.close_session()

    def set_agent(self, node: str, software: str, proto: str, interval: float | None) -> None:
        super().set_agent(node, software, proto, interval)
        t = self.tally[node]
        t.close_session()
        t.sessions += 1
        t.fresh = True

    def set_link(self, node: str, link: LinkState, reason: str, now: float) -> None:
        super().set_link(node, link, reason, now)
        if link != "live":
            self.tally[node].end_live(now)

    def apply(self, node: str, frame: Inventory | Sample | Event, now: float) -> None:
        super().apply(node, frame, now)
        t = self.tally[node]
        if isinstance(frame, Sample):
            run = t.runs[-1] if t.runs else None
            if t.fresh:
                t.fresh = False
                if run is None or not (frame.ts <= run.t_last or frame.seq > run.high):
                    run = AgentRun()
                    t.runs.append(run)
            if run is None:  # a sample with no hello first: not from a real agent
                run = AgentRun()
                t.runs.append(run)
            run.mark(frame.seq)
            run.t_last = max(run.t_last, frame.ts)
            if not frame.replay:
                if t.first_live is None:
                    t.first_live = frame.seq
                    t.live_starts.append(now)
                if t.live_since is None:
                    t.live_since = now  # clipped to the counted window when it is judged
                t.last_live = frame.seq
                t.live_n += 1
                if self.counting:
                    t.live_in_window += 1


@dataclass(slots=True)
class Call:
    """One request the soak sent: an action (through run_action) or a fault injection."""

    node: str
    op: str
    args: dict[str, Any]
    outcome: str  # ok, refused, not_sent (nothing happened), lost (it may have happened)
    code: str | None = None
    request_id: int | None = None


class SoakLinks(FleetLinks):
    """The console's links, unchanged, noting every request that may change a node (what an
    agent audits) and how it ended: the soak's side of the audit check."""

    def __init__(
        self, entries: Sequence[NodeEntry], options: LinkOptions, fleet: FleetState
    ) -> None:
        super().__init__(entries, options, fleet=fleet)
        self.calls: list[Call] = []

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        spec = REQUEST_SPECS.get(op)
        if spec is None or not spec.audited:
            return await super().request(node, op, args, wait)
        try:
            response = await super().request(node, op, args, wait)
        except NotDelivered as exc:
            # "not sent": there was no session to send it on, or the write failed; otherwise
            # the link dropped or the wait ran out after it was sent.
            outcome = "not_sent" if "not sent" in str(exc) else "lost"
            self.calls.append(Call(node, op, args, outcome))
            raise
        outcome = "ok" if response.ok else "refused"
        self.calls.append(Call(node, op, args, outcome, response.code, response.id))
        return response


# --------------------------------------------------------------------------------------------
# The soak


@dataclass
class Restart:
    node: str
    stopped_at: float  # console monotonic: when the stop was asked
    live_at_stop: bool  # the console had a live session with the agent when it stopped
    back_at: float = math.nan  # when the new agent was serving


@dataclass
class Stall:
    host: int
    nodes: list[str]
    began: float
    ended: float
    wall: float
    seconds: float


@dataclass
class Plan:
    minutes: float
    seed: int
    fault_every: float
    action_every: float
    max_batch: int
    restart_every: float
    max_down: float
    stall_every: float
    rss_every: float
    warmup: float
    settle: float


class Soak:
    def __init__(self, hosts: list[NodeHost], entries: list[NodeEntry], plan: Plan) -> None:
        self.hosts = hosts
        self.plan = plan
        self.names = [e.name for e in entries]
        self.host_of = {n: h for h in hosts for n in h.names}
        self.fleet = SoakFleet(entries)
        self.links = SoakLinks(entries, LinkOptions(ssh_config=[]), self.fleet)  # the screen's
        self.rows = RowCache(self.fleet)
        self.freezer = HeapFreezer(self.fleet, self.links.links)  # as FleetApp's
        self.stopping = asyncio.Event()
        self.down: set[str] = set()  # agents stopped right now
        self.restarts: list[Restart] = []
        self.stalls: list[Stall] = []
        self.actions: list[tuple[Verb, int]] = []  # (verb, nodes) per batch
        self.batches: set[asyncio.Task[None]] = set()
        self.pending: set[asyncio.Task[None]] = set()  # restarts and stalls under way
        self.rss: list[list[Any]] = []  # [t, console MB, [host MB ...]]
        self.cpu0: tuple[float, float] = (0.0, 0.0)
        self.t0 = math.nan
        self.wall0 = math.nan
        self.blocks0 = 0
        self.heap: dict[str, int | float] = {}

    def rng(self, what: str) -> random.Random:
        return random.Random(f"{self.plan.seed}/{what}")

    async def _pause(self, rng: random.Random, every: float) -> bool:
        """Sleep about ``every`` seconds (exponentially distributed); False once stopping."""
        try:
            async with asyncio.timeout(rng.expovariate(1.0 / every)):
                await self.stopping.wait()
        except TimeoutError:
            return True
        return False

    # -- the screen's refresh, without drawing ------------------------------------------------

    async def screen(self) -> None:
        """What ``FleetApp.refresh_fleet`` and the fleet view do at 2 Hz: freeze the heap when
        it is time (``console.model.heap``), age the model, take the changed nodes, recompute their
        rows, sort the table, total the fleet."""
        self.rows.update(time.monotonic())  # every row once, as the fleet view does on mount
        while True:
            now = time.monotonic()
            self.freezer.step()
            self.fleet.tick(now)
            changed = self.fleet.flush()
            self.rows.update(now, changed)
            self.rows.visible(None, "name", False)
            fleet_totals(self.rows.all())
            await asyncio.sleep(REFRESH_S)

    # -- what happens to the fleet ------------------------------------------------------------

    async def faults(self) -> None:
        rng = self.rng("faults")
        kinds, weights = list(FAULTS), list(FAULTS.values())
        while await self._pause(rng, self.plan.fault_every):
            node = rng.choice(self.names)
            args = {"fault": rng.choices(kinds, weights)[0], "gpu": rng.randrange(GPUS)}
            with contextlib.suppress(NotDelivered):  # counted by the links
                await self.links.request(node, "sim_inject", args, FAULT_WAIT_S)

    async def actions_loop(self) -> None:
        rng = self.rng("actions")
        verbs, weights = list(VERBS), list(VERBS.values())
        pool_names = pools(self.fleet)
        k = 0
        while await self._pause(rng, self.plan.action_every):
            k += 1
            verb: Verb = rng.choices(verbs, weights)[0]
            nodes = rng.sample(self.names, rng.randint(1, self.plan.max_batch))
            reason = f"soak #{k}: {verb}"  # unique: the audit entry names its request
            extra: dict[str, Any] | None = None
            choice: str | None = None
            if verb == "drain":
                extra = {"timeout": rng.choice(DRAIN_TIMEOUTS)}
            elif verb == "reassign":
                choice = rng.choice(pool_names)
            elif verb == "restart":
                choice = self._restart_target(rng, nodes[0])
            args = build(verb, reason, choice, extra)
            self.actions.append((verb, len(nodes)))
            task = asyncio.create_task(self._batch(nodes, verb, args))
            self.batches.add(task)
            task.add_done_callback(self.batches.discard)

    def _restart_target(self, rng: random.Random, node: str) -> str:
        """Mostly a GPU an operator would reset: half the time one the screen shows idle or
        lost on the first node chosen, else any; now and then ``agent``, which a simulated
        node must refuse."""
        if rng.random() < RESTART_AGENT_SHARE:
            return "agent"
        sample = self.fleet.nodes[node].sample
        quiet = [
            r.index for r in (sample.gpus if sample else []) if r.lost or (r.util_gpu or 0) <= 5
        ]
        if quiet and rng.random() < 0.5:
            return f"gpu{rng.choice(quiet)}"
        return f"gpu{rng.randrange(GPUS)}"

    async def _batch(self, nodes: list[str], verb: Verb, args: dict[str, Any]) -> None:
        await run_action(self.links, nodes, verb, args)  # results: counted by the links

    async def restarts_loop(self) -> None:
        rng = self.rng("restarts")
        while await self._pause(rng, self.plan.restart_every):
            up = [n for n in self.names if n not in self.down and not self.host_of[n].stalled]
            if not up:
                continue
            node = rng.choice(up)
            self.down.add(node)
            self._spawn(self._restart(node, rng.uniform(1.0, self.plan.max_down)))

    def _spawn(self, job: Any) -> None:
        task = asyncio.create_task(job)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _restart(self, node: str, down_s: float) -> None:
        host = self.host_of[node]
        live = self.fleet.tally[node].live_since is not None
        record = Restart(node, time.monotonic(), live)
        self.restarts.append(record)
        try:
            await host.call({"op": "stop", "node": node})
            await asyncio.sleep(down_s)
            await host.call({"op": "start", "node": node})
            record.back_at = time.monotonic()
        finally:
            self.down.discard(node)

    async def stalls_loop(self) -> None:
        rng = self.rng("stalls")
        while await self._pause(rng, self.plan.stall_every):
            k = rng.randrange(len(self.hosts))
            host = self.hosts[k]
            if host.stalled:
                continue
            self._spawn(self._stall(k, rng.uniform(*STALL_S)))

    async def _stall(self, k: int, seconds: float) -> None:
        host = self.hosts[k]
        began, ended, wall = await host.stall(seconds)
        self.stalls.append(Stall(k, host.names, began, ended, wall, seconds))

    async def rss_loop(self) -> None:
        while True:
            await self.memory_row()
            await asyncio.sleep(self.plan.rss_every)

    async def memory_row(self) -> None:
        """RSS of every process, and beside it what Python holds (allocated blocks), what the
        console's model keeps by design (events, up to 200 a node; alert records, up to 1000)
        and, per node host, the samples its agents buffer: RSS alone cannot tell a leak from
        bounded stores filling, from the allocator keeping freed pages, or from restarted
        agents refilling their buffers. A frozen (or busy) node host is read for RSS only."""
        t = round(time.monotonic() - self.t0, 1)
        events = sum(len(v.events) for v in self.fleet.nodes.values())
        console = [
            round(psutil.Process().memory_info().rss / MB, 2),
            sys.getallocatedblocks(),
            events,
            len(self.fleet.alert_log),
        ]
        hosts: list[list[float | None]] = []
        for h in self.hosts:
            rss = round(psutil.Process(h.pid).memory_info().rss / MB, 2)
            heap: dict[str, Any] = {}
            if not h.lock.locked():
                heap = await h.call({"op": "heap"})
            hosts.append([rss, heap.get("blocks"), heap.get("buffered")])
        self.rss.append([t, *console, hosts])

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        errors = capture_errors("console")
        loop.set_exception_handler(_log_loop_exception)
        self.links.start()
        screen = asyncio.create_task(self.screen())
        helpers = [screen]
        try:
            began = time.monotonic()
            print(f"connecting to {len(self.names)} nodes ...", file=sys.stderr, flush=True)
            not_live = await self.until_live(120.0 + 0.2 * len(self.names))
            if not_live:
                raise RuntimeError(f"{len(not_live)} nodes never answered, e.g. {not_live[:3]}")
            connect_s = time.monotonic() - began
            gc.collect()  # the screen's freezer has frozen the heap by now (once settled)
            self.blocks0 = sys.getallocatedblocks()
            self.t0, self.wall0 = time.monotonic(), time.time()
            self.fleet.start_window(self.t0)
            self.cpu0 = self._cpu()
            helpers.append(asyncio.create_task(self.rss_loop()))
            print(
                f"all live in {connect_s:.1f} s; soaking for {self.plan.minutes:g} min ...",
                file=sys.stderr,
                flush=True,
            )
            loops = [
                asyncio.create_task(job)
                for job in (
                    self.faults(),
                    self.actions_loop(),
                    self.restarts_loop(),
                    *([self.stalls_loop()] if self.plan.stall_every > 0 else []),
                )
            ]
            await asyncio.sleep(self.plan.minutes * 60)
            print("stopping: faults and actions end, agents come back ...", file=sys.stderr)
            self.stopping.set()
            await asyncio.gather(*loops)  # each ends its current step first
            while busy := [t for t in (*self.pending, *self.batches) if not t.done()]:
                await asyncio.gather(*busy)
            faults_end = time.monotonic()
            not_back = await self.until_live(self.plan.settle)
            t1 = time.monotonic()
            self.fleet.end_window(t1)
            cpu = self._cpu()
            console_audit = await self.read_audit_over_links()
            await self.memory_row()
            self.heap_at_end()
            if screen.done():  # it refreshes until cancelled, as the app's does, or says why not
                screen.result()
                raise RuntimeError("the screen's refresh stopped")
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.links.stop()
        reports = [await h.call({"op": "report"}) for h in self.hosts]
        audits = [await h.call({"op": "audit", "since": self.wall0 - 1.0}) for h in self.hosts]
        host_audit = {n: e for a in audits for n, e in a["audit"].items()}
        return self.analyse(
            connect_s=connect_s,
            t1=t1,
            settle_s=t1 - faults_end,
            not_back=not_back,
            cpu=(cpu[0] - self.cpu0[0], cpu[1] - self.cpu0[1]),
            console_errors=errors,
            reports=reports,
            host_audit=host_audit,
            console_audit=console_audit,
        )

    def heap_at_end(self) -> None:
        """The console's Python objects at the end, against the start (both after a full
        collection): what it keeps, and the garbage only ``gc.freeze()`` kept (objects frozen
        by the screen's freezer, ``console.model.heap``, that became garbage since its last freeze:
        the cyclic collector does not look at them until it freezes again)."""
        gc.collect()
        kept = sys.getallocatedblocks()
        gc.unfreeze()
        gc.collect()
        live = sys.getallocatedblocks()
        self.heap = {
            "blocks_at_start": self.blocks0,
            "blocks_at_end": live,
            "retained_growth": live - self.blocks0,
            "pinned_by_freeze": kept - live,
            "events_held": sum(len(v.events) for v in self.fleet.nodes.values()),
            "alerts_held": len(self.fleet.alert_log),
            "requests_noted_by_the_soak": len(self.links.calls),
            "freezes": self.freezer.freezes,
            "longest_freeze_ms": round(1000 * self.freezer.longest_s, 1),
        }

    def _cpu(self) -> tuple[float, float]:
        def used(p: psutil.Process) -> float:
            t = p.cpu_times()
            return float(t.user + t.system)

        return used(psutil.Process()), sum(used(psutil.Process(h.pid)) for h in self.hosts)

    async def until_live(self, wait: float) -> list[str]:
        """Wait until every node is live (a live sample on its current session); the rest."""
        deadline = time.monotonic() + wait
        while True:
            missing = [n for n, v in self.fleet.nodes.items() if v.link != "live"]
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.2)

    async def read_audit_over_links(self) -> dict[str, list[int | None] | str]:
        """Every node's audit log as ``gpufleet audit`` reads it (the ``audit`` request, the
        newest ``MAX_AUDIT_READ`` entries): their request ids, or why there were none."""
        out: dict[str, list[int | None] | str] = {}

        async def one(node: str) -> None:
            args = {"limit": MAX_AUDIT_READ, "since": self.wall0 - 1.0}
            try:
                answer = await self.links.request(node, "audit", args)
            except NotDelivered as exc:
                out[node] = str(exc)
                return
            if not answer.ok:
                out[node] = f"{answer.code}: {answer.error}"
                return
            out[node] = [e.get("request_id") for e in (answer.result or {}).get("entries", [])]

        await asyncio.gather(*(one(n) for n in self.names))
        return out

    # -- the verdicts -------------------------------------------------------------------------

    def analyse(
        self,
        *,
        connect_s: float,
        t1: float,
        settle_s: float,
        not_back: list[str],
        cpu: tuple[float, float],
        console_errors: ErrorLog,
        reports: list[dict[str, Any]],
        host_audit: dict[str, list[dict[str, Any]]],
        console_audit: dict[str, list[int | None] | str],
    ) -> dict[str, Any]:
        problems: list[str] = [
            f"{n}: not live again after {self.plan.settle:g} s" for n in not_back
        ]
        window = t1 - self.t0
        runs = {n: r for rep in reports for n, r in rep["runs"].items()}
        requests, audit = self.check_audit(host_audit, console_audit, problems)
        samples = self.check_samples(runs, problems)
        reconnects = self.check_reconnects(problems)
        rss = self.check_rss(problems)
        errs = self.check_errors(console_errors, reports, problems)
        return {
            "window_s": window,
            "connect_s": connect_s,
            "settle_s": settle_s,
            "cpu_percent": {"console": 100 * cpu[0] / window, "node_hosts": 100 * cpu[1] / window},
            "requests": requests,
            "audit": audit,
            "samples": samples,
            "reconnections": reconnects,
            "rss": rss,
            "errors": errs,
            "not_back": not_back,
            "problems": problems,
            "passed": not problems,
        }

    def check_audit(
        self,
        host_audit: dict[str, list[dict[str, Any]]],
        console_audit: dict[str, list[int | None] | str],
        problems: list[str],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every answered request audited once, with its id and result; nothing audited that
        was not sent; lost requests audited or not, counted; nothing else in the logs."""
        by_op: dict[str, Counter[str]] = {}
        refused: dict[str, Counter[str]] = {}
        lost_audited: Counter[str] = Counter()
        audit = Counter[str]()
        for c in self.links.calls:
            by_op.setdefault(c.op, Counter())[c.outcome] += 1
            by_op[c.op]["issued"] += 1
            if c.outcome == "refused":
                refused.setdefault(c.op, Counter())[c.code or "?"] += 1
        calls_of: dict[str, list[Call]] = {}
        for c in self.links.calls:
            calls_of.setdefault(c.node, []).append(c)
        for node in self.names:
            entries = host_audit.get(node, [])
            audit["entries"] += len(entries)
            unclaimed = list(entries)
            by_id: dict[int | None, list[dict[str, Any]]] = {}
            for e in entries:
                by_id.setdefault(e["id"], []).append(e)
            mine = calls_of.get(node, [])
            for c in (c for c in mine if c.outcome in ("ok", "refused")):
                found = [e for e in by_id.get(c.request_id, []) if e["op"] == c.op]
                if len(found) != 1:
                    problems.append(
                        f"{node}: {c.op} request {c.request_id} answered {c.outcome} but "
                        f"audited {len(found)} times"
                    )
                    audit["answered_not_once"] += 1
                    continue
                e = found[0]
                unclaimed.remove(e)
                if (e["result"] == "ok") != (c.outcome == "ok") or e["args"] != c.args:
                    problems.append(
                        f"{node}: {c.op} request {c.request_id}: answered {c.outcome} with "
                        f"{c.args}, audited {e['result']} with {e['args']}"
                    )
                    audit["answered_mismatch"] += 1
                else:
                    audit["answered_audited_once"] += 1
            for c in (c for c in mine if c.outcome == "lost"):
                match = next(
                    (e for e in unclaimed if e["op"] == c.op and e["args"] == c.args), None
                )
                if match is not None:
                    unclaimed.remove(match)
                    lost_audited[c.op] += 1
            for c in (c for c in mine if c.outcome == "not_sent"):
                match = next(
                    (e for e in unclaimed if e["op"] == c.op and e["args"] == c.args), None
                )
                if match is not None:
                    unclaimed.remove(match)
                    problems.append(f"{node}: {c.op} {c.args} was not sent but is audited")
                    audit["not_sent_audited"] += 1
            for e in unclaimed:
                problems.append(f"{node}: audit entry no request explains: {e}")
                audit["unexplained_entries"] += 1
            # the same log over the links, as `gpufleet audit` reads it
            seen = console_audit.get(node)
            tail = [e["id"] for e in entries][-MAX_AUDIT_READ:]
            if isinstance(seen, str) or seen is None:
                problems.append(f"{node}: audit over the links: {seen}")
                audit["console_read_failed"] += 1
            elif seen != tail:
                problems.append(
                    f"{node}: audit over the links gave {len(seen)} entries, its disk "
                    f"{len(entries)} (the last {len(tail)} differ)"
                )
                audit["console_read_differs"] += 1
            else:
                audit["console_read_agrees"] += 1
        requests = {
            op: {
                **{k: n.get(k, 0) for k in ("issued", "ok", "refused", "not_sent", "lost")},
                "refused_by_code": dict(refused.get(op, Counter())),
                "lost_audited": lost_audited[op],
            }
            for op, n in sorted(by_op.items())
        }
        batches = Counter(v for v, _ in self.actions)
        for verb, n in batches.items():
            if verb in requests:
                requests[verb]["batches"] = n
        return requests, dict(audit)

    def check_samples(self, runs: dict[str, list[Any]], problems: list[str]) -> dict[str, Any]:
        assert self.fleet.window is not None
        w0, w1 = self.fleet.window
        restarts_of: dict[str, list[Restart]] = {}
        for r in self.restarts:
            restarts_of.setdefault(r.node, []).append(r)
        down_of: dict[str, list[tuple[float, float]]] = {n: [] for n in self.names}
        for r in self.restarts:
            down_of[r.node].append((r.stopped_at, r.back_at))
        for s in self.stalls:
            for n in s.nodes:
                down_of[n].append((s.began, s.ended))
        down_of = {n: _merge(w) for n, w in down_of.items()}
        live_expected = live_missing = 0
        delivered = connected = down_live = 0.0
        seq = Counter[str]()
        for node in self.names:
            t = self.fleet.tally[node]
            live_expected += t.live_expected
            live_missing += t.live_missing
            delivered += t.live_in_window
            for a, b in t.intervals:
                # An interval opens with a sample and closes up to an interval after the last
                # one: half a sample more than its length, on average (unless it was clipped).
                fence = 0.5 if a >= w0 else 0.0
                a, b = max(a, w0), min(b, w1)
                if b > a:
                    connected += b - a + fence * INTERVAL
                    down_live += sum(max(0.0, min(b, y) - max(a, x)) for x, y in down_of[node])
            # every agent run: what its host says it numbered, against what the console saw
            mine = runs[node]
            seen: dict[int, AgentRun] = {}
            for run in t.runs:
                j = next(
                    (
                        j
                        for j, (start, stop, _) in enumerate(mine)
                        if start <= run.t_last <= (math.inf if stop is None else stop + 0.5)
                    ),
                    None,
                )
                if j is None or j in seen:
                    problems.append(f"{node}: an agent run seen by the console matches none")
                    continue
                seen[j] = run
            stops = restarts_of.get(node, [])
            for j, (_, stop, (first, last, holes)) in enumerate(mine):
                made = last - first + 1 - len(holes)
                got = seen.get(j)
                if got is None:  # restarted again before the console was back: deliberate
                    seq["runs_unseen"] += 1
                    seq["unseen_samples"] += made
                    continue
                run = got
                seq["runs"] += 1
                skip = set(holes)
                tail = inside = 0
                for k in range(first, last + 1):
                    if k in skip or k in run:
                        continue
                    if k > run.high:
                        tail += 1  # after the console's last word from this run
                    else:
                        inside += 1
                        if inside <= 3:
                            problems.append(f"{node}: run {j}: sample {k} never delivered")
                seq["gaps_inside"] += inside
                if stop is None:  # still running: what it made after the links closed
                    seq["expected"] += made - tail
                    seq["delivered"] += made - tail - inside
                    continue
                seq["expected"] += made
                seq["delivered"] += made - tail - inside
                if j < len(stops) and not stops[j].live_at_stop:
                    seq["tail_while_down"] += tail
                else:
                    seq["tail_while_live"] += tail
        if live_missing:
            problems.append(f"{live_missing} live samples missing inside sessions (by seq)")
        if seq["gaps_inside"]:
            problems.append(f"{seq['gaps_inside']} samples never delivered, live or replayed")
        if seq["tail_while_live"]:
            problems.append(
                f"{seq['tail_while_live']} samples lost at an agent's stop while connected"
            )
        explained = seq["expected"] - seq["tail_while_down"]
        expected_time = (connected - down_live) / INTERVAL
        nodes = len(self.names)
        window = w1 - w0
        return {
            "live_by_seq": {
                "expected": live_expected,
                "delivered": live_expected - live_missing,
                "missing": live_missing,
                "missing_percent": _pct(live_missing, live_expected),
            },
            "live_by_time": {
                "connected_node_s": connected,
                "of_which_in_down_windows_s": down_live,
                "expected": expected_time,
                "delivered": delivered,
                "missing_percent": _pct(expected_time - delivered, expected_time),
                "coverage_of_window_percent": _pct(delivered, nodes * window / INTERVAL),
            },
            "all_by_seq": {
                **dict(seq),
                "expected_excluding_down": explained,
                "missing_excluding_down": explained - seq["delivered"],
                "missing_percent": _pct(explained - seq["delivered"], explained),
            },
        }

    def check_reconnects(self, problems: list[str]) -> dict[str, Any]:
        restarts_of = Counter(r.node for r in self.restarts)
        stalls_of: Counter[str] = Counter()
        for s in self.stalls:
            stalls_of.update(s.nodes)
        total = extra = 0
        per_node: dict[str, int] = {}
        for node, link in self.links.links.items():
            again = link.sessions - 1
            total += again
            per_node[node] = again
            if link.sessions != self.fleet.tally[node].sessions:
                problems.append(
                    f"{node}: {link.sessions} sessions by the link, "
                    f"{self.fleet.tally[node].sessions} hellos by the model"
                )
            cause = restarts_of[node] + stalls_of[node]
            if again > cause:
                extra += again - cause
                problems.append(
                    f"{node}: {again} reconnections, {restarts_of[node]} restarts and "
                    f"{stalls_of[node]} stalls to explain them"
                )
        lags = []
        for r in self.restarts:
            starts = [s for s in self.fleet.tally[r.node].live_starts if s >= r.back_at]
            if starts:
                lags.append(starts[0] - r.back_at)
        stall_lags, stall_hits = [], []
        for s in self.stalls:
            hit = 0
            for n in s.nodes:
                t = self.fleet.tally[n]
                # dropped: its live session ended while the host was frozen (or as it woke)
                ends = [b for _, b in t.intervals if s.began <= b <= s.ended + STALL_DROP_S]
                if ends:
                    hit += 1
                    starts = [x for x in t.live_starts if x >= ends[0]]
                    if starts:
                        stall_lags.append(max(0.0, starts[0] - s.ended))
            stall_hits.append(hit)
        downs = sorted(r.back_at - r.stopped_at for r in self.restarts if not math.isnan(r.back_at))
        lags.sort()
        stall_lags.sort()
        return {
            "restarts": len(self.restarts),
            "restart_down_s": _spread(downs),
            "restarts_live_at_stop": sum(r.live_at_stop for r in self.restarts),
            "stalls": [
                {
                    "host": s.host,
                    "nodes": len(s.nodes),
                    "seconds": round(s.seconds, 1),
                    "nodes_reconnected": h,
                }
                for s, h in zip(self.stalls, stall_hits, strict=True)
            ],
            "reconnections": total,
            "explained_at_most": sum(restarts_of.values()) + sum(stalls_of.values()),
            "unexplained": extra,
            "live_again_after_restart_s": _spread(lags),
            "live_again_after_stall_s": _spread(stall_lags),
            "max_per_node": max(per_node.values(), default=0),
        }

    def check_rss(self, problems: list[str]) -> dict[str, Any]:
        series = self.rss
        out: dict[str, Any] = {"every_s": self.plan.rss_every, "warmup_s": self.plan.warmup}
        names = ["console"] + [f"node host {k}" for k in range(len(self.hosts))]
        columns = [[row[1] for row in series]] + [
            [row[5][k][0] for row in series] for k in range(len(self.hosts))
        ]
        blocks = [[row[2] for row in series]] + [
            [row[5][k][1] for row in series] for k in range(len(self.hosts))
        ]
        times = [row[0] for row in series]
        # What the console's bounded stores took on over the judged window, at what their
        # entries weigh now: growth the design allows, until they are full.
        per_event = _mean_size([e for v in self.fleet.nodes.values() for e in v.events])
        per_alert = _mean_size(list(self.fleet.alert_log))
        out["console_python_blocks"] = self.heap
        out["console_bytes_per_event_held"] = per_event
        out["console_bytes_per_alert_held"] = per_alert
        out["processes"] = {}
        for k, (name, values, held) in enumerate(zip(names, columns, blocks, strict=True)):
            # A node host only once its agents' buffers have turned over: until then they
            # grow by design (filling, or replacing the samples made at start; see _age).
            start = self.plan.warmup if k == 0 else max(self.plan.warmup, AGENT_BUFFER_S)
            judged = [i for i, t in enumerate(times) if t >= start]
            span = times[judged[-1]] - times[judged[0]] if len(judged) > 1 else 0.0
            slope = _slope([times[i] for i in judged], [values[i] for i in judged])
            known = [i for i in judged if held[i] is not None]
            block_slope = _slope([times[i] for i in known], [held[i] for i in known])
            growth = None if slope is None else slope * span
            allowed = 0.0
            if k == 0 and judged:
                a, b = series[judged[0]], series[judged[-1]]
                allowed = ((b[3] - a[3]) * per_event + (b[4] - a[4]) * per_alert) / MB
            level = values[judged[0]] if judged else values[0]
            verdict = f"too short to judge (from {start:g} s)"
            if span >= RSS_MIN_JUDGED_S and growth is not None:
                limit = max(RSS_GROWTH_MB, RSS_GROWTH_SHARE * level)
                verdict = "growing" if growth - allowed > limit else "flat"
                if verdict == "growing":
                    problems.append(
                        f"{name}: RSS grew {growth:.1f} MB over {span:.0f} s after {start:g} s "
                        f"({allowed:.1f} MB of it the model's events and alerts; limit "
                        f"{limit:.1f} MB)"
                    )
            warm = [i for i, t in enumerate(times) if t >= self.plan.warmup]
            run_slope = _slope([times[i] for i in warm], [values[i] for i in warm])
            out["processes"][name] = {
                "slope_after_warmup_mb_per_h": None if run_slope is None else run_slope * 3600,
                "judged_from_s": start,
                "judged_s": span,
                "first_mb": values[0],
                "judged_first_mb": level,
                "last_mb": values[-1],
                "max_mb": max(values),
                "slope_mb_per_h": None if slope is None else slope * 3600,
                "fitted_growth_mb": growth,
                "of_which_bounded_stores_mb": allowed if k == 0 else None,
                "verdict": verdict,
                "python_blocks_judged_first": held[known[0]] if known else None,
                "python_blocks_last": held[known[-1]] if known else None,
                "python_blocks_slope_per_h": None if block_slope is None else block_slope * 3600,
            }
        # [s since all live, console MB, console Python blocks, events the console's model
        #  holds, alert records it holds,
        #  [[node host MB, its Python blocks, samples its agents buffer], ...]]
        out["series"] = series
        return out

    def check_errors(
        self, console: ErrorLog, reports: list[dict[str, Any]], problems: list[str]
    ) -> dict[str, Any]:
        during_stall = 0
        other: list[str] = []
        for k, rep in enumerate(reports):
            windows = [
                (s.wall, s.wall + s.seconds + STALL_ERROR_GRACE_S)
                for s in self.stalls
                if s.host == k
            ]
            for ts, name, message in rep["errors"]:
                if any(a <= ts <= b for a, b in windows):
                    during_stall += 1
                else:
                    other.append(f"node host {k}: {name}: {message}")
            # records past those kept: not classified, so counted as errors
            unkept = rep["error_count"] - len(rep["errors"])
            if unkept:
                other.append(f"node host {k}: {unkept} more errors, not kept")
        console_lines = [f"console: {name}: {message}" for _, name, message in console.kept]
        for line in console_lines + other:
            problems.append(f"error: {line}")
        return {
            "console": console.count,
            "node_hosts": sum(r["error_count"] for r in reports),
            "node_hosts_during_stalls": during_stall,
            "lines": (console_lines + other)[:ERRORS_KEPT],
        }


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An exception nobody awaited: logged at ERROR (so counted) and the soak goes on."""
    logging.getLogger("asyncio").error(
        "%s", context.get("message"), exc_info=context.get("exception")
    )


def _mean_size(objects: list[Any]) -> float:
    """Mean bytes an object holds, its own and what it alone refers to (a sample of them)."""
    if not objects:
        return 0.0
    picked = objects[:: max(1, len(objects) // 300)]
    total = 0
    for obj in picked:
        seen: set[int] = set()
        todo = [obj]
        while todo:
            o = todo.pop()
            if id(o) in seen or isinstance(o, type):
                continue
            seen.add(id(o))
            total += sys.getsizeof(o)
            todo.extend(gc.get_referents(o))
    return total / len(picked)


def _merge(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping windows as one (an agent restarted while its host was frozen)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(windows):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (per second), or None with fewer than 3 points."""
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    values = sorted(values)

    def pick(q: float) -> float:
        return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]

    return {"n": len(values), "p50": pick(0.5), "p95": pick(0.95), "max": values[-1]}


# --------------------------------------------------------------------------------------------
# Report


def _f(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def report(results: dict[str, Any]) -> str:
    p, r = results["parameters"], results["result"]
    lines = [
        f"soak: {p['nodes']} nodes x {GPUS} simulated GPUs at 1 Hz in {p['node_hosts']} node "
        f"processes, the console's links and model in one; {p['minutes']:g} min of faults "
        f"(seed {p['seed']}), {r['window_s']:.0f} s counted; connected in {r['connect_s']:.1f} s,"
        f" all live again {r['settle_s']:.1f} s after the faults ended",
        "",
        "| request | batches | issued | ok | refused (by code) | not sent (node down) | "
        "lost in flight (audited) |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for op, c in r["requests"].items():
        codes = ", ".join(f"{k} {n}" for k, n in sorted(c["refused_by_code"].items()))
        lines.append(
            f"| {op} | {c.get('batches', '')} | {c['issued']} | {c['ok']} | {c['refused']}"
            f"{f' ({codes})' if codes else ''} | {c['not_sent']} | {c['lost']} "
            f"({c['lost_audited']}) |"
        )
    a = r["audit"]
    lines += [
        "",
        f"audit: {a.get('entries', 0)} entries on the nodes; answered requests audited exactly "
        f"once with the same id, args and result: {a.get('answered_audited_once', 0)}, not once: "
        f"{a.get('answered_not_once', 0)}, differing: {a.get('answered_mismatch', 0)}; not sent "
        f"but audited: {a.get('not_sent_audited', 0)}; entries no request explains: "
        f"{a.get('unexplained_entries', 0)}; read over the links (`audit` request) agreeing "
        f"with the disk: {a.get('console_read_agrees', 0)} of {p['nodes']} nodes",
        "",
        "| samples | delivered | expected | missing % |",
        "| --- | ---: | ---: | ---: |",
    ]
    s = r["samples"]
    lb, lt, al = s["live_by_seq"], s["live_by_time"], s["all_by_seq"]
    lines += [
        f"| live, by seq within each session | {lb['delivered']} | {lb['expected']} | "
        f"{_f(lb['missing_percent'], '.3f')} |",
        f"| live, by time: link live x 1 Hz, down windows excluded | {lt['delivered']:.0f} | "
        f"{lt['expected']:.0f} | {_f(lt['missing_percent'], '.3f')} |",
        f"| every sample of every agent run (live or replayed), by seq, down windows excluded | "
        f"{al.get('delivered', 0)} | {al['expected_excluding_down']} | "
        f"{_f(al['missing_percent'], '.3f')} |",
        "",
        f"live samples cover {_f(lt['coverage_of_window_percent'], '.2f')} % of nodes x window "
        f"x 1 Hz (the rest: agents down, nodes frozen, reconnecting). Agent runs "
        f"{al.get('runs', 0)} seen, {al.get('runs_unseen', 0)} restarted again before the "
        f"console was back; samples after the console's last contact with a stopped agent: "
        f"{al.get('tail_while_down', 0)} while it was down (deliberate), "
        f"{al.get('tail_while_live', 0)} while connected; never delivered inside a run: "
        f"{al.get('gaps_inside', 0)}.",
    ]
    c = r["reconnections"]
    la, ls = c["live_again_after_restart_s"], c["live_again_after_stall_s"]
    stalls = ", ".join(
        f"{x['nodes']} nodes {x['seconds']} s: {x['nodes_reconnected']} dropped"
        for x in c["stalls"]
    )
    lines += [
        "",
        f"reconnections: {c['reconnections']} (NodeLink.sessions - 1, max {c['max_per_node']} "
        f"on a node) for {c['restarts']} agent restarts (down {_f(c['restart_down_s']['p50'])} s "
        f"p50, {_f(c['restart_down_s']['max'])} s max; {c['restarts_live_at_stop']} while live) "
        f"and {len(c['stalls'])} stalls of a node host ({stalls or 'none'}); "
        f"unexplained: {c['unexplained']}. Live again after the agent was back: p50 "
        f"{_f(la['p50'])} s, p95 {_f(la['p95'])} s, max {_f(la['max'])} s; after a stall: p50 "
        f"{_f(ls['p50'])} s, max {_f(ls['max'])} s. Not live again: {len(r['not_back'])}.",
        "",
        f"| process | RSS first MB | last | max | slope after the warm-up "
        f"({r['rss']['warmup_s']:g} s) MB/h | judged from s | slope judged MB/h | of it the "
        "model's events and alerts MB | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, m in r["rss"]["processes"].items():
        lines.append(
            f"| {name} | {m['first_mb']:.1f} | {m['last_mb']:.1f} | {m['max_mb']:.1f} | "
            f"{_f(m['slope_after_warmup_mb_per_h'])} | {m['judged_from_s']:g} | "
            f"{_f(m['slope_mb_per_h'])} | {_f(m['of_which_bounded_stores_mb'], '.2f')} | "
            f"{m['verdict']} |"
        )
    h = r["rss"]["console_python_blocks"]
    if h:
        lines += [
            "",
            f"console's Python objects (allocated blocks after a full collection): "
            f"{h['blocks_at_start']} at the start, {h['blocks_at_end']} at the end "
            f"({h['retained_growth']:+d}: {h['events_held']} events and {h['alerts_held']} "
            f"alert records held by the model, {h['requests_noted_by_the_soak']} requests noted "
            f"by the soak); garbage kept only by gc.freeze(): {h['pinned_by_freeze']} blocks "
            f"(the heap frozen {h.get('freezes', 1)} times, the longest full collection "
            f"{h.get('longest_freeze_ms', math.nan):.0f} ms).",
        ]
    e = r["errors"]
    cpu = r["cpu_percent"]
    lines += [
        "",
        f"errors: console {e['console']}, node hosts {e['node_hosts']} (of which while frozen "
        f"on purpose: {e['node_hosts_during_stalls']}). CPU: console {cpu['console']:.1f} % of "
        f"one core, node hosts {cpu['node_hosts']:.1f} %.",
        "",
        "result: " + ("PASS" if r["passed"] else f"FAIL ({len(r['problems'])} problems)"),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, default=100, help="simulated nodes (8 GPUs each)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long faults and actions go on")
    p.add_argument("--seed", type=int, default=1, help="what happens, and when")
    p.add_argument(
        "--node-hosts",
        type=int,
        default=4,
        help="processes sharing the nodes (a stall freezes one of them, with all its nodes)",
    )
    p.add_argument("--fault-every", type=float, default=2.0, help="mean seconds between faults")
    p.add_argument(
        "--action-every", type=float, default=3.0, help="mean seconds between action batches"
    )
    p.add_argument("--max-batch", type=int, default=4, help="most nodes one action names")
    p.add_argument(
        "--restart-every", type=float, default=8.0, help="mean seconds between agent restarts"
    )
    p.add_argument(
        "--max-down", type=float, default=15.0, help="longest an agent stays down (from 1 s)"
    )
    p.add_argument(
        "--stall-every",
        type=float,
        default=120.0,
        help="mean seconds between node-host stalls (SIGSTOP 3-12 s); 0: none",
    )
    p.add_argument("--rss-every", type=float, default=15.0, help="seconds between RSS readings")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds after every node is live before RSS is judged (default: 2 min, or a "
        "fifth of a shorter run)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="seconds for every node to be live again after the faults end",
    )
    p.add_argument(
        "--history",
        type=float,
        default=900.0,
        help="seconds of samples each agent holds at the start, as if up that long",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rates = (args.fault_every, args.action_every, args.restart_every, args.rss_every)
    if (
        args.nodes < 1
        or args.node_hosts < 1
        or args.minutes <= 0
        or min(rates) <= 0
        or args.max_batch < 1
        or args.max_down < 1
        or args.stall_every < 0
        or args.history < 0
    ):
        print(
            "soak: error: --nodes, --node-hosts and --max-batch must be at least 1, --max-down "
            "at least 1 s, --minutes and the --*-every rates more than 0 (--stall-every may be "
            "0), --history at least 0",
            file=sys.stderr,
        )
        return 2
    warmup = args.warmup if args.warmup is not None else min(120.0, args.minutes * 60 / 5)
    plan = Plan(
        minutes=args.minutes,
        seed=args.seed,
        fault_every=args.fault_every,
        action_every=args.action_every,
        max_batch=min(args.max_batch, args.nodes),
        restart_every=args.restart_every,
        max_down=args.max_down,
        stall_every=args.stall_every,
        rss_every=args.rss_every,
        warmup=warmup,
        settle=args.settle,
    )
    started = dt.datetime.now(dt.UTC)
    hosts_n = min(args.node_hosts, args.nodes)
    print(f"starting {args.nodes} nodes in {hosts_n} processes ...", file=sys.stderr, flush=True)
    hosts: list[NodeHost] = []
    try:
        hosts, entries = start_node_hosts(args.nodes, hosts_n, args.history)
        soak = Soak(hosts, entries, plan)
        result = asyncio.run(soak.run())
    except RuntimeError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for h in hosts:
            h.cont()  # a frozen process would never read its stdin closing
        stop_node_hosts([h.proc for h in hosts])
    results: dict[str, Any] = {
        **run_header("soak", started),
        "parameters": {
            "nodes": args.nodes,
            "node_hosts": hosts_n,
            "gpus_per_node": GPUS,
            "interval_s": INTERVAL,
            "history_s": args.history,
            **dataclasses.asdict(plan),
            "faults": FAULTS,
            "verbs": VERBS,
            "drain_timeouts_s": DRAIN_TIMEOUTS,
            "stall_s": STALL_S,
        },
        "machine": machine_facts(),
        "result": result,
    }
    publish(results, report(results), args.out)
    for line in result["problems"]:
        print(f"soak: {line}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_nodes":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        nodes_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(main())
