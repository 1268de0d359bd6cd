"""drain and resume on a real agent process (adapter "none"), seen from a streaming client.
The GPUs are simulated (no GPU here): "busy" and "idle" are injected through the agent's own
request path, as an operator's test would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from agents.config import AgentConfig, AgentSection
from agents.gpu.sim import DEMO_SPELLS, SimBackend
from agents.ops.requests import Caller
from agents.ops.store import AuditLog, StateStore
from agents.protocol import Event, NodeState, Request, Sample, decode
from agents.serve.client import AgentClient
from agents.serve.daemon import Agent
from agents.serve.identity import Peer
from tests.conftest import AgentProc, agent_command, until, wait_for

pytestmark = pytest.mark.integration

ONE_GPU = ("--backend", "sim", "--gpus", "1", "--interval", "0.05")
OPERATOR = Caller(Peer(pid=1, uid=2002, gid=2002, user="olga", groups=("ops",)), "operator")


def state_events(watcher: AgentClient, into: list[Event]) -> Callable[[str], Event | None]:
    def seen(state: str) -> Event | None:
        frame = watcher.recv()
        if isinstance(frame, Event) and frame.kind == "state":
            into.append(frame)
        return next((e for e in into if e.state and e.state.state == state), None)

    return seen


def settled(watcher: AgentClient, busy: bool) -> Callable[[], bool]:
    """Two samples in a row in that state: the second was taken after the injection."""
    seen = busy_seen(watcher, busy)
    count = [0]

    def check() -> bool:
        count[0] = count[0] + 1 if seen() else 0
        return count[0] >= 2

    return check


@contextlib.contextmanager
def gpu_set(
    agent_factory: Callable[..., AgentProc], fault: str
) -> Iterator[tuple[AgentProc, AgentClient, AgentClient]]:
    """A one-GPU agent whose GPU was just made busy or idle (and seen so in two samples),
    with a streaming watcher and an actor."""
    agent = agent_factory(*ONE_GPU).start()
    with (
        AgentClient(agent.socket, history=False) as watcher,
        AgentClient(agent.socket, stream=False) as actor,
    ):
        assert actor.request("sim_inject", fault=fault, gpu=0).ok
        wait_for(settled(watcher, busy=fault == "busy"), f"the GPU {fault}", 20)
        yield agent, watcher, actor


def busy_seen(watcher: AgentClient, busy: bool) -> Callable[[], bool]:
    def check() -> bool:
        frame = watcher.recv()
        return isinstance(frame, Sample) and ((frame.gpus[0].util_gpu or 0) > 5) == busy

    return check


def test_drain_waits_for_the_gpu_work_then_reports_drained(
    agent_factory: Callable[..., AgentProc],
) -> None:
    events: list[Event] = []
    with gpu_set(agent_factory, "busy") as (agent, watcher, actor):
        answer = actor.request("drain", reason="bad fan; $(id)")
        assert answer.ok, answer.error
        assert answer.result is not None
        assert answer.result["after"]["state"] == "draining"
        seen = state_events(watcher, events)
        wait_for(lambda: seen("draining"), "the draining event", 20)
        assert actor.request("sim_inject", fault="idle", gpu=0).ok
        drained = wait_for(lambda: seen("drained"), "the drained event", 20)
        assert drained.state is not None and drained.state.reason == "bad fan; $(id)"
        assert actor.request("state").result == {**answer.result["after"], "state": "drained",
                                                 "deadline": None}  # fmt: skip
        assert actor.request("resume", reason="fan replaced").ok
        wait_for(lambda: seen("schedulable"), "the schedulable event", 20)
    assert StateStore(agent.state_dir).load().state == "schedulable"
    ops = [(e.op, e.result) for e in AuditLog(agent.state_dir).entries() if e.op != "sim_inject"]
    assert ops == [("drain", "ok"), ("resume", "ok")]


def test_a_drain_timeout_with_work_still_running_leaves_the_node_draining(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """DRAINED means no work: past the drain's timeout a busy node stays DRAINING, and the
    agent tells every console once; it is DRAINED when the work ends."""
    with gpu_set(agent_factory, "busy") as (_, watcher, actor):
        answer = actor.request("drain", reason="urgent", timeout=0.2)
        assert answer.result is not None and answer.result["after"]["state"] == "draining"

        def told() -> Event | None:
            frame = watcher.recv()
            if isinstance(frame, Event) and frame.kind == "state":
                assert frame.state is not None and frame.state.state != "drained", frame
            if isinstance(frame, Event) and frame.kind == "notice":
                return frame
            return None

        notice = wait_for(told, "the notice that the timeout passed", 20)
        assert notice.message == (
            "drain timeout passed with work still running on gpu0: still draining"
        )
        assert (actor.request("state").result or {})["state"] == "draining"
        assert actor.request("sim_inject", fault="idle", gpu=0).ok
        events: list[Event] = []
        wait_for(lambda: state_events(watcher, events)("drained"), "drained once idle", 20)


def test_a_gpu_reset_waits_for_the_gpu_to_be_idle(agent_factory: Callable[..., AgentProc]) -> None:
    with gpu_set(agent_factory, "busy") as (agent, watcher, actor):
        busy = actor.request("restart", target="gpu0", reason="XID 79 earlier")
        assert (busy.ok, busy.code) == (False, "gpu_busy")
        assert actor.request("sim_inject", fault="idle", gpu=0).ok
        wait_for(settled(watcher, busy=False), "the GPU idle", 20)
        done = actor.request("restart", target="gpu0", reason="XID 79 earlier")
        assert done.ok, done
        assert done.result is not None and done.result["message"].startswith("gpu 0: reset")
        outside = actor.request("restart", target="sshd.service", reason="r")
        assert (outside.ok, outside.code) == (False, "unknown_target")
        assert outside.error is not None
        assert outside.error.endswith(" (allowed: gpu0)"), "a simulated node: its GPU only"
        log = [(e.op, e.result) for e in AuditLog(agent.state_dir).entries()]
        assert log[-3:] == [("sim_inject", "ok"), ("restart", "ok"), ("restart", "refused")]


def test_the_audit_entry_is_on_disk_when_the_agent_dies_right_after_replying(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*ONE_GPU).start()
    with AgentClient(agent.socket, stream=False) as actor:
        assert actor.request("drain", reason="before the crash").ok
    agent.stop(signal.SIGKILL)
    [entry] = [e for e in AuditLog(agent.state_dir).entries() if e.op == "drain"]
    assert (entry.result, entry.args) == ("ok", {"reason": "before the crash"})
    assert StateStore(agent.state_dir).load().reason == "before the crash"


def agent_audit(agent: AgentProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), "audit", "--state-dir", str(agent.state_dir), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_gpufleet_agent_audit_prints_the_log_on_the_node(
    agent_factory: Callable[..., AgentProc],
) -> None:
    with gpu_set(agent_factory, "idle") as (agent, _, actor):
        assert actor.request("drain", reason='fan "A"; $(id) ünï').ok
        assert actor.request("resume").ok
    lines = agent_audit(agent)
    assert lines.returncode == 0, lines.stderr
    [_, drain, resume] = lines.stdout.splitlines()
    assert drain.endswith('drain  ok  fan "A"; $(id) ünï; drained: GPUs idle')
    assert "  resume  ok  schedulable" in resume
    as_json = [json.loads(x) for x in agent_audit(agent, "--json").stdout.splitlines()]
    assert [e["op"] for e in as_json] == ["sim_inject", "drain", "resume"]
    assert as_json[1]["args"] == {"reason": 'fan "A"; $(id) ünï'}
    assert agent_audit(agent, "--since", "1h").stdout == lines.stdout
    assert agent_audit(agent, "--since", "2999-01-01").stdout == ""
    bad = agent_audit(agent, "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since 'yesterday': expected a duration (90s, 30m, 12h, 7d) or a date" in bad.stderr


def test_gpufleet_agent_audit_with_no_log_says_so(short_tmp: Path) -> None:
    done = subprocess.run(
        [*agent_command(), "audit", "--state-dir", str(short_tmp / "never")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "no audit log at" in done.stderr


def test_a_node_restarted_through_the_agent_is_back_in_service_on_its_new_boot(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """What a node restart leaves on disk (drained, to resume after boot X), and the agent
    starting on another boot: it resumes the node itself and says so in the audit log."""
    agent = agent_factory(*ONE_GPU)
    agent.state_dir.mkdir(parents=True)
    left = NodeState(state="drained", reason="firmware", who="olga", since=1.0)
    StateStore(agent.state_dir).save(
        msgspec.structs.replace(left, resume_after_boot="a-boot-before-this-one")
    )
    agent.start()
    with AgentClient(agent.socket, stream=False) as actor:

        def state() -> str:
            answer = actor.request("state")
            return str(answer.result["state"]) if answer.result else ""

        wait_for(lambda: state() == "schedulable", "the node back in service", 10)
        # The state is saved, then the entry appended (under one lock, before any reply);
        # a reader of the state alone can come between the two.
        wait_for(lambda: AuditLog(agent.state_dir).entries(), "the resume audited", 10)
    [entry] = AuditLog(agent.state_dir).entries()
    assert (entry.op, entry.who, entry.result) == ("resume", "gpufleet-agent", "ok")
    assert entry.args["reason"] == "back after the reboot asked by olga"


async def test_a_drained_simulated_node_takes_no_new_work(tmp_path: Path) -> None:
    """The demo's nodes: a drain ends (DRAINING, then DRAINED) because the simulator starts no
    work on a drained node, and running work ends in its own time. Simulated time: 5 s a
    tick, so two simulated minutes are 24 ticks."""
    config = AgentConfig(
        agent=AgentSection(
            node_name="demo01",
            socket=str(tmp_path / "agent.sock"),
            state_dir=str(tmp_path / "state"),
            backend="sim",
            interval=0.05,
        )
    )
    backend = SimBackend(8, seed=0, node="demo01", interval=5.0, spells=DEMO_SPELLS)
    backend.inject("busy", 0)
    agent = Agent(config, backend)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.serving.is_set() or task.done(), "the agent serving")
        request = Request(id=1, op="drain", args={"reason": "demo"})
        answer = await agent.handler.handle(OPERATOR, request)
        assert answer.ok and answer.result is not None
        assert answer.result["after"]["state"] == "draining"
        assert agent.sampler.latest is not None
        start = agent.sampler.latest.seq

        def seq() -> int:
            return agent.sampler.latest.seq if agent.sampler.latest else 0

        await until(lambda: agent.state.state == "drained" or seq() > start + 24, "24 ticks")
        assert agent.state.state == "drained", "within two simulated minutes"
        at = seq()
        await until(lambda: seq() > at + 50, "250 simulated seconds more")
        frames = [decode(line) for line in agent.sampler.replay]
        readings = [r for f in frames if isinstance(f, Sample) and f.seq > at for r in f.gpus]
        assert len(readings) >= 50 * 8
        assert all(r.util_gpu == 0 for r in readings), "no new work on a drained node"
    finally:
        stop.set()
        await task
