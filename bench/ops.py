"""Drain, then resume, N simulated nodes over SSH (issue 5): wall time and per-node latency.

Two ways to act on every node of a fleet, side by side in one run, on the same nodes:

- gpufleet: what ``gpufleet drain all --reason R --yes --force`` (then ``gpufleet resume``)
  does, by calling ``console.ops.operate.operate`` itself: one SSH connection per node (bounded
  handshakes), a direct-streamlocal channel to each agent, wait until every node has answered,
  the mass-action guard (``--force``: the whole fleet is far past a quarter of each pool), then
  ``console.ops.actions.run_action`` sends the request to each node's live session, at most
  ``ACTION_CONCURRENCY`` in flight. ``FleetLinks`` is swapped, for the step only, for a subclass
  that notes the time around its ``start``/``settle``/``request`` and changes nothing else, so
  connecting is timed apart from the action.
- exec-per-node (the way ``pdsh -w nodes cmd`` or a loop of ``ssh node cmd`` does it today):
  per node, a fresh SSH connection and one exec running ``gpufleet-agent request --socket S
  drain reason=R`` on the node, a new process that asks the agent and prints its answer as
  JSON, then the connection closes; the same bound of ``ACTION_CONCURRENCY`` nodes at a time.
  Connection setup is part of each node's latency, as it is for pdsh. The node's SSH server
  runs that argv directly (no shell, as a ForceCommand would), so shell start-up does not
  inflate the baseline.

The nodes are the real agent daemon on simulated H100s behind an embedded asyncssh server, as
``gpufleet demo`` runs them (``console.demo.demo_fleet``), in separate processes so their CPU
is not the console's; every agent starts schedulable in a fresh state directory. Each agent's
replay buffer is filled as if it had been up ``--history`` seconds (default 900, the agent's
whole default buffer, as on any node up for 15 minutes): the console asks for that history
when it connects, so agents started a moment ago would make connecting look far cheaper than
it is on a real fleet.

The order is gpufleet drain, gpufleet resume, exec drain, exec resume, so each step starts from
the state the previous one left. Every step is checked against the agents themselves: each
answer's ``before`` and ``after`` states, and afterwards (untimed, read by the node processes
from the agents, not over SSH) each agent's state as it holds it and as it saved it: drain
must leave every node draining or drained, resume schedulable. A node that fails any of that
is printed and the run exits 1 without writing results.

Everything runs on this one machine: the nodes' CPU (and each exec's new Python process)
competes with the console's for the same cores, so every figure here is an upper bound on what
a real fleet, where each node works on its own CPU, would see.

    python bench/ops.py                  # 200 nodes, ~1.5 min on 2 cores
    python bench/ops.py --nodes 20       # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import asyncssh
import msgspec
import psutil
from benchlib import (
    exec_server,
    machine_facts,
    publish,
    run_header,
    spawn_node_hosts,
    stop_node_hosts,
)

import console.ops.operate
from agents.protocol import GpufleetError, Response, encode
from agents.sampler import Sampler
from agents.serve.daemon import Agent
from console.demo import demo_fleet
from console.model.fleet import FleetState
from console.model.inventory import Inventory, NodeEntry, load_inventory
from console.ops.actions import ACTION_CONCURRENCY, Verb
from console.ops.operate import Operation, build, chosen_nodes, operate
from console.sources.ssh.fleetlinks import CONNECTING_AT_ONCE, FleetLinks
from console.sources.ssh.link import LinkOptions

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ops.json"
GPUS = 8
TARGET_S = 3.0  # issue 5: each of drain and resume, for 200 nodes
REASONS: dict[Verb, str] = {"drain": "bench/ops.py: drain", "resume": "bench/ops.py: resume"}
#: What each step must leave on every node, by the agent's own account.
AFTER: dict[Verb, frozenset[str]] = {
    "drain": frozenset({"draining", "drained"}),
    "resume": frozenset({"schedulable"}),
}
BEFORE: dict[Verb, frozenset[str]] = {"drain": AFTER["resume"], "resume": AFTER["drain"]}
MB = 1_000_000


# --------------------------------------------------------------------------------------------
# The node side: a process that plays N nodes (agents, and an SSH server in front of them that
# forwards to their sockets or runs ``gpufleet-agent request`` for an exec) until told to stop


def _exec_argv(command: str | None, sockets: frozenset[str]) -> list[str] | None:
    """The argv a node runs for an exec, or None for anything but ``gpufleet-agent request
    --socket S ...`` on one of this host's agents: the only command these nodes run."""
    argv = shlex.split(command or "")
    if argv[:3] != ["gpufleet-agent", "request", "--socket"] or len(argv) < 5:
        return None
    if argv[3] not in sockets:
        return None
    return [sys.executable, "-m", "agents", *argv[1:]]


def _age(sampler: Sampler, seconds: float, interval: float) -> None:
    """Fill the agent's replay buffer as if it had been up ``seconds``: copies of its newest
    sample, an interval apart, older than it. Every console that connects is sent this buffer
    before anything live, so a fleet of agents up for days costs each connect this much;
    agents started a moment ago, as the demo's are, would hide it."""
    latest = sampler.latest
    assert latest is not None, "the agent has sampled once before it serves"
    room = sampler.replay.maxlen or 0
    fill = min(room, round(seconds / interval)) - len(sampler.replay)
    older = [
        encode(
            msgspec.structs.replace(
                latest, seq=latest.seq - k, ts=latest.ts - k * interval, replay=True
            )
        )
        for k in range(1, fill + 1)
    ]
    sampler.replay.extendleft(older)  # newest of them first, so it ends up next to the ring


async def _serve(count: int, first: int, history: float) -> None:
    """The demo fleet's agents (aged by ``history`` seconds) and SSH server (streamlocal, for
    gpufleet), and beside it a second SSH server with the same client key that runs execs
    (the demo's server does not; a real node's sshd does both). One line of JSON says where
    both are."""
    async with demo_fleet(count, GPUS, first) as fleet:
        for agent in fleet.agents.values():
            _age(agent.sampler, history, agent.config.agent.interval)
        sockets = frozenset(str(fleet.node_config(n).agent.socket) for n in fleet.names)

        async def run_exec(process: asyncssh.SSHServerProcess[bytes]) -> None:
            argv = _exec_argv(process.command, sockets)
            if argv is None:
                process.stderr.write(f"not allowed here: {process.command!r}\n".encode())
                process.exit(126)
                return
            child = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out, err = await child.communicate()
            process.stdout.write(out)
            process.stderr.write(err)
            process.exit(child.returncode or 0)

        client_key = asyncssh.read_private_key(fleet.root / "client_key")
        known = fleet.root / "exec_known_hosts"
        server, port = await exec_server(client_key, run_exec, known)
        ready = {"inventory": str(fleet.inventory), "exec_port": port, "exec_known": str(known)}
        print(json.dumps(ready), flush=True)
        while await asyncio.to_thread(sys.stdin.readline):  # until the parent closes stdin
            print(json.dumps(_states(fleet.agents)), flush=True)
        server.close()


def _states(agents: dict[str, Agent]) -> dict[str, str]:
    """Each agent's ops state as it holds it (what its ``state`` request answers) and as it
    persisted it, which must agree: a drain the agent forgot on restart is no drain."""
    out = {}
    for name, agent in agents.items():
        held, saved = agent.state.state, agent.store.load().state
        out[name] = held if held == saved else f"{held} (but {saved} on disk)"
    return out


def nodes_main(count: int, first: int, history: float) -> None:
    # An agent logs each state change as a warning (for the journal); 200 of them on the
    # terminal would bury the table.
    logging.getLogger("gpufleet").setLevel(logging.ERROR)
    asyncio.run(_serve(count, first, history))


@dataclass
class NodeHosts:
    procs: list[subprocess.Popen[str]]
    inventory: Inventory
    exec_entries: list[NodeEntry]  # the same nodes, as the exec server reaches them

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def states(self) -> dict[str, str]:
        """Every node's ops state, read by its node host from the agent itself (no SSH, so
        checking costs the measured steps nothing)."""
        out: dict[str, str] = {}
        for host in self.procs:
            assert host.stdin is not None
            assert host.stdout is not None
            host.stdin.write("states\n")
            host.stdin.flush()
            line = host.stdout.readline()
            if not line:
                raise RuntimeError(f"a node host exited with {host.wait()}")
            out.update(json.loads(line))
        return out


def start_node_hosts(nodes: int, hosts: int, history: float) -> NodeHosts:
    """The node hosts (benchlib.spawn_node_hosts), their inventories merged into one."""
    entries: list[NodeEntry] = []
    exec_entries: list[NodeEntry] = []
    ready = spawn_node_hosts(str(Path(__file__).resolve()), nodes, hosts, history)
    for _, said in ready:
        mine = load_inventory(Path(said["inventory"])).nodes
        entries += mine
        exec_entries += [
            replace(e, port=said["exec_port"], known_hosts=said["exec_known"]) for e in mine
        ]
    procs = [proc for proc, _ in ready]
    return NodeHosts(procs, Inventory("bench/ops.py node hosts", entries), exec_entries)


# --------------------------------------------------------------------------------------------
# The console side


@dataclass
class Call:
    """One node's request: when it was sent and answered (perf_counter), and what came back."""

    node: str
    sent: float
    answered: float
    ok: bool
    before: str | None
    after: str | None
    message: str
    connect_s: float | None = None  # exec: the SSH handshake, included in the latency


def _call(node: str, sent: float, answered: float, response: Response) -> Call:
    result = response.result or {}
    before, after = result.get("before") or {}, result.get("after") or {}
    said = str(result.get("message")) if response.ok else f"{response.code}: {response.error}"
    return Call(node, sent, answered, response.ok, before.get("state"), after.get("state"), said)


def _cpu(proc: psutil.Process, children: bool) -> float:
    t = proc.cpu_times()
    total: float = t.user + t.system
    return total + (t.children_user + t.children_system if children else 0.0)


class CpuMeter:
    """CPU seconds of this process (the console) and of the node hosts, exec children
    included (counted once reaped, which asyncio does as each exits)."""

    def __init__(self, node_pids: list[int]) -> None:
        self._me = psutil.Process()
        self._hosts = [psutil.Process(p) for p in node_pids]
        self._mark = self._read()

    def _read(self) -> tuple[float, float]:
        return _cpu(self._me, False), sum(_cpu(h, True) for h in self._hosts)

    def lap(self) -> tuple[float, float]:
        """(console, nodes) since the last lap."""
        now = self._read()
        console_s, nodes_s = now[0] - self._mark[0], now[1] - self._mark[1]
        self._mark = now
        return console_s, nodes_s


class TimedLinks(FleetLinks):
    """``FleetLinks`` as ``operate`` makes it, noting when it started, when every node had
    answered (and the CPU spent connecting), and each request's send and answer; it changes
    nothing else. Patched into ``console.ops.operate`` for one step, so that the step is
    ``operate`` itself."""

    made: ClassVar[list[TimedLinks]] = []
    meter: ClassVar[CpuMeter | None] = None

    def __init__(
        self,
        entries: Sequence[NodeEntry],
        options: LinkOptions,
        *,
        fleet: FleetState | None = None,
        concurrency: int = CONNECTING_AT_ONCE,
    ) -> None:
        super().__init__(entries, options, fleet=fleet, concurrency=concurrency)
        self.started = self.settled = math.nan
        self.unsettled: list[str] = []
        self.connect_cpu = (math.nan, math.nan)
        self.calls: list[Call] = []
        TimedLinks.made.append(self)

    def start(self) -> None:
        self.started = time.perf_counter()
        super().start()

    async def settle(self, wait: float) -> list[str]:
        self.unsettled = await super().settle(wait)
        self.settled = time.perf_counter()
        if self.meter is not None:
            self.connect_cpu = self.meter.lap()
        return self.unsettled

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        sent = time.perf_counter()  # the request is written at once: no await before it
        try:
            response = await super().request(node, op, args, wait)
        except GpufleetError as exc:
            self.calls.append(Call(node, sent, time.perf_counter(), False, None, None, str(exc)))
            raise
        self.calls.append(_call(node, sent, time.perf_counter(), response))
        return response


async def gpufleet_step(
    inv: Inventory, verb: Verb, options: LinkOptions, wait: float, meter: CpuMeter
) -> dict[str, Any]:
    """One ``gpufleet VERB all --reason R --yes --force``, through ``operate``."""
    chosen = chosen_nodes(inv, ("all",))
    op = Operation(verb, build(verb, REASONS[verb], None), ("all",), False, True, wait, yes=True)
    said: list[str] = []
    TimedLinks.made.clear()
    TimedLinks.meter = meter
    meter.lap()
    began = time.perf_counter()
    with mock.patch.object(console.ops.operate, "FleetLinks", TimedLinks):
        code, results = await operate(inv, chosen, op, options, said.append)
    ended = time.perf_counter()
    action_cpu = meter.lap()  # the action, and closing the connections
    (links,) = TimedLinks.made
    asked = {c.node for c in links.calls}
    calls = links.calls + [  # a node run_action never asked (none should be)
        Call(r.node, math.nan, math.nan, False, None, None, f"{r.outcome}: {r.message}")
        for r in results
        if r.node not in asked
    ]
    return {
        "exit_code": code,
        "connect_s": links.settled - links.started,
        "unsettled": links.unsettled,
        "command_s": ended - began,  # operate() whole: connect, guard, action, disconnect
        "said": said,
        "connect_cpu_s": {"console": links.connect_cpu[0], "nodes": links.connect_cpu[1]},
        "action_cpu_s": {"console": action_cpu[0], "nodes": action_cpu[1]},
        "calls": calls,
    }


async def exec_step(entries: list[NodeEntry], verb: Verb, meter: CpuMeter) -> dict[str, Any]:
    """Per node, bounded as ``run_action`` is: connect, one exec, close."""
    gate = asyncio.Semaphore(ACTION_CONCURRENCY)
    args = [f"{k}={v}" for k, v in build(verb, REASONS[verb], None).items()]
    decode = msgspec.json.Decoder(Response).decode

    async def one(e: NodeEntry) -> Call:
        assert e.identity
        assert e.known_hosts
        command = shlex.join(["gpufleet-agent", "request", "--socket", e.socket, verb, *args])
        async with gate:
            sent = time.perf_counter()
            try:
                conn = await asyncssh.connect(
                    e.hostname or e.name,
                    port=e.port or 22,
                    username=e.user,
                    client_keys=[e.identity],
                    known_hosts=e.known_hosts,
                    config=[],
                )
                connected = time.perf_counter()
                async with conn:
                    run = await conn.run(command, encoding=None, check=False)
            except (OSError, asyncssh.Error) as exc:
                return Call(e.name, sent, time.perf_counter(), False, None, None, repr(exc))
            answered = time.perf_counter()  # the connection closed, as pdsh waits for
        out = run.stdout if isinstance(run.stdout, bytes) else b""
        try:
            call = _call(e.name, sent, answered, decode(out.strip().splitlines()[-1]))
        except (IndexError, msgspec.DecodeError):
            err = run.stderr if isinstance(run.stderr, bytes) else b""
            said = f"exit {run.exit_status}: {err.decode(errors='replace').strip()[-300:]}"
            call = Call(e.name, sent, answered, False, None, None, said)
        call.connect_s = connected - sent
        return call

    meter.lap()
    calls = list(await asyncio.gather(*(one(e) for e in entries)))
    cpu = meter.lap()
    return {"action_cpu_s": {"console": cpu[0], "nodes": cpu[1]}, "calls": calls}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def summarize(
    path: str, verb: Verb, step: dict[str, Any], states: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The step's figures, and a line per node that did not do what it should have: not ok,
    an answer whose before/after is not the step's, or an agent not left as it should be."""
    calls: list[Call] = step.pop("calls")
    problems = []
    for c in sorted(calls, key=lambda c: c.node):
        if not c.ok:
            problems.append(f"{c.node}: {path} {verb}: not ok: {c.message}")
        elif c.before not in BEFORE[verb] or c.after not in AFTER[verb]:
            problems.append(f"{c.node}: {path} {verb}: went {c.before} -> {c.after}")
    for node, state in sorted(states.items()):
        if state not in AFTER[verb]:
            problems.append(f"{node}: after {path} {verb}, its agent holds {state}")
    timed = [c for c in calls if not math.isnan(c.sent)]
    lat = sorted(c.answered - c.sent for c in timed)
    connects = sorted(c.connect_s for c in calls if c.connect_s is not None)
    after: dict[str, int] = {}
    for state in states.values():
        after[state] = after.get(state, 0) + 1
    figures = {
        "path": path,
        "verb": verb,
        "nodes": len(calls),
        "ok": sum(c.ok for c in calls),
        **step,
        "action_s": (
            max(c.answered for c in timed) - min(c.sent for c in timed) if timed else None
        ),
        "latency_p50_s": _quantile(lat, 0.50),
        "latency_p99_s": _quantile(lat, 0.99),
        "latency_max_s": lat[-1] if lat else None,
        "ssh_setup_p50_s": _quantile(connects, 0.50),
        "ssh_setup_p99_s": _quantile(connects, 0.99),
        "states_after": after,
    }
    return figures, problems


async def run_all(hosts: NodeHosts, wait: float) -> tuple[list[dict[str, Any]], list[str]]:
    """gpufleet drain, gpufleet resume, exec drain, exec resume: each from the state the one
    before left, each checked against the agents."""
    options = LinkOptions(ssh_config=[])  # the demo inventory names key and known_hosts
    inv = hosts.inventory
    problems = [
        f"{node}: before the run, its agent holds {state}"
        for node, state in sorted((await asyncio.to_thread(hosts.states)).items())
        if state != "schedulable"
    ]
    if problems:
        return [], problems
    steps: list[dict[str, Any]] = []
    meter = CpuMeter(hosts.pids)
    for path in ("gpufleet", "exec"):
        for verb in ("drain", "resume"):
            print(f"{path} {verb} x {len(inv.nodes)} nodes ...", file=sys.stderr, flush=True)
            if path == "gpufleet":
                step = await gpufleet_step(inv, verb, options, wait, meter)
            else:
                step = await exec_step(hosts.exec_entries, verb, meter)
            states = await asyncio.to_thread(hosts.states)
            figures, bad = summarize(path, verb, step, states)
            steps.append(figures)
            problems += bad
    return steps, problems


# --------------------------------------------------------------------------------------------
# Report


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.1f}x"


def report(results: dict[str, Any]) -> str:
    p = results["parameters"]
    rows = [
        f"{p['nodes']} nodes x {p['gpus_per_node']} simulated GPUs, {p['node_hosts']} node "
        f"processes, agents holding {p['history_s']:g} s of samples for a new console",
        "",
        "| path | step | nodes ok | connect s (all nodes) | action wall s | "
        "per-node latency p50 / p99 / max s | console CPU s (connect + action) | "
        "nodes CPU s (connect + action) | agents after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in results["steps"]:
        act = s["action_cpu_s"]
        if s["path"] == "gpufleet":
            connect = _fmt(s["connect_s"])
            con = s["connect_cpu_s"]
            cpu = [f"{con[k]:.2f} + {act[k]:.2f}" for k in ("console", "nodes")]
        else:
            connect = "in latency"
            cpu = [f"{act[k]:.2f}" for k in ("console", "nodes")]
        states = ", ".join(f"{n} {k}" for k, n in sorted(s["states_after"].items()))
        rows.append(
            f"| {s['path']} | {s['verb']} | {s['ok']} of {s['nodes']} | {connect} | "
            f"{_fmt(s['action_s'])} | {_fmt(s['latency_p50_s'])} / "
            f"{_fmt(s['latency_p99_s'])} / {_fmt(s['latency_max_s'])} | "
            f"{cpu[0]} | {cpu[1]} | {states} |"
        )
    rows.append("")
    for verb, c in results["summary"].items():
        g, e = c["gpufleet"], c["exec"]
        rows.append(
            f"{verb}: gpufleet {_fmt(g['action_s'])} s from the first request to the last "
            f"answer (target < {TARGET_S:g} s: {'met' if c['target_met_action'] else 'MISSED'})"
            f", {_fmt(g['connect_plus_action_s'])} s with connecting ("
            f"{'met' if c['target_met_with_connect'] else 'MISSED'}); exec-per-node "
            f"{_fmt(e['action_s'])} s (SSH setup p50 {_fmt(e['ssh_setup_p50_s'])} s per node): "
            f"{_ratio(e['action_s'], g['action_s'])} gpufleet's action, "
            f"{_ratio(e['action_s'], g['connect_plus_action_s'])} with its connecting."
        )
    return "\n".join(rows)


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for verb in ("drain", "resume"):
        by = {s["path"]: s for s in steps if s["verb"] == verb}
        g, e = by["gpufleet"], by["exec"]
        action = g["action_s"]
        both = g["connect_s"] + action if action is not None else None
        out[verb] = {
            "gpufleet": {
                "action_s": action,
                "connect_s": g["connect_s"],
                "connect_plus_action_s": both,
            },
            "exec": {k: e[k] for k in ("action_s", "ssh_setup_p50_s")},
            "exec_over_gpufleet_action": e["action_s"] / action if action else None,
            "exec_over_gpufleet_connect_plus_action": e["action_s"] / both if both else None,
            "target_met_action": action is not None and action < TARGET_S,
            "target_met_with_connect": both is not None and both < TARGET_S,
        }
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, default=200, help="simulated nodes")
    p.add_argument(
        "--node-hosts",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="processes that share the simulated nodes",
    )
    p.add_argument(
        "--history",
        type=float,
        default=900.0,
        help="seconds of samples each agent holds for a new console, as if up that long "
        "(900: the agent's default buffer, full on any node up 15 minutes; 0: just started)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=15.0,
        help="seconds for every node to answer before acting (gpufleet's --connect-wait and "
        "its default: nodes left out would be reported as not done, and the run would fail)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nodes < 1 or args.node_hosts < 1 or args.history < 0 or args.wait <= 0:
        print(
            "ops: error: --nodes and --node-hosts must be at least 1, --history at least 0, "
            "--wait more than 0",
            file=sys.stderr,
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    hosts = min(args.node_hosts, args.nodes)
    print(f"starting {args.nodes} nodes in {hosts} processes ...", file=sys.stderr, flush=True)
    try:
        node_hosts = start_node_hosts(args.nodes, hosts, args.history)
        try:
            steps, problems = asyncio.run(run_all(node_hosts, args.wait))
        finally:
            stop_node_hosts(node_hosts.procs)
    except (RuntimeError, GpufleetError) as exc:  # a node host died; operate refused
        print(f"ops: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    results: dict[str, Any] = {
        **run_header("ops", started),
        "parameters": {
            "nodes": args.nodes,
            "node_hosts": hosts,
            "gpus_per_node": GPUS,
            "history_s": args.history,
            "wait": args.wait,
            "action_concurrency": ACTION_CONCURRENCY,
            "connecting_at_once": CONNECTING_AT_ONCE,
            "reasons": REASONS,
            "target_s": TARGET_S,
        },
        "machine": machine_facts(),
        "console_rss_mb": psutil.Process().memory_info().rss / MB,
        "steps": steps,
        "summary": summary(steps) if len(steps) == 4 else {},
    }
    if problems:
        if steps:
            print(report(results))
        for line in problems:
            print(f"ops: {line}", file=sys.stderr)
        print(f"ops: {len(problems)} problem(s); no results written", file=sys.stderr)
        return 1
    publish(results, report(results), args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_nodes":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        nodes_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(main())
