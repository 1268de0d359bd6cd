"""The screen's tables fit the terminal, from 80x24 up: columns keep their place as values
change, shrink then drop in their declared order, and long text is cut or wrapped, never
pushed off the screen. (Simulated GPUs: no GPU here; the model and the screen are real.)"""

from __future__ import annotations

import pytest
from rich.text import Text
from textual.content import Content
from textual.geometry import Region
from textual.widgets import DataTable

from console.tui.alerts_view import AlertsScreen
from console.tui.app import FleetApp, make_app
from console.tui.fleet_view import FleetScreen
from console.tui.node_view import NodeScreen
from console.tui.text_table import TableColumn, fit, layout, text_table
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui


def make(sim: SimFleet) -> FleetApp:
    return make_app(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None)


def test_layout_shrinks_then_drops_by_priority_and_gives_room_back() -> None:
    cols = [
        TableColumn("a", "A", 10, 4, priority=1),
        TableColumn("b", "B", 10, 6, priority=3),
        TableColumn("c", "C", 5, priority=2),
        TableColumn("d", "D", 20, 8, priority=4, grow=True),
    ]
    assert layout(cols, 100, 1) == [10, 10, 5, 71], "room to spare goes to the growing column"
    assert layout(cols, 49, 1) == [10, 10, 5, 20]
    assert layout(cols, 40, 1) == [10, 10, 5, 11], "the lowest priority shrinks first"
    assert layout(cols, 30, 1) == [7, 6, 5, 8], "then the others, down to their narrowest"
    assert layout(cols, 26, 1) == [10, 8, 5, None], "then the lowest is dropped, room given back"
    assert layout(cols, 8, 1) == [7, None, None, None]
    assert layout(cols, 3, 1) == [4, None, None, None], "the first column is never dropped"


def test_fit_cuts_with_an_ellipsis_and_escapes_controls() -> None:
    assert fit("abc", 5) == "abc  "
    assert fit("abcdef", 4) == "abc…"
    assert fit("a\x1bb", 6) == "a\\x1bb"
    assert fit("日本語", 5) == "日本…"


def test_text_table_columns_do_not_follow_the_values() -> None:
    cols = [TableColumn("n", "N", 3), TableColumn("v", "VALUE", 8)]
    narrow = text_table(cols, [[("5", ""), ("x", "")]], 40).plain
    wide = text_table(cols, [[("100", ""), ("xxxxxxxxxxxx", "")]], 40).plain
    assert narrow.splitlines()[0] == wide.splitlines()[0]
    assert wide.splitlines()[1] == "100  xxxxxxx…"


async def test_the_fleet_table_at_80_columns_keeps_the_numbers_and_the_reason() -> None:
    """At 80x24 the LINK column's width once pushed HOT, POWER, ALERTS and REASON off screen."""
    app = make(SimFleet())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        header = screen.table.render_line(0).text
        assert len(header) == 80
        for label in ("NODE", "STATE", "LINK", "UTIL", "HOT", "POWER W", "ALERTS", "REASON"):
            assert label in header, f"{label} not on screen: {header!r}"
        shown = screen.table.shown_columns()
        assert "reason" in shown and "util_max" not in shown
        drained = screen.table.render_line(1 + screen.table.row_names.index("gpu04")).text
        assert "HBM errors" in drained
        assert screen.table.virtual_size.width <= screen.table.size.width, "no sideways scroll"
    app = make(SimFleet())
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert len(screen.table.shown_columns()) == len(screen.table.columns), "wide: all"


async def test_the_node_view_columns_stay_put_as_readings_change() -> None:
    """A GPU's columns once moved whenever a reading gained a digit (100 %, 1,000 W)."""
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=(140, 40)) as pilot:
        app.open_node("gpu01")
        await pilot.pause()
        node = app.screen
        assert isinstance(node, NodeScreen)
        frames = set()
        for step in range(12):
            if step == 4:
                sim.nodes["gpu01"].backend.inject("overheat", 2)  # util drops to one digit
            sim.step()
            app.refresh_fleet()
            await pilot.pause()
            rendered = node.query_one("#gpus").render()
            assert isinstance(rendered, Text | Content)
            lines = rendered.plain.splitlines()
            frames.add(lines[0])
            # each value ends where its column ends: the columns' edges are the header's
            for line in lines[1:]:
                assert len(line) <= len(lines[0]) + 40
        assert len(frames) == 1, frames


async def test_alert_text_wraps_within_the_screen() -> None:
    sim = SimFleet()
    reason = "connection refused by 10.0.0.1 port 22 after " + "a very long explanation " * 6
    sim.fleet.set_link("inf2", "unreachable", reason, sim.clock.now)
    app = make(sim)
    async with app.run_test(size=(80, 24)) as pilot:
        app.refresh_fleet()
        app.open_alerts()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, AlertsScreen)
        table = screen.query_one("#alerts", DataTable)
        assert table.virtual_size.width <= table.size.width, "alert text runs past the screen"
        row = next(i for i in range(table.row_count) if "inf2" in str(table.get_row_at(i)[3]))
        assert reason.strip() in str(table.get_row_at(row)[4]), "the whole text, wrapped"
        assert table.rows[list(table.rows)[row]].height > 1


async def test_the_alerts_ages_are_shown_whole() -> None:
    """ "ended 4m26s ago" was cut to "ended 4m26s a…": the columns were sized for "59m ago"."""
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=(80, 24)) as pilot:
        app.refresh_fleet()
        sim.clock.now += 1.0
        sim.fleet.set_link("inf2", "live", "", sim.clock.now)  # its link's alert ends
        app.refresh_fleet()
        sim.clock.now += 9 * 60 + 58
        app.open_alerts()
        await pilot.pause()
        table = app.screen.query_one("#alerts", DataTable)
        lines = [table.render_line(y).text for y in range(1, table.size.height)]
        assert any("ended 9m58s ago" in line for line in lines), lines
        assert all(not line.rstrip().endswith("…") for line in lines), lines


async def test_the_host_line_breaks_in_the_same_place_as_readings_change() -> None:
    """At 80 columns the host line wrapped wherever its words ended: "net" jumped between the
    first line and the second as the CPU went from 7% to 27% or the load past 10."""
    from agents.protocol import HostReading
    from tests.fakes.simnode import QuietHost

    class Host(QuietHost):
        cpu, net, load = 7.0, 0.2e6, 0.92

        def read(self) -> HostReading:
            r = super().read()
            return HostReading(
                **{
                    **{f: getattr(r, f) for f in r.__struct_fields__},
                    "cpu_percent": self.cpu,
                    "load": (self.load, 1.15, 1.55),
                    "mem_total": int(23.5 * (1 << 30)),
                    "mem_used": int(0.7 * (1 << 30)),
                    "net_rx_bps": self.net,
                    "net_tx_bps": self.net,
                }
            )

    sim = SimFleet()
    host = Host()
    sim.nodes["gpu01"].sampler.host = host
    app = make(sim)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_node("gpu01")
        await pilot.pause()
        frames = set()
        for cpu, net, load in ((7.0, 0.2e6, 0.92), (27.0, 0.2e6, 10.5), (100.0, 12.5e6, 0.5)):
            host.cpu, host.net, host.load = cpu, net, load
            sim.step()
            app.refresh_fleet()
            await pilot.pause()
            w = app.screen.query_one("#host")
            lines = [s.text for s in w.render_lines(Region(0, 0, w.size.width, w.size.height))]
            frames.add(tuple(line.split()[0] for line in lines if line.strip()))
            for part in ("net rx", "load ", "memory 0.7/23.5 GiB"):
                assert any(part in line for line in lines), (part, lines)
        assert len(frames) == 1, f"each line starts with a different part: {frames}"


async def test_an_actions_results_wrap_within_the_screen() -> None:
    """An agent's refusal ran past 80 columns: the results table scrolled sideways."""
    from agents.protocol import Response
    from console.tui.action_dialog import ActionResults, Confirmed

    words = "gpu3 is busy: end its work (or drain the node) first, " * 3

    class Refuses(Requests):
        async def request(
            self, node: str, op: str, args: dict[str, object], wait: float = 30.0
        ) -> Response:
            return Response(id=1, ok=False, code="gpu_busy", error=words)

    sim = SimFleet()
    app = make_app(sim.fleet, requester=Refuses(), clock=sim.clock, refresh_s=None)
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(ActionResults(Confirmed("restart", ["gpu01"], {"reason": "r"})))
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.screen.query_one("#results", DataTable)
        assert table.virtual_size.width <= table.size.width, "the results run past the screen"
        assert words.strip() in str(table.get_row_at(0)[2]), "the whole text, wrapped"


async def test_the_node_views_headers_are_whole_at_80_columns() -> None:
    """At 80 columns the clocks' reasons' header was cut to "CLOCKS LIMI…" (its values fit)."""
    app = make(SimFleet())
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_node("gpu01")
        await pilot.pause()
        rendered = app.screen.query_one("#gpus").render()
        assert isinstance(rendered, Text | Content)
        header = rendered.plain.splitlines()[0]
        assert "…" not in header, header
        assert header.split()[-2:] == ["LIMITED", "BY"], header


@pytest.mark.parametrize("size", [(80, 12), (160, 12)])
async def test_a_fleet_taller_than_the_screen_never_scrolls_sideways(size: tuple[int, int]) -> None:
    """With more nodes than rows (a vertical scrollbar), the rows were laid out for the full
    width, under the scrollbar: the table scrolled sideways, a horizontal scrollbar took a row,
    and at 80x24 it showed whenever the filter box was open."""
    app = make(SimFleet())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        table = screen.table
        assert table.virtual_size.height > table.scrollable_content_region.height, "scrolls"
        assert table.virtual_size.width <= table.scrollable_content_region.width
        header = table.render_line(0).text
        assert header.rstrip().endswith("REASON"), header
