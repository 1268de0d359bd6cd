"""The screen does not freeze its heap (a full collection) while the operator is typing."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from console.model.heap import HeapFreezer
from console.tui.app import TYPING_S, make_app
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui


@dataclass
class FakeLink:
    ended: int = 0


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


async def test_the_heap_is_frozen_again_only_once_the_operator_pauses() -> None:
    sim = SimFleet()
    app = make_app(sim.fleet, requester=Requests("refuse"), clock=sim.clock, refresh_s=None)
    links = {name: FakeLink() for name in sim.fleet.nodes}
    app.heap = HeapFreezer(sim.fleet, links, clock=sim.clock, refreeze_nodes=1, refreeze_every=0)
    async with app.run_test(size=(160, 45)) as pilot:
        app.refresh_fleet()
        assert app.heap.freezes == 1, "frozen once the fleet has answered"
        links["gpu01"].ended += 1  # its session ended: the freeze keeps it
        await pilot.press("down")
        app.refresh_fleet()
        assert app.heap.freezes == 1, "not while keys are coming"
        sim.clock.now += TYPING_S / 2
        await pilot.press("down")
        sim.clock.now += TYPING_S / 2
        app.refresh_fleet()
        assert app.heap.freezes == 1
        sim.clock.now += TYPING_S / 2
        app.refresh_fleet()
        assert app.heap.freezes == 2, "frozen again once the operator paused"
