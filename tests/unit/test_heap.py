"""When the console freezes its heap, and when it freezes it again (console.model.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from console.model.fleet import FleetState
from console.model.heap import REFREEZE_MIN_NODES, HeapFreezer
from console.model.inventory import parse_inventory


@dataclass
class FakeLink:
    ended: int = 0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def fleet_of(count: int) -> tuple[FleetState, dict[str, FakeLink]]:
    fleet = FleetState(parse_inventory(f'[[group]]\nname = "g"\nnodes = "n[1-{count}]"\n').nodes)
    return fleet, {name: FakeLink() for name in fleet.nodes}


def test_frozen_once_every_node_has_answered_or_failed_or_after_the_wait() -> None:
    fleet, links = fleet_of(3)
    clock = Clock()
    heap = HeapFreezer(fleet, links, clock=clock, freeze_after=60.0)
    assert not heap.step(), "nodes still connecting"
    fleet.set_link("n1", "unreachable", "down", 1.0)
    fleet.set_link("n2", "agent_down", "down", 1.0)
    assert not heap.step()
    clock.t = 61.0
    assert heap.step(), "one node still connecting a minute on: frozen anyway"
    assert heap.freezes == 1
    assert gc.get_freeze_count() > 0

    fleet, links = fleet_of(2)
    heap = HeapFreezer(fleet, links, clock=Clock())
    for name in fleet.nodes:
        fleet.set_link(name, "unreachable", "down", 1.0)
    assert heap.step(), "settled: every node answered or failed"


def test_frozen_again_once_enough_nodes_ended_their_frozen_session_and_not_sooner() -> None:
    fleet, links = fleet_of(200)
    for name in fleet.nodes:
        fleet.set_link(name, "unreachable", "down", 0.0)
    clock = Clock()
    heap = HeapFreezer(fleet, links, clock=clock, refreeze_every=60.0)
    assert heap.step()
    needed = max(REFREEZE_MIN_NODES, 20)  # a tenth of 200
    for _ in range(5):
        links["n1"].ended += 1  # a flapping node keeps one frozen session, counted once
    for name in list(links)[1 : needed - 1]:
        links[name].ended += 1
    assert heap.stale_nodes() == needed - 1
    clock.t = 1000.0
    assert not heap.step(), "below the threshold: the garbage kept is bounded, a pause is not"
    links["n200"].ended += 1
    assert heap.step()
    assert heap.stale_nodes() == 0, "counted afresh from this freeze"
    for name in list(links)[:needed]:
        links[name].ended += 1
    clock.t = 1059.0
    assert not heap.step(), "one full collection a minute at most"
    clock.t = 1060.0
    assert heap.step()
    assert heap.freezes == 3


def test_without_links_the_heap_is_frozen_once() -> None:
    fleet, _ = fleet_of(1)
    fleet.set_link("n1", "unreachable", "down", 0.0)
    clock = Clock()
    heap = HeapFreezer(fleet, clock=clock)
    assert heap.step()
    clock.t = 1e6
    assert not heap.step()
