"""Deterministic fleets for the screen's tests: simulated nodes fed through the agent's own
sampler into a FleetState, on a clock the test moves. (The GPUs are simulated because no GPU
exists here; the model and the screen are the real ones.)"""

from __future__ import annotations

from typing import Any

from agents.protocol import NodeState, Response
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from tests.fakes.simnode import Node, feed

INVENTORY = (
    '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[01-06]"\n'
    '[[group]]\nname = "infer"\npool = "infer"\nnodes = "inf[1-2]"\n'
)
SINCE = 1_790_000_000.0  # 2026-09-21 14:13 UTC: a fixed "when" for drained nodes


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SimFleet:
    """A small fleet: gpu01-06 and inf1 live, gpu04 drained, inf2 unreachable."""

    def __init__(self, history: int = 30) -> None:
        self.fleet = FleetState(parse_inventory(INVENTORY, "test").nodes)
        self.clock = Clock()
        self.nodes = {name: Node(name, gpus=4) for name in self.fleet.nodes}
        for name, node in self.nodes.items():
            state = None
            if name == "gpu04":
                state = NodeState(state="drained", reason="HBM errors", who="alice", since=SINCE)
            self.fleet.apply(name, node.inventory(state), self.clock.now)
        self.fleet.set_link("inf2", "unreachable", "connection refused", self.clock.now)
        for _ in range(history):
            self.step()

    def step(self, skip: tuple[str, ...] = ()) -> None:
        self.clock.now += 1.0
        for name, node in self.nodes.items():
            if name != "inf2" and name not in skip:
                feed(self.fleet, node, self.clock.now)


class Requests:
    """Stands in for the links' request path (tested over real SSH in test_link.py and
    test_end_to_end.py): records what was sent, and refuses (or accepts) as an agent would."""

    def __init__(self, answer: str = "refuse") -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.answer = answer

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        self.sent.append((node, op, args))
        if op == "audit":
            return Response(id=1, ok=True, result={"entries": []})
        if self.answer == "ok":
            return Response(id=1, ok=True, result={"message": f"{op} accepted"})
        return Response(id=1, ok=False, code="unknown_op", error=f"unknown request {op!r}")
