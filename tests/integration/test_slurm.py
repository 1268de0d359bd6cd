"""The Slurm adapter against a real Slurm on this machine: munged, slurmctld and four slurmd
started by the test (tests/integration/slurm.py), and a real agent process whose scheduler is
Slurm, asked over its socket exactly as a console asks it. Only the GPUs are simulated.

What Slurm says is checked with Slurm's own tools (``sinfo --json``, ``scontrol show``), not
with the agent's account of it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from agents.ops.store import AuditLog
from agents.protocol import Event
from agents.serve.client import AgentClient
from tests.conftest import AgentProc, wait_for
from tests.integration.slurm import SlurmCluster, slurm_cluster_fixture  # noqa: F401

pytestmark = pytest.mark.integration

TRICKY = 'fans "A"; $(reboot) `id` ünïcødé ✓'
ONE_GPU = ("--backend", "sim", "--gpus", "1", "--interval", "0.1")


def slurm_agent(
    agent_factory: Callable[..., AgentProc],
    cluster: SlurmCluster,
    slurm_name: str,
    *,
    pools: tuple[str, ...] = (),
    name: str = "a",
) -> AgentProc:
    """An agent on a host whose Slurm NodeName is ``slurm_name`` (not its host name)."""
    config = (
        "[agent]\nnode_name = 'host-a'\n"
        f"[scheduler]\nkind = 'slurm'\nnode = '{slurm_name}'\nslurm_conf = '{cluster.conf}'\n"
        f"poll = 0.2\npools = {list(pools)!r}\n"
    )
    return agent_factory(*ONE_GPU, config=config, name=name).start()


def state_of(cluster: SlurmCluster, node: str) -> tuple[str, list[str], str]:
    n = cluster.node_json(node)
    return n["state"], n["state_flags"], n["reason"]


def test_drain_is_draining_with_a_job_then_drained_and_resume(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    job = slurm_cluster.submit("node1")
    slurm_cluster.wait_running(job)
    agent = slurm_agent(agent_factory, slurm_cluster, "node1")
    with (
        AgentClient(agent.socket, history=False) as watcher,
        AgentClient(agent.socket, stream=False) as actor,
    ):
        answer = actor.request("drain", reason=TRICKY)
        assert answer.ok, answer
        assert answer.result is not None
        assert answer.result["message"] == "draining: waiting for the jobs to end"
        assert answer.result["after"]["state"] == "draining"
        assert state_of(slurm_cluster, "node1") == ("allocated", ["DRAIN"], TRICKY)

        again = actor.request("drain", reason="second")
        assert again.result is not None and again.result["message"] == "already draining"

        slurm_cluster.cancel(job)  # the last job ends: Slurm calls it drained, and so do we
        events: list[Event] = []

        def drained_event() -> Event | None:
            frame = watcher.recv()
            if isinstance(frame, Event) and frame.kind == "state":
                events.append(frame)
            return next((e for e in events if e.state and e.state.state == "drained"), None)

        event = wait_for(drained_event, "the drained event", 20)
        assert event.state is not None
        assert (event.state.reason, event.state.who) == (TRICKY, "root"), "the same drain"
        assert state_of(slurm_cluster, "node1") == ("idle", ["DRAIN"], TRICKY)

        back = actor.request("resume", reason="fans replaced")
        assert back.ok and back.result is not None
        assert back.result["after"]["state"] == "schedulable"
        flags = slurm_cluster.node_json("node1")["state_flags"]
        assert "DRAIN" not in flags
    audit = [(e.op, e.result, e.args.get("reason")) for e in AuditLog(agent.state_dir).entries()]
    assert audit == [
        ("drain", "ok", TRICKY), ("drain", "ok", "second"), ("resume", "ok", "fans replaced")
    ]  # fmt: skip


def test_drain_of_an_idle_node_is_drained_at_once(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = slurm_agent(agent_factory, slurm_cluster, "node2")
    with AgentClient(agent.socket, stream=False) as actor:
        answer = actor.request("drain", reason="line one\nline two")
        assert answer.result is not None
        assert (answer.result["message"], answer.result["after"]["state"]) == (
            "drained (slurm)",
            "drained",
        )
    assert state_of(slurm_cluster, "node2") == ("idle", ["DRAIN"], "line one\nline two")


def test_an_admins_own_scontrol_is_followed(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = slurm_agent(agent_factory, slurm_cluster, "node3")
    with AgentClient(agent.socket, history=False) as watcher:
        slurm_cluster.check(
            ["scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=by hand"]
        )

        def followed() -> Event | None:
            frame = watcher.recv()
            if isinstance(frame, Event) and frame.state and frame.state.state == "drained":
                return frame
            return None

        event = wait_for(followed, "the agent to follow Slurm", 20)
        assert event.state is not None
        assert (event.state.reason, event.state.who) == ("by hand", "slurm")


def test_reboot_is_asked_of_slurm_and_recorded(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = slurm_agent(agent_factory, slurm_cluster, "node2")
    with AgentClient(agent.socket, stream=False) as actor:
        answer = actor.request("restart", target="node", reason="firmware 2.1")
        assert answer.ok, answer
        assert answer.result is not None
        assert answer.result["message"] == "reboot requested: slurm reboots the node when idle"
        assert answer.result["after"]["state"] == "drained"
    _, flags, reason = state_of(slurm_cluster, "node2")
    assert {"DRAIN", "REBOOT_REQUESTED"} <= set(flags)
    assert reason == "firmware 2.1"
    [entry] = [e for e in AuditLog(agent.state_dir).entries() if e.op == "restart"]
    assert (entry.result, entry.args["target"]) == ("ok", "node")


def test_reassign_moves_the_node_between_partitions(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = slurm_agent(agent_factory, slurm_cluster, "node3", pools=("gpu", "cpu"))
    with AgentClient(agent.socket, stream=False) as actor:
        moved = actor.request("reassign", pool="cpu", reason="CPU work this week")
        assert moved.ok, moved
        assert moved.result is not None and moved.result["message"] == "pool gpu -> cpu"
        assert slurm_cluster.node_json("node3")["partitions"] == ["cpu"]
        show = slurm_cluster.check(["scontrol", "show", "partition", "-o"])
        assert " Nodes=node[1-2] " in show and " Nodes=node[3-4] " in show, show
        again = actor.request("reassign", pool="cpu", reason="again")
        assert again.result is not None and again.result["message"] == "already in pool cpu"
        unknown = actor.request("reassign", pool="debug", reason="r")
        assert (unknown.ok, unknown.code) == (False, "unknown_pool")
        assert unknown.error == "no pool debug here (pools: gpu, cpu)"
    assert slurm_cluster.node_json("node1")["partitions"] == ["gpu"], "others stay"


def test_a_partition_slurm_does_not_have_is_named(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = slurm_agent(agent_factory, slurm_cluster, "node4")
    with AgentClient(agent.socket, stream=False) as actor:
        answer = actor.request("reassign", pool="nosuch", reason="r")
        assert (answer.ok, answer.code) == (False, "unknown_pool")
        assert answer.error == "Slurm has no partition nosuch"
    assert slurm_cluster.node_json("node4")["partitions"] == ["cpu"]


def test_scontrols_own_error_reaches_the_operator_verbatim(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    """The agent's config names a NodeName Slurm does not have: Slurm says so, in its words."""
    agent = slurm_agent(agent_factory, slurm_cluster, "node9")
    with AgentClient(agent.socket, stream=False) as actor:
        answer = actor.request("drain", reason="r")
        assert (answer.ok, answer.code) == (False, "command_failed")
        assert answer.error == "scontrol: slurm_update error: Invalid node name specified"
    [entry] = AuditLog(agent.state_dir).entries()
    assert (entry.result, entry.message) == ("failed", answer.error)


def test_nodes_moved_into_one_partition_at_once_all_arrive(
    slurm_cluster: SlurmCluster, agent_factory: Callable[..., AgentProc]
) -> None:
    """Slurm 22.05 has no ``Nodes+=``: each agent rewrites the partition's whole list, and two
    doing it at once must not drop each other's node (as a console's fan-out would)."""
    agents = [
        slurm_agent(agent_factory, slurm_cluster, n, pools=("gpu", "cpu"), name=n)
        for n in ("node1", "node2", "node3")
    ]
    clients = [AgentClient(a.socket, stream=False) for a in agents]
    try:
        for c in clients:
            c.__enter__()
        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(
                pool.map(lambda c: c.request("reassign", pool="cpu", reason="r"), clients)
            )
    finally:
        for c in clients:
            c.__exit__(None, None, None)
    assert all(a.ok for a in answers), answers
    nodes = slurm_cluster.nodes_json()
    assert {n: nodes[n]["partitions"] for n in nodes} == {
        "node1": ["cpu"], "node2": ["cpu"], "node3": ["cpu"], "node4": ["cpu"]
    }  # fmt: skip
