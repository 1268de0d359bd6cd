"""What the screen says in words: the ``/`` filter names what is wrong with a value that can
match nothing ever, and says so when a good filter matches no node (an empty table alone reads
as a fleet gone); ages on one scale."""

from __future__ import annotations

import pytest
from textual.geometry import Region
from textual.widgets import DataTable, Input

from console.tui.text_line import TextLine
from tests.support.fleetapp import SIZE, make, names
from tests.support.notices import Notices
from tests.tui.fleetdata import SimFleet

pytestmark = pytest.mark.tui


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("state=bogus", "unknown state 'bogus' in 'state=bogus' (known: schedulable, draining"),
        ("link=up", "unknown link 'up' in 'link=up' (known: connecting, live, stale"),
        ("pool=nope", "unknown pool 'nope' (known: infer, train)"),
    ],
)
async def test_an_unknown_value_is_an_error_naming_it_and_the_valid_ones(
    text: str, says: str
) -> None:
    app, notices = make(SimFleet()), Notices()
    async with app.run_test(size=SIZE, message_hook=notices) as pilot:
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = text
        await pilot.press("enter")
        await pilot.pause()
        assert len(names(app)) == 8, "the rows stay as they were"
        box = app.screen.query_one("#filter", Input)
        assert box.display and box.has_focus, "the box stays open to be put right"
        assert says in str(box.border_title), box.border_title
        assert notices.said == [], "said on the box, not in a toast that covered it"


async def test_a_filter_error_is_said_on_its_box_at_80x24_and_goes_once_put_right() -> None:
    """At 80x24 the error's toast covered the right half of the filter box being typed in."""
    app = make(SimFleet())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        box.value = "pool=nope"
        await pilot.press("enter")
        await pilot.pause()
        shown = box.render_lines(Region(0, 0, box.size.width, box.size.height))[0].text
        assert "unknown pool 'nope'" in shown, shown
        await pilot.press("backspace")
        await pilot.pause()
        assert not box.border_title, "the error goes as the filter is edited"
        assert not box.has_class("-invalid")
        box.value = "pool=[/x]"  # quoted in the error: text, never markup
        await pilot.press("enter")
        await pilot.pause()
        shown = box.render_lines(Region(0, 0, box.size.width, box.size.height))[0].text
        assert "unknown pool '[/x]'" in shown, shown
        assert app.failure is None


async def test_a_filter_matching_no_node_says_so() -> None:
    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "state=draining"
        await pilot.press("enter")
        await pilot.pause()
        assert names(app) == []
        assert "no node matches (state=draining)" in app.screen.query_one("#totals", TextLine).text


async def test_ages_read_on_one_scale() -> None:
    """An alert raised 103 s ago beside one raised 2 min ago: "1m43s", never "103s"."""
    sim = SimFleet()
    app = make(sim)
    sim.nodes["gpu05"].backend.inject("xid79", 2)
    sim.step()
    sim.clock.now += 103
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        table = app.screen.query_one(DataTable)
        raised = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert "1m43s ago" in raised, raised


async def test_a_down_nodes_last_readings_are_not_shown_as_current() -> None:
    """The node view of a node whose agent stopped showed its last GPU and host readings as
    if current, with only "(sample 22s old)" at the end of the link's line to say otherwise."""
    from console.tui.node_view import NodeScreen

    sim = SimFleet()
    for _ in range(22):
        sim.step(skip=("gpu02",))
    sim.fleet.set_link("gpu02", "agent_down", "no agent at /run/gpufleet.sock", sim.clock.now)
    app = make(sim)
    async with app.run_test(size=(80, 24)) as pilot:
        app.refresh_fleet()
        app.open_node("gpu02")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeScreen)
        head = str(screen.query_one("#node-head").render())
        assert "the last readings, 22s old: not current" in head, head
        for part in ("#gpus", "#procs", "#host"):
            assert screen.query_one(part).has_class("old"), part
        app.open_node("gpu01")  # a live node: no such words, nothing dimmed
        await pilot.pause()
        assert "not current" not in str(screen.query_one("#node-head").render())
        assert not screen.query_one("#gpus").has_class("old")


async def test_the_dialog_counts_one_process_and_one_user_in_the_singular() -> None:
    """ "Running there (1 processes; users bob)"."""
    from console.tui.action_dialog import ActionDialog

    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "down", "down", "u")  # gpu04: one process, alice's
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        said = str(dialog.query_one("#affected").render())
        assert said.startswith("Running there (1 process; user alice):"), said


async def test_the_dialog_on_an_unreachable_node_says_what_is_not_known() -> None:
    """On a node never reached, the dialog said "No GPU processes listed on these nodes." (not
    known is not none) and nothing about the request being unable to reach it."""
    from console.tui.action_dialog import ActionDialog

    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("end", "d")  # inf2: unreachable since the start
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        assert dialog.nodes == ["inf2"]
        said = str(dialog.query_one("#affected").render())
        assert said == "GPU processes on inf2: not known (no current sample).", said
        warned = str(dialog.query_one("#warnings").render())
        assert "inf2: not reachable now (unreachable): the request cannot get there" in warned


async def test_the_node_view_of_a_node_never_reached_says_no_sample() -> None:
    """It showed the GPU table's header over no rows and "no GPU processes listed" (not
    known is not none)."""
    from console.tui.node_view import NodeScreen

    app = make(SimFleet())
    async with app.run_test(size=SIZE) as pilot:
        app.open_node("inf2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeScreen)
        assert str(screen.query_one("#gpus").render()) == "GPUs: no sample yet"
        assert str(screen.query_one("#procs").render()) == "GPU processes: not known (no sample)"
