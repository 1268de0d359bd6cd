"""What the operator sees, pinned as SVG snapshots (pytest-textual-snapshot) at a fixed
terminal size, on a deterministic fleet: simulated nodes with a fixed seed and fixed clocks.
A change to the screen shows up here as a diff to look at; update with --snapshot-update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot

from console.tui.app import FleetApp, make_app
from tests.conftest import until
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui
SIZE = (140, 36)
#: Every view at the smallest terminal an operator may have and at a wide one.
VIEW_SIZES = {"80x24": (80, 24), "wide": (160, 50)}
Snap = Callable[..., bool]


def make(sim: SimFleet) -> FleetApp:
    return make_app(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None)


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
def test_down_node_view(snap_compare: Snap, size: str) -> None:
    """gpu02's agent stopped 22 s ago: its last readings dimmed and said to be old."""
    sim = SimFleet()
    for _ in range(22):
        sim.step(skip=("gpu02",))
    sim.fleet.set_link("gpu02", "agent_down", "no agent at /run/gpufleet.sock", sim.clock.now)
    app = make(sim)

    async def open_it(pilot: Pilot[Any]) -> None:
        app.refresh_fleet()
        app.open_node("gpu02")
        await settle(pilot)

    assert snap_compare(app, terminal_size=VIEW_SIZES[size], run_before=open_it)


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


DIALOG_SIZES = {"80x24": (80, 24), "wide": SIZE}
#: Keys that open each dialog on two marked nodes (the results: a drain sent and refused).
DIALOGS = {
    "drain": ["space", "space", "d"],
    "resume": ["space", "space", "u"],
    "restart": ["space", "space", "r"],
    "reassign": ["space", "space", "p"],
    "results": ["space", "space", "d", *"psu", "enter", "enter"],
    "help": ["question_mark"],
}


@pytest.mark.parametrize("size", DIALOG_SIZES)
@pytest.mark.parametrize("which", DIALOGS)
def test_dialog(snap_compare: Snap, which: str, size: str) -> None:
    """Each dialog at 80x24 and wide: the title, the form and both buttons in sight."""
    assert snap_compare(
        make(SimFleet()),
        terminal_size=DIALOG_SIZES[size],
        press=DIALOGS[which],
        run_before=settle,
    )


@pytest.mark.parametrize("size", DIALOG_SIZES)
def test_palette_actions(snap_compare: Snap, size: str) -> None:
    """The palette, searched for a verb: the action on the marked nodes is offered."""

    async def search(pilot: Pilot[Any]) -> None:
        await pilot.press("space", "space", "colon")
        await until(lambda: isinstance(pilot.app.screen, CommandPalette), "the palette")
        await pilot.press(*"drain")
        palette = pilot.app.screen
        await until(lambda: palette.query_one(CommandList).option_count > 0, "the palette's hits")
        await pilot.pause()

    assert snap_compare(make(SimFleet()), terminal_size=DIALOG_SIZES[size], run_before=search)
