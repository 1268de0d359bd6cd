"""The fleet view's lines above the table at 80 columns: the totals, the filter's note and the
sort are all on screen, however many counts the fleet needs said (they once ran off the end of
one line: the alert count, "no node matches (...)" and the sort were cut without a mark)."""

from __future__ import annotations

import pytest
from textual.geometry import Region
from textual.widgets import Input

from agents.protocol import NodeState
from console.tui.fleet_view import FleetScreen
from tests.support.fleetapp import make
from tests.tui.fleetdata import SimFleet

pytestmark = pytest.mark.tui


def drawn(screen: FleetScreen) -> list[str]:
    """The totals as the terminal shows them (cut to the widget's region), line by line."""
    w = screen.query_one("#totals")
    return [s.text for s in w.render_lines(Region(0, 0, w.size.width, w.size.height))]


@pytest.mark.parametrize("text", ["gpu", "zzz"])
async def test_at_80_columns_the_totals_filter_and_sort_are_all_said(text: str) -> None:
    sim = SimFleet()
    for name in ("gpu01", "gpu02"):
        state = NodeState(state="draining", reason="r")
        sim.fleet.apply(name, sim.nodes[name].inventory(state), sim.clock.now)
    sim.nodes["gpu05"].backend.inject("xid79", 2)
    sim.step()
    app = make(sim)
    async with app.run_test(size=(80, 24)) as pilot:
        app.refresh_fleet()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        await pilot.press("slash")
        screen.query_one("#filter", Input).value = text
        await pilot.press("enter")
        await pilot.pause()
        lines = drawn(screen)
        said = " ".join(line.strip() for line in lines)
        assert "2 draining, 1 drained" in said, lines
        assert "alerts" in said, lines
        note = "showing 6 (gpu)" if text == "gpu" else "no node matches (zzz)"
        assert note in said, lines
        assert "sort NODE" in said, lines
        assert all(not line.rstrip().endswith("…") for line in lines), "nothing cut"
        # the table starts below the lines it needs: no row hidden under them
        assert screen.table.region.y == screen.query_one("#totals").region.bottom + 1


async def test_on_a_wide_terminal_the_totals_keep_one_line() -> None:
    app = make(SimFleet())
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert len(drawn(screen)) == 1, drawn(screen)
        assert screen.table.region.y == screen.query_one("#totals").region.bottom + 1
