"""The console's screen on a simulated fleet (tests/tui/fleetdata.py), as the TUI tests start
it: the app at the size they draw it, and what its fleet view lists."""

from __future__ import annotations

from console.tui.app import FleetApp, make_app
from console.tui.fleet_view import FleetScreen
from tests.tui.fleetdata import Requests, SimFleet

SIZE = (160, 45)


def make(sim: SimFleet, *, readonly: bool = False, answer: str = "refuse") -> FleetApp:
    return make_app(
        sim.fleet,
        requester=Requests(answer),
        clock=sim.clock,
        refresh_s=None,
        readonly=readonly,
    )


def fleet_screen(app: FleetApp) -> FleetScreen:
    screen = app.screen
    assert isinstance(screen, FleetScreen)
    return screen


def names(app: FleetApp) -> list[str]:
    return fleet_screen(app).table.row_names
