"""The screen's behaviour through Textual's Pilot: keys in, what the operator sees out.

The fleet is the real model fed by simulated nodes through the agent's own sampler; actions
go to a stand-in for the links (``Requests``) that answers as an agent without the operations
does. The request path itself runs over real SSH in tests/integration (test_link.py and the
end-to-end test here)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from textual.widgets import Button, DataTable, Input, Select

from agents.protocol import Response
from console.present.rows import COLUMNS, parse_filter, summarize
from console.tui.action_dialog import ActionDialog, ActionResults, start_action
from console.tui.alerts_view import AlertsScreen
from console.tui.app import FleetApp, make_app
from console.tui.fleet_view import FleetScreen
from console.tui.help import HelpScreen
from console.tui.node_view import NodeScreen
from tests.conftest import until
from tests.support.fleetapp import SIZE, fleet_screen, make, names
from tests.support.notices import Notices
from tests.support.palette import palette_choice
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui


def cell(app: FleetApp, node: str, column: str) -> str:
    return fleet_screen(app).table.cell_text(node, column)


def requests(app: FleetApp) -> Requests:
    assert isinstance(app.requester, Requests)
    return app.requester


async def test_rows_navigation_and_the_node_view() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        assert names(app) == [f"gpu0{i}" for i in range(1, 7)] + ["inf1", "inf2"]
        await pilot.press("down", "down", "enter")
        assert isinstance(app.screen, NodeScreen)
        assert app.screen.node == "gpu03"
        gpus = str(app.screen.query_one("#gpus").render()).splitlines()
        assert gpus[0].split()[:3] == ["GPU", "UTIL", "%"]
        assert len(gpus) == 5, "a header and a row per GPU"
        assert any(c in gpus[1] for c in "▁▂▃▄▅▆▇█"), "sparklines, full from the history"
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)
        assert fleet_screen(app).current_node() == "gpu03", "the cursor stays on its node"


async def test_sort_cycles_columns_and_reverses() -> None:
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=SIZE) as pilot:
        screen = fleet_screen(app)
        await pilot.press("s")  # name -> pool
        assert screen.sort_column == "pool"
        assert names(app)[:2] == ["inf1", "inf2"], "infer before train"
        for _ in range(20):  # on through the columns to power
            await pilot.press("s")
            if str(screen.sort_column) == "power":
                break
        powers = [cell(app, n, "power") for n in names(app)]
        known = [float(p) for p in powers if p not in ("", "n/a")]
        assert known == sorted(known)
        await pilot.press("S")
        powers = [cell(app, n, "power") for n in names(app)]
        known_desc = [float(p) for p in powers if p not in ("", "n/a")]
        assert known_desc == sorted(known, reverse=True)
        assert names(app)[-1] == "inf2", "the node with no numbers sorts last either way"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pool=infer", ["inf1", "inf2"]),
        ("state=drained", ["gpu04"]),
        ("link=unreachable", ["inf2"]),
        ("hbm", ["gpu04"]),
        ("gpu0[1-2]", ["gpu01", "gpu02"]),
    ],
)
async def test_filter(text: str, expected: list[str]) -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        assert box.has_focus
        box.value = text
        await pilot.press("enter")
        assert names(app) == expected
        await pilot.press("escape")
        assert len(names(app)) == 8, "esc drops the filter"


async def test_a_bad_filter_says_what_is_wrong_and_keeps_the_rows() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "colour=red"
        await pilot.press("enter")
        await pilot.pause()
        assert len(names(app)) == 8
        assert "unknown filter 'colour'" in str(app.screen.query_one("#filter").border_title)


async def test_marks_choose_the_nodes_acted_on() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space", "space")  # marks gpu01, gpu02 (the cursor moves down)
        screen = fleet_screen(app)
        assert screen.marked == {"gpu01", "gpu02"}
        assert screen.table.marked == {"gpu01", "gpu02"}
        assert screen.chosen() == ["gpu01", "gpu02"]
        await pilot.press("escape")
        assert screen.marked == set()
        assert screen.chosen() == ["gpu03"], "no marks: the row under the cursor"


async def test_drain_confirmed_sends_the_reason_and_shows_each_refusal() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space", "space", "d")
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        assert str(dialog.query_one("#title").render()) == "Drain 2 nodes?"
        assert dialog.query_one("#cancel", Button).has_focus, "Cancel is focused"
        dialog.query_one("#reason", Input).value = "fans failing"
        await pilot.click("#confirm")
        await pilot.pause()
        results = app.screen
        assert isinstance(results, ActionResults)
        await pilot.wait_for_scheduled_animations()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [(n, op, a) for n, op, a in requests(app).sent] == [
            ("gpu01", "drain", {"reason": "fans failing"}),
            ("gpu02", "drain", {"reason": "fans failing"}),
        ]
        assert {r.outcome for r in results.results.values()} == {"refused"}
        summary = str(results.query_one("#summary").render())
        assert summary == "Drain gpu[01-02]: 2 refused"
        table = results.query_one(DataTable)
        assert "unknown request 'drain'" in str(table.get_cell("gpu01", "detail"))


async def test_a_cancelled_dialog_sends_nothing() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        for key in ("d", "u", "r", "p"):
            await pilot.press(key)
            assert isinstance(app.screen, ActionDialog)
            await pilot.press("enter")  # on Cancel, which has the focus
            assert isinstance(app.screen, FleetScreen)
            await pilot.press(key, "escape")
            assert isinstance(app.screen, FleetScreen)
        assert requests(app).sent == []


async def test_drain_without_a_reason_is_refused_in_the_dialog() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await pilot.click("#confirm")
        await pilot.pause()
        assert isinstance(app.screen, ActionDialog), "still open"
        assert str(app.screen.query_one("#error").render()) == "drain needs a reason"
        assert requests(app).sent == []


@pytest.mark.parametrize(
    ("key", "verb", "choice", "expected"),
    [
        ("u", "resume", None, {}),
        ("r", "restart", "agent", {"reason": "stuck", "target": "agent"}),
        ("p", "reassign", "infer", {"reason": "stuck", "pool": "infer"}),
    ],
)
async def test_each_verb_confirmed_sends_what_it_needs(
    key: str, verb: str, choice: str | None, expected: dict[str, Any]
) -> None:
    app = make(SimFleet(), answer="ok")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        if choice is not None:
            dialog.query_one("#choice", Select).value = choice
            dialog.query_one("#reason", Input).value = "stuck"
        await pilot.click("#confirm")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert requests(app).sent == [("gpu01", verb, expected)]
        results = app.screen
        assert isinstance(results, ActionResults)
        assert results.results["gpu01"].outcome == "ok"


async def test_restart_on_an_agent_with_no_targets_says_why() -> None:
    sim = SimFleet()
    inv = sim.fleet.nodes["gpu01"].inventory
    assert inv is not None
    sim.fleet.apply("gpu01", msgspec.structs.replace(inv, restart_targets=[]), sim.clock.now)
    app = make(sim)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        warnings = str(dialog.query_one("#warnings").render())
        assert "no restart targets: gpu01 list none (an agent older than protocol 1.4" in warnings


async def test_readonly_has_no_action_keys() -> None:
    app = make(SimFleet(), readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        for key in ("d", "u", "r", "p"):
            await pilot.press(key)
            assert isinstance(app.screen, FleetScreen)
        shown = {b.binding.description for b in app.active_bindings.values() if b.enabled}
        assert not shown & {"drain", "resume", "restart", "reassign"}
        await pilot.press("question_mark")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        text = str(help_screen.query_one("#keys").render())
        assert "drain" not in text
        assert "filter" in text
        assert requests(app).sent == []


async def test_a_node_goes_stale_and_comes_back() -> None:
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=SIZE) as pilot:
        assert cell(app, "gpu02", "link") == "live"
        for _ in range(5):
            sim.step(skip=("gpu02",))
        app.refresh_fleet()
        await pilot.pause()
        assert cell(app, "gpu02", "link") == "stale 5s"
        assert cell(app, "gpu02", "util") != "", "stale rows keep their numbers, with the age"
        assert "1 stale" in str(app.screen.query_one("#banner").render())
        sim.step()
        app.refresh_fleet()
        await pilot.pause()
        assert cell(app, "gpu02", "link") == "live"
        assert "stale" not in str(app.screen.query_one("#banner").render())


async def test_losing_every_node_keeps_the_program_and_says_so() -> None:
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=SIZE) as pilot:
        for name in sim.fleet.nodes:
            sim.fleet.set_link(name, "unreachable", "network is down", sim.clock.now + 100)
        sim.clock.now += 100
        app.refresh_fleet()
        await pilot.pause()
        banner = str(app.screen.query_one("#banner").render())
        assert banner == "No node is reachable: all 8 are down (see LINK)."
        assert cell(app, "gpu01", "link").startswith("unreachable: network is down")
        assert cell(app, "gpu01", "util") == "", "no old numbers shown as current"
        assert app.is_running


async def test_quitting_while_the_fleet_refreshes_ends_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Textual's timers tick on while the app takes its screens down; a refresh drawn into
    a half-removed fleet screen raised NoMatches on quit (seen once in CI; every time at this
    rate before the fix). Quitting must end the program without an error."""
    sim = SimFleet()
    app = make_app(sim.fleet, requester=Requests("refuse"), clock=sim.clock, refresh_s=0.0005)
    refreshes: list[None] = []
    refresh = app.refresh_fleet
    monkeypatch.setattr(app, "refresh_fleet", lambda: refreshes.append(refresh()))
    async with app.run_test(size=SIZE):
        sim.step()
        await until(lambda: len(refreshes) >= 5, "refreshes drawn")  # leaving quits the app
    assert app.return_code in (None, 0), "ended without an error"


async def test_alerts_view_lists_newest_first_and_opens_the_node() -> None:
    sim = SimFleet()
    app = make(sim)
    sim.nodes["gpu05"].backend.inject("xid79", 2)
    sim.step()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, AlertsScreen)
        table = screen.query_one(DataTable)
        first = [str(c) for c in table.get_row_at(0)]
        assert first[3] == "gpu05"
        assert first[1] == "active"
        assert any("XID 79" in str(table.get_row_at(i)[4]) for i in range(table.row_count))
        await pilot.press("enter")
        assert isinstance(app.screen, NodeScreen)
        assert app.screen.node == "gpu05"


async def test_node_view_shows_events_and_the_agents_audit_answer() -> None:
    sim = SimFleet()
    sim.nodes["gpu01"].backend.inject("xid79", 1)
    sim.step()
    app = make(sim)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeScreen)
        events = str(screen.query_one("#events").render())
        assert "XID 79" in events
        assert "GPU 1 is lost" in events
        assert "empty: nothing was done on this node" in str(screen.query_one("#audit").render())
        assert ("gpu01", "audit", {"limit": 20}) in requests(app).sent


async def test_the_command_palette_jumps_to_a_node() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon")
        await pilot.pause()
        await pilot.press(*"node inf1")
        await until(lambda: palette_choice(app) == "node inf1", "the palette to offer node inf1")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, NodeScreen)
        assert app.screen.node == "inf1"


async def test_the_mouse_moves_the_cursor_sorts_and_opens() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        screen = fleet_screen(app)
        await pilot.click("#fleet", offset=(3, 3))  # the third row under the header
        assert screen.current_node() == "gpu03"
        await pilot.click("#fleet", offset=(3, 0))  # the NODE header: sorted, reversed
        assert (screen.sort_column, screen.sort_reverse) == ("name", True)
        assert names(app)[0] == "inf2"
        await pilot.click("#fleet", offset=(3, 2), times=2)  # a double click opens it
        assert isinstance(app.screen, NodeScreen)
        assert app.screen.node == "inf1"


async def test_readonly_refuses_an_action_from_anywhere() -> None:
    """Not only the keys: the one way into an action says no in read-only mode."""
    app, notices = make(SimFleet(), readonly=True), Notices()
    async with app.run_test(size=SIZE, message_hook=notices) as pilot:
        start_action(app, "drain", ["gpu01"])
        await pilot.pause()
        assert isinstance(app.screen, FleetScreen), "no dialog"
        assert notices.any("read-only")
        assert requests(app).sent == []


class SlowRequests(Requests):
    """Answers only when the test says so: an action still on its way."""

    def __init__(self) -> None:
        super().__init__("ok")
        self.release = asyncio.Event()

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        await self.release.wait()
        return await super().request(node, op, args, wait)


async def test_leaving_the_results_does_not_cancel_the_action() -> None:
    sim = SimFleet()
    slow = SlowRequests()
    app = make_app(sim.fleet, requester=slow, clock=sim.clock, refresh_s=None)
    notices = Notices()
    async with app.run_test(size=SIZE, message_hook=notices) as pilot:
        await pilot.press("u")
        await pilot.click("#confirm")
        await pilot.pause()
        assert type(app.screen).__name__ == "ActionResults"
        await pilot.press("escape")  # the operator walks away while it is pending
        assert type(app.screen).__name__ == "FleetScreen"
        slow.release.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert slow.sent == [("gpu01", "resume", {})], "sent and answered, not cancelled"
        assert "Resume gpu01: 1 ok" in notices.said, "in the results screen's words"


async def test_the_cursor_stays_in_sight_in_a_small_terminal() -> None:
    """A terminal narrower than the table shows a horizontal scrollbar: the cursor must
    still never go below the last row on screen."""
    app = make(SimFleet())
    async with app.run_test(size=(90, 12)) as pilot:
        table = fleet_screen(app).table
        for _ in range(7):
            await pilot.press("down")
            top = table.scroll_offset.y
            body = table.scrollable_content_region.height - 1
            assert top <= table.cursor_row < top + body


async def test_marks_hidden_by_the_filter_are_not_acted_on() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space", "space")  # gpu01, gpu02
        screen = fleet_screen(app)
        screen.row_filter, screen.filter_text = parse_filter("gpu02"), "gpu02"
        screen.redraw()
        assert screen.chosen() == ["gpu02"]


async def test_the_table_shows_each_declared_column_as_declared() -> None:
    """The fleet table's columns, headers and cells come from one declaration
    (``console.present.rows.COLUMNS``): a live node's cells are its summary's words; a down node's
    readings are blank (no old numbers beside "unreachable")."""
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=(220, 45)):
        table = fleet_screen(app).table
        assert table.shown_columns() == [c.key for c in COLUMNS]
        assert [c.label for c in table.columns] == [c.header for c in COLUMNS]
        live = summarize(sim.fleet.nodes["gpu01"], sim.clock.now)
        down = summarize(sim.fleet.nodes["inf2"], sim.clock.now)
        for c in COLUMNS:
            assert table.cell_text("gpu01", c.key) == c.text(live), c.key
            shown = "" if c.reading else c.text(down)
            assert table.cell_text("inf2", c.key) == shown, c.key
