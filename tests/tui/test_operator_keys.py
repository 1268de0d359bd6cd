"""The keys an operator uses to act, through Textual's Pilot: the dialog's focus and typing,
the dialog at 80x24, the verbs from the node view and the palette, the marks, read-only, and
the view behind a dialog. Same deterministic fleet and request stand-in as
test_fleet_screen.py (the request path itself runs over real SSH in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from textual.content import Content
from textual.pilot import Pilot
from textual.widgets import Button, Input

from console.tui.action_dialog import ActionDialog, ActionResults
from console.tui.app import FleetApp, make_app
from console.tui.commands import FleetCommands
from console.tui.fleet_view import FleetScreen
from console.tui.help import HelpScreen
from console.tui.key_bar import KeyBar
from console.tui.node_view import NodeScreen
from tests.conftest import until
from tests.support.notices import Notices
from tests.support.palette import palette_choice
from tests.tui.fleetdata import Requests, SimFleet

pytestmark = pytest.mark.tui
SMALL = (80, 24)
WIDE = (160, 45)


def make(sim: SimFleet | None = None, *, readonly: bool = False) -> FleetApp:
    sim = sim or SimFleet()
    return make_app(
        sim.fleet, requester=Requests("ok"), clock=sim.clock, refresh_s=None, readonly=readonly
    )


def sent(app: FleetApp) -> list[tuple[str, str, dict[str, Any]]]:
    assert isinstance(app.requester, Requests)
    return [s for s in app.requester.sent if s[1] != "audit"]


def dialog(app: FleetApp) -> ActionDialog:
    assert isinstance(app.screen, ActionDialog), f"no dialog: {app.screen!r}"
    return app.screen


def key_bar(app: FleetApp) -> str:
    return str(app.screen.query_one(KeyBar).render())


async def finish(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("size", [SMALL, WIDE])
async def test_typing_goes_to_the_reason_and_confirming_takes_two_deliberate_enters(
    size: tuple[int, int],
) -> None:
    app = make()
    async with app.run_test(size=size) as pilot:
        await pilot.press("d")
        d = dialog(app)
        assert d.query_one("#cancel", Button).has_focus, "opens on Cancel"
        await pilot.press(*"fans failing")  # the space, too, goes to the reason
        reason = d.query_one("#reason", Input)
        assert reason.value == "fans failing"
        assert reason.has_focus
        await pilot.press("enter")  # not a confirmation: on to the verb's button
        assert app.screen is d
        assert d.query_one("#confirm", Button).has_focus
        assert sent(app) == []
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ActionResults)
        assert sent(app) == [("gpu01", "drain", {"reason": "fans failing"})]


async def test_enter_in_an_empty_reason_says_what_is_missing() -> None:
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("d", "tab")
        d = dialog(app)
        assert d.query_one("#reason", Input).has_focus, "one tab from Cancel: the reason"
        await pilot.press("enter")
        assert str(d.query_one("#error").render()) == "drain needs a reason"
        assert d.query_one("#reason", Input).has_focus
        assert sent(app) == []


@pytest.mark.parametrize(
    ("key", "stops"),
    [
        ("d", ["reason", "confirm", "cancel", "reason"]),
        ("r", ["choice", "reason", "confirm", "cancel"]),
        ("p", ["choice", "reason", "confirm", "cancel"]),
    ],
)
async def test_tab_goes_from_cancel_to_what_is_filled_in_then_to_the_verb(
    key: str, stops: list[str]
) -> None:
    app = make()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press(key)
        seen = []
        for _ in stops:
            await pilot.press("tab")
            focused = dialog(app).focused
            seen.append(focused.id if focused else None)
        assert seen == stops


async def test_the_dialog_says_how_to_confirm() -> None:
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("d")
        hint = str(dialog(app).query_one("#hint").render())
        assert "type a reason, then enter (or tab) to reach Drain" in hint
        assert "esc cancels" in hint


@pytest.mark.parametrize("key", ["d", "u", "r", "p"])
async def test_every_dialog_shows_its_buttons_and_form_at_80x24(key: str) -> None:
    """Six marked nodes, their processes and warnings: more than 24 lines of details, which
    scroll; the title, the form and both buttons stay on screen."""
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press(*["space"] * 6, key)
        await pilot.pause()
        d = dialog(app)
        screen = d.region
        ids = ["#title", "#reason", "#hint", "#cancel", "#confirm"]
        ids += ["#choice"] if key in "rp" else []
        for wid in ids:
            region = d.query_one(wid).region
            assert region.height > 0, wid
            assert screen.contains_region(region), f"{wid} off screen: {region}"


async def test_details_longer_than_the_dialog_scroll_under_a_fixed_form() -> None:
    app = make()
    async with app.run_test(size=(80, 18)) as pilot:
        await pilot.press(*["space"] * 6, "r")
        await pilot.pause()
        d = dialog(app)
        box = d.query_one("#dialog")
        assert box.max_scroll_y > 0, "more details than lines"
        confirm = d.query_one("#confirm").region
        await pilot.press("pagedown")
        await pilot.pause()
        assert box.scroll_y > 0
        assert d.query_one("#confirm").region == confirm, "the buttons do not move"
        assert d.query_one("#cancel", Button).has_focus, "scrolling leaves the focus"


async def test_the_verbs_act_on_the_node_in_the_node_view() -> None:
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("down", "enter")
        assert isinstance(app.screen, NodeScreen)
        assert "d drain" in key_bar(app)
        await pilot.press("u")
        d = dialog(app)
        assert d.nodes == ["gpu02"]
        await pilot.press("tab", "tab", "enter")  # reason (optional), Resume, confirm
        await finish(pilot)
        assert sent(app) == [("gpu02", "resume", {})]
        await pilot.press("escape")
        assert isinstance(app.screen, NodeScreen)


async def test_readonly_node_view_has_no_verbs() -> None:
    app = make(readonly=True)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("enter")
        assert isinstance(app.screen, NodeScreen)
        for key in "durp":
            await pilot.press(key)
            assert isinstance(app.screen, NodeScreen)
        assert "drain" not in key_bar(app)
        assert sent(app) == []


async def palette_commands(app: FleetApp, *queries: str) -> list[str]:
    """What the palette offers for each of ``queries``, as its search finds them."""
    provider = FleetCommands(app.screen)
    return [hit.text or "" for query in queries async for hit in provider.search(query)]


async def test_the_palette_offers_the_verbs_on_what_is_chosen() -> None:
    app = make()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("space", "space")
        for verb in ("drain", "resume", "restart", "reassign"):
            assert f"{verb} 2 nodes: gpu[01-02]" in await palette_commands(app, verb)
        await pilot.press("colon")
        await pilot.pause()
        await pilot.press(*"restart 2")
        chosen = "restart 2 nodes: gpu[01-02]"
        await until(lambda: palette_choice(app) == chosen, f"the palette to offer {chosen}")
        await pilot.press("enter")
        await pilot.pause()
        assert dialog(app).verb == "restart"
        assert dialog(app).nodes == ["gpu01", "gpu02"]
        await pilot.press("escape", "escape")  # the dialog, then the marks
        await pilot.press("enter")  # the cursor's node: gpu03 (each mark moved down)
        assert isinstance(app.screen, NodeScreen)
        assert "drain gpu03" in await palette_commands(app, "drain")


async def test_the_palette_offers_no_verbs_read_only() -> None:
    app = make(readonly=True)
    async with app.run_test(size=WIDE) as pilot:
        verbs = ("drain", "resume", "restart", "reassign")
        assert "node gpu01" in await palette_commands(app, "node gpu01"), "the search works"
        assert not [c for c in await palette_commands(app, *verbs) if c.startswith(verbs)]
        await pilot.press("enter")
        assert isinstance(app.screen, NodeScreen)
        assert not [c for c in await palette_commands(app, *verbs) if c.startswith(verbs)]


async def test_help_lists_the_palette_key_once() -> None:
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = str(app.screen.query_one("#keys").render()).splitlines()
        assert [line.split()[0] for line in keys].count(":") == 1


async def test_readonly_offers_no_marks() -> None:
    app = make(readonly=True)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("space")
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert screen.marked == set()
        assert "space" not in key_bar(app)


async def test_marks_are_announced_on_the_key_bar() -> None:
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        assert "marked" not in key_bar(app)
        await pilot.press("space", "space", "space")
        assert key_bar(app).startswith("3 marked (esc clears)")
        await pilot.press("escape")
        assert "marked" not in key_bar(app)


async def test_marks_are_cleared_once_an_action_is_sent_and_it_says_so() -> None:
    app, notices = make(), Notices()
    async with app.run_test(size=WIDE, message_hook=notices) as pilot:
        await pilot.press("space", "space", "d", "escape")  # cancelled: the marks stay
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        assert screen.marked == {"gpu01", "gpu02"}
        await pilot.press("d", *"psu", "enter", "enter")
        await finish(pilot)
        assert len(sent(app)) == 2
        assert screen.marked == set()
        assert notices.any("2 marks cleared")
        await pilot.press("escape")
        assert "marked" not in key_bar(app)


async def test_the_table_behind_a_dialog_keeps_up() -> None:
    """The fleet view stays on screen behind a dialog: its rows keep changing with the fleet,
    never frozen under a current age."""
    sim = SimFleet()
    app = make(sim)
    async with app.run_test(size=WIDE) as pilot:
        fleet_screen = app.screen
        assert isinstance(fleet_screen, FleetScreen)
        await pilot.press("d")
        dialog(app)
        for _ in range(5):
            sim.step(skip=("gpu02",))
        app.refresh_fleet()
        await pilot.pause()
        assert fleet_screen.table.cell_text("gpu02", "link") == "stale 5s"


async def test_a_notification_never_covers_the_dialogs_buttons() -> None:
    app = make()
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        await pilot.press("d")
        d = dialog(app)
        app.notify("demo incident: gpu 6 of demo03 climbing to about 92 C (slowdown at 89 C)")
        await until(lambda: list(d.query("Toast")), "the notification")
        await pilot.pause()
        for toast in d.query("Toast"):
            for wid in ("#cancel", "#confirm", "#reason"):
                assert not toast.region.overlaps(d.query_one(wid).region), wid


@pytest.mark.parametrize("keys", [[], ["enter"]])
async def test_at_80_columns_the_key_bar_and_the_totals_keep_what_matters(
    keys: list[str],
) -> None:
    """The key bar is cut at the right: "? help" (the way to every key) comes first. The
    totals leave out counts of none, so GPUs and alerts fit one line; the sort goes on to the
    next (test_totals_80.py)."""
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        totals = str(app.screen.query_one("#totals").render())
        assert totals.startswith("8 nodes: 7 live, 1 down, 1 drained; 32 GPUs: ")
        assert totals.splitlines()[0].endswith("; 1 alert"), totals
        assert all(len(line) <= 78 for line in totals.splitlines()), totals
        await pilot.press(*keys)
        assert key_bar(app).startswith("? help  ")
        await pilot.press("space")
        if not keys:
            assert key_bar(app).startswith("1 marked (esc clears)  ? help  ")


async def test_a_notification_at_80x24_takes_no_more_rows_than_its_words() -> None:
    """A toast's blank padding rows hid two more rows of the table (or of a dialog's details)
    at 80x24: the demo's incidents covered half the fleet's rows."""
    app = make()
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        app.notify("demo03: gpu 6: cooling failure, about 92 C", title="demo incident")
        await until(lambda: list(app.screen.query("Toast")), "the notification")
        await pilot.pause()
        (toast,) = app.screen.query("Toast")
        words = toast.render()
        assert isinstance(words, Content)
        lines = len(words.wrap(toast.content_size.width))
        assert toast.region.height == lines, (toast.region.height, lines)


async def test_readonly_is_said_at_80_columns() -> None:
    """ "[read-only]" ended the header's long subtitle (the source and the log's path), which
    80 columns cut: a read-only screen looked like one whose keys were missing."""
    from textual.geometry import Region

    sim = SimFleet()
    source = "demo: 16 nodes x 8 simulated H100s over SSH  (log: /root/.local/state/x.log)"
    app = make_app(
        sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None, readonly=True,
        source=source,
    )  # fmt: skip
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        title = app.screen.query_one("HeaderTitle")
        drawn = title.render_lines(Region(0, 0, title.size.width, 1))[0].text
        assert "read-only" in drawn, drawn


async def test_the_logs_path_is_in_the_help_not_cut_off_the_title() -> None:
    """At 80 columns the title ended "(log:…": the path was cut, and the source with it."""
    from textual.geometry import Region

    sim = SimFleet()
    source = "demo: 16 nodes x 8 simulated H100s over SSH"
    log = "/root/.local/state/gpufleet/console.log"
    app = make_app(
        sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None, source=source, log=log
    )
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        title = app.screen.query_one("HeaderTitle")
        drawn = title.render_lines(Region(0, 0, title.size.width, 1))[0].text
        assert source in drawn and "…" not in drawn, drawn
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        said = str(app.screen.query_one("#hint").render())
        assert f"the console's log: {log}" in said, said


async def test_the_palettes_keys_are_the_views_help() -> None:
    """The palette's own "Keys" opened Textual's side panel of widget keys (the table's
    cursor keys), not the view's keys that ``?`` shows; "Maximize" hid the totals."""
    app = make()
    async with app.run_test(size=SMALL) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Maximize" not in titles
        (keys,) = [c for c in app.get_system_commands(app.screen) if c.title == "Keys"]
        keys.callback()
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert not app.screen.query("HelpPanel")


async def test_a_notification_never_covers_the_helps_last_line() -> None:
    """The help's last line (how to close it, where the log is) was under the toasts."""
    sim = SimFleet()
    log = "/root/.local/state/gpufleet/console.log"
    app = make_app(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None, log=log)
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        await pilot.press("question_mark")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        for _ in range(2):  # as the demo's incidents come, one on another
            app.notify(
                "demo03: gpu 6: cooling failure, temperature climbing to about 92 C "
                "(slowdown at 89 C)",
                title="demo incident",
            )
        await until(lambda: len(help_screen.query("Toast")) == 2, "the notifications")
        await pilot.pause()
        for toast in help_screen.query("Toast"):
            assert not toast.region.overlaps(help_screen.query_one("#hint").region)


async def test_a_notification_shows_once_over_a_dialog() -> None:
    """A toast up when a dialog opened stayed drawn on the view behind the dialog (below it at
    80x24), and again at the dialog's top: the same words twice, one of them stale."""
    app = make()
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        behind = app.screen
        app.notify("demo02: its agent stopped", title="demo incident")
        await until(lambda: list(behind.query("Toast")), "the notification")
        await pilot.press("d")
        d = dialog(app)
        await until(lambda: list(d.query("Toast")), "the notification on the dialog")
        await pilot.pause()
        shown = [t for t in behind.query("Toast") if t.display and t.visible]
        assert not shown, "also drawn behind the dialog"
        await pilot.press("escape")
        await pilot.pause()
        assert [t for t in behind.query("Toast") if t.display and t.visible], "back when it closes"
