"""What the operator sees, pinned as SVG snapshots (pytest-textual-snapshot) at a fixed
terminal size, on a deterministic fleet: simulated nodes with a fixed seed and fixed clocks.
A change to the screen shows up here as a diff to look at; update with --snapshot-update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from console.tui.app import FleetApp
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui
SIZE = (140, 36)
#: Every view at the smallest terminal an operator may have and at a wide one.
VIEW_SIZES = {"80x24": (80, 24), "wide": (160, 50)}
Snap = Callable[..., bool]


def make(sim: SimFleet) -> FleetApp:
    return FleetApp(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None)


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("size", VIEW_SIZES)
def test_fleet_view(snap_compare: Snap, size: str) -> None:
    """Live nodes, gpu04 drained with its reason and who@when, inf2 unreachable."""
    assert snap_compare(make(SimFleet()), terminal_size=VIEW_SIZES[size], run_before=settle)


@pytest.mark.parametrize("size", VIEW_SIZES)
def test_node_view(snap_compare: Snap, size: str) -> None:
    sim = SimFleet()
    sim.nodes["gpu01"].backend.inject("overheat", 2)
    for _ in range(6):
        sim.step()
    assert snap_compare(
        make(sim), terminal_size=VIEW_SIZES[size], press=["enter"], run_before=settle
    )


@pytest.mark.parametrize("size", VIEW_SIZES)
def test_stale_node(snap_compare: Snap, size: str) -> None:
    sim = SimFleet()
    app = make(sim)
    for _ in range(7):
        sim.step(skip=("gpu02",))

    async def age(pilot: Pilot[Any]) -> None:
        app.refresh_fleet()
        await settle(pilot)

    assert snap_compare(app, terminal_size=VIEW_SIZES[size], run_before=age)


@pytest.mark.parametrize("size", VIEW_SIZES)
def test_drained_node_view(snap_compare: Snap, size: str) -> None:
    app = make(SimFleet())
    keys = ["down", "down", "down", "enter"]
    assert snap_compare(app, terminal_size=VIEW_SIZES[size], press=keys, run_before=settle)


def test_drain_dialog(snap_compare: Snap) -> None:
    """Two marked nodes: the count, the hostlist, who runs there, Cancel focused."""
    app = make(SimFleet())
    assert snap_compare(app, terminal_size=SIZE, press=["space", "space", "d"])


@pytest.mark.parametrize("size", VIEW_SIZES)
def test_alerts_view(snap_compare: Snap, size: str) -> None:
    sim = SimFleet()
    sim.nodes["gpu05"].backend.inject("xid79", 2)
    sim.nodes["gpu03"].backend.inject("ecc", 0)
    sim.step()
    assert snap_compare(make(sim), terminal_size=VIEW_SIZES[size], press=["a"], run_before=settle)


def test_fleet_view_light_theme(snap_compare: Snap) -> None:
    """The same rows on a light background: states and alerts must stay legible."""
    app = make(SimFleet())

    async def light(pilot: Pilot[Any]) -> None:
        app.theme = "textual-light"
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=light)
