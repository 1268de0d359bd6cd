"""The verbs as the console sends them. The requester here is a stand-in for the links (the
real request path over SSH is tested in tests/integration/test_link.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agents.protocol import GpuProcess, NodeState, Response
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.model.selector import parse_selector, select
from console.ops.actions import (
    ActionError,
    NodeResult,
    affected,
    busy_without_processes,
    guard_warnings,
    known_pools,
    request_args,
    restart_targets,
    run_action,
    why_no_restart_targets,
)
from console.ops.operate import outcome_code, result_lines
from console.present.rows import parse_filter, summarize
from console.present.status import status_doc
from console.sources.delivery import NotDelivered
from tests.conftest import until
from tests.fakes.simnode import Node, feed

FLEET = '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[1-8]"\n'


@pytest.fixture
def fleet() -> FleetState:
    f = FleetState(parse_inventory(FLEET, "f").nodes)
    for name in f.nodes:
        state = None
        if name == "gpu8":
            state = NodeState(state="drained", reason="x", who="bob", since=0.0)
        n = Node(name, gpus=2)
        f.apply(name, n.inventory(state), 0.0)
        feed(f, n, 1.0)
    return f


def test_reason_and_choice_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(ActionError, match="drain needs a reason"):
        request_args("drain", "  ", None)
    with pytest.raises(ActionError, match="reassign needs a pool"):
        request_args("reassign", "move", None)
    assert request_args("resume", "", None) == {}
    assert request_args("restart", " flaky ", "agent") == {"reason": "flaky", "target": "agent"}


def test_guard_warns_when_a_pool_would_lose_more_than_a_quarter(fleet: FleetState) -> None:
    assert guard_warnings(fleet, ["gpu1"], "drain") == [], "2 of 8 out: fine"
    [warning] = guard_warnings(fleet, ["gpu1", "gpu2"], "drain")
    assert warning.startswith("pool train: 3 of 8 nodes would be out of service")
    assert guard_warnings(fleet, ["gpu1", "gpu2"], "resume") == []


def test_restart_targets_are_those_every_node_allows(fleet: FleetState) -> None:
    assert restart_targets(fleet, ["gpu1", "gpu2"]) == ["agent", "node", "gpu0", "gpu1"]
    fleet.apply("gpu1", Node("gpu1", gpus=2).inventory(units=["slurmd.service"]), 2.0)
    fleet.apply("gpu2", Node("gpu2", gpus=1).inventory(units=["slurmd.service"]), 2.0)
    assert restart_targets(fleet, ["gpu1"])[-1] == "slurmd.service", "the node's own list"
    assert restart_targets(fleet, ["gpu1", "gpu2"]) == ["agent", "node", "gpu0", "slurmd.service"]
    assert restart_targets(fleet, ["gpu1", "gpu3"]) == ["agent", "node", "gpu0", "gpu1"]


def test_an_empty_target_list_says_why(fleet: FleetState) -> None:
    assert why_no_restart_targets(fleet, ["gpu1"]) is None
    old_agent = msgspec.structs.replace(Node("gpu1").inventory(), restart_targets=[])
    fleet.apply("gpu1", old_agent, 2.0)  # what a 1.3 agent's inventory decodes to
    fleet.apply("gpu2", old_agent, 2.0)
    assert why_no_restart_targets(fleet, ["gpu1", "gpu2", "gpu3"]) == (
        "no restart targets: gpu[1-2] list none (an agent older than protocol 1.4, or nothing "
        "allowed in its [restart])"
    )
    fleet.nodes["gpu4"].inventory = None
    assert "gpu4 not heard from yet" in (why_no_restart_targets(fleet, ["gpu3", "gpu4"]) or "")
    only_agent = msgspec.structs.replace(Node("gpu5").inventory(), restart_targets=["agent"])
    only_node = msgspec.structs.replace(Node("gpu6").inventory(), restart_targets=["node"])
    fleet.apply("gpu5", only_agent, 2.0)
    fleet.apply("gpu6", only_node, 2.0)
    assert "choose fewer" in (why_no_restart_targets(fleet, ["gpu5", "gpu6"]) or "")


def test_affected_lists_gpu_processes(fleet: FleetState) -> None:
    view = fleet.nodes["gpu1"]
    assert view.sample is not None
    procs = [p for r in view.sample.gpus for p in r.processes or []]
    assert procs, "the simulator runs a job with a visible process on gpu1"
    got = affected(fleet, ["gpu1"])
    assert [(a.pid, a.user) for a in got] == [(p.pid, p.user) for p in procs]
    assert all(isinstance(p, GpuProcess) for p in procs)


def test_busy_gpus_without_processes_are_pointed_out(fleet: FleetState) -> None:
    """gpu3's busy GPU runs in a container: no process listed, and the modal must say so."""
    assert busy_without_processes(fleet, ["gpu1", "gpu2", "gpu3"]) == ["gpu3"]


class Requester:
    """Answers like agents would: gpu1 accepts, gpu2 refuses, gpu3's link is down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        self.sent.append((node, op, args))
        await asyncio.sleep(0)
        if node == "gpu3":
            raise NotDelivered(f"{node}: not sent, the node is unreachable")
        if node == "gpu2":
            return Response(id=1, ok=False, code="unknown_op", error="unknown request 'drain'")
        return Response(id=1, ok=True, result={"message": "draining"})


async def test_each_node_gets_its_own_result_and_nothing_is_called_success() -> None:
    req = Requester()
    seen: list[NodeResult] = []
    results = await run_action(req, ["gpu1", "gpu2", "gpu3"], "drain", {"reason": "r"}, seen.append)
    by = {r.node: r for r in results}
    assert (by["gpu1"].outcome, by["gpu1"].message) == ("ok", "draining")
    assert by["gpu2"].outcome == "refused"
    assert by["gpu2"].message == "unknown_op: unknown request 'drain'"
    assert by["gpu3"].outcome == "not_delivered"
    assert "not sent" in by["gpu3"].message
    assert sorted(r.node for r in seen) == ["gpu1", "gpu2", "gpu3"]
    assert {op for _, op, _ in req.sent} == {"drain"}


class LostAnswer:
    """gpu1 applies the drain but its answer is lost with the link; the link is down for two
    tries, then the node answers ``state`` with what the drain did."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = 2

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        self.sent.append(op)
        if op == "drain":
            raise NotDelivered(f"{node}: the link dropped before the answer", maybe=True)
        if self.down:
            self.down -= 1
            raise NotDelivered(f"{node}: not sent, the node is connecting")
        drained = {"state": "drained", "reason": "r", "who": "olga", "pool": "train"}
        return Response(id=2, ok=True, result=drained)


async def test_a_lost_answer_is_unknown_and_the_state_read_again_never_resent() -> None:
    req = LostAnswer()
    [result] = await run_action(req, ["gpu1"], "drain", {"reason": "r"})
    assert result.outcome == "unknown"
    assert result.message == (
        "gpu1: the link dropped before the answer; the node is now drained ('r' by olga), "
        "pool train"
    )
    assert req.sent == ["drain", "state", "state", "state"], "the drain was sent once"
    assert outcome_code([result]) == 1


async def test_no_nodes_is_an_error() -> None:
    with pytest.raises(ActionError, match="no nodes"):
        await run_action(Requester(), [], "drain", {"reason": "r"})


def test_exit_codes_of_an_operation() -> None:
    ok = NodeResult("a", "ok", "drained")
    refused = NodeResult("b", "refused", "forbidden: vic is a viewer")
    lost = NodeResult("c", "not_delivered", "c: not sent, the node is unreachable")
    assert outcome_code([ok, ok]) == 0
    assert outcome_code([ok, refused]) == 1
    assert outcome_code([ok, lost]) == 1
    assert outcome_code([refused, lost]) == 1
    assert outcome_code([lost, lost]) == 3, "no node reached"
    assert result_lines([ok, refused], as_json=False) == [
        "a  ok             drained",
        "b  refused        forbidden: vic is a viewer",
    ]


def test_the_guard_counts_what_the_action_changes(fleet: FleetState) -> None:
    """Draining a node already out of service (unreachable, drained) takes nothing more out:
    no warning; when it warns, the line says which nodes are already out, and why."""
    for name in ("gpu5", "gpu6", "gpu7"):
        fleet.set_link(name, "unreachable", "Connection refused", 1000.0)
    assert guard_warnings(fleet, ["gpu5"], "drain") == [], "unreachable: nothing changes"
    assert guard_warnings(fleet, ["gpu8", "gpu6"], "drain") == []
    [warning] = guard_warnings(fleet, ["gpu1", "gpu5"], "drain")
    assert warning == (
        "pool train: 5 of 8 nodes would be out of service (more than 25%): drain gpu1; "
        "already out: gpu8 drained, gpu[5-7] unreachable"
    )


def test_a_reassigned_node_is_in_its_agents_pool_everywhere() -> None:
    """The agent's pool wins over the inventory's once the agent has one: the status
    document (with where it came from), the selector, the rows and the guard's counting."""
    two = FLEET + '[[group]]\nname = "infer"\npool = "infer"\nnodes = "inf[1-4]"\n'
    f = FleetState(parse_inventory(two, "f").nodes)
    for name in f.nodes:
        n = Node(name, gpus=2)
        state = NodeState(pool="train") if name == "inf1" else None
        f.apply(name, n.inventory(state), 0.0)
        feed(f, n, 1.0)
    moved, kept = f.nodes["inf1"], f.nodes["inf2"]
    assert (moved.pool, moved.pool_source) == ("train", "agent")
    assert (kept.pool, kept.pool_source) == ("infer", "inventory")
    doc = status_doc([moved], 2.0)[0]
    assert (doc["pool"], doc["pool_source"], doc["inventory_pool"]) == ("train", "agent", "infer")
    chosen = select(f.nodes.values(), parse_selector("pool=train"))
    assert [v.name for v in chosen] == [*(f"gpu{i}" for i in range(1, 9)), "inf1"]
    assert summarize(moved, 2.0).pool == "train"
    assert parse_filter("pool=infer").matches(moved) is False
    # train: 9 nodes now, so three drained is a third; infer: 3 nodes, one is a third.
    [warning] = guard_warnings(f, ["gpu1", "gpu2", "inf1"], "drain")
    assert warning.startswith("pool train: 3 of 9 nodes")
    assert guard_warnings(f, ["inf2"], "drain")[0].startswith("pool infer: 1 of 3 nodes")
    # A pool no one knows (not the inventory's, not an agent's) is most likely a typo.
    assert known_pools(f) == {"train", "infer"}


async def test_each_request_is_told_as_it_goes_out() -> None:
    """What an interrupted operation reports: the nodes a request went out to (sent, answer
    or not) apart from those it never reached its turn for."""
    gate = asyncio.Semaphore(0)

    class Hangs(Requester):
        async def request(
            self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
        ) -> Response:
            if node == "gpu2":
                await gate.acquire()  # never released: its answer never comes
            return await super().request(node, op, args, wait)

    sent: list[str] = []
    answered: list[NodeResult] = []
    nodes = ["gpu1", "gpu2"]
    task = asyncio.create_task(
        run_action(Hangs(), nodes, "drain", {"reason": "r"}, answered.append, on_send=sent.append)
    )
    await until(lambda: bool(answered), "gpu1's answer")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(sent) == ["gpu1", "gpu2"]
    assert [r.node for r in answered] == ["gpu1"]
