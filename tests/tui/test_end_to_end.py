"""The screen on the demo fleet: real agent daemons behind an SSH server (asyncssh, on
127.0.0.1 with throwaway keys), reached by the real links, shown by the real app. Only the
GPUs are simulated (no GPU exists here)."""

from __future__ import annotations

import asyncio
import getpass

import pytest
from textual.widgets import DataTable, Input

from console.demo import demo_fleet
from console.model.inventory import load_inventory
from console.sources.ssh.fleetlinks import FleetLinks
from console.sources.ssh.link import LinkOptions
from console.tui.action_dialog import ActionDialog, ActionResults
from console.tui.app import make_app
from console.tui.fleet_view import FleetScreen
from tests.conftest import until

pytestmark = [pytest.mark.tui, pytest.mark.integration]
#: Shell metacharacters and non-ASCII: stored, sent and shown as typed, never interpreted.
TRICKY = 'XID 79 "g1"; $(reboot) ü'


async def test_the_screen_on_the_demo_fleet_over_ssh() -> None:
    async with demo_fleet(4, 2) as demo:
        inv = load_inventory(demo.inventory)
        links = FleetLinks(inv.nodes, LinkOptions(ssh_config=[]))
        app = make_app(links, refresh_s=0.2)
        async with app.run_test(size=(160, 45)) as pilot:
            fleet = links.fleet
            await until(lambda: all(v.link == "live" for v in fleet.nodes.values()), "all live")
            screen = app.screen
            assert isinstance(screen, FleetScreen)

            demo.inject("demo02", "xid79", 1)
            await until(lambda: screen.table.cell_text("demo02", "alerts") != "", "alert")
            messages = [a.message for a in fleet.nodes["demo02"].alerts]
            assert "GPU 1: XID 79" in messages
            assert "GPU 1 is lost" in messages

            await pilot.press("down", "d")  # the cursor on demo02
            dialog = app.screen
            assert isinstance(dialog, ActionDialog)
            assert dialog.nodes == ["demo02"]
            dialog.query_one("#reason", Input).value = TRICKY
            await pilot.click("#confirm")
            results = app.screen
            assert isinstance(results, ActionResults)
            await until(lambda: results.results["demo02"].outcome != "pending", "the answer")
            result = results.results["demo02"]
            assert result.outcome == "ok", result.message
            assert result.message.startswith(("draining", "drained"))
            await pilot.pause()
            detail = str(results.query_one(DataTable).get_cell("demo02", "detail"))
            assert detail == result.message
            [entry] = [e for e in demo.agents["demo02"].audit.entries() if e.op == "drain"]
            assert (entry.result, entry.who) == ("ok", getpass.getuser())
            assert entry.args == {"reason": TRICKY}
            assert entry.after is not None
            assert entry.after.state in ("draining", "drained")
            # The agent's state event reaches the model, and the fleet view shows it.
            await until(
                lambda: (
                    (s := fleet.nodes["demo02"].state) is not None
                    and s.state in ("draining", "drained")
                ),
                "the new state in the fleet",
            )
            await pilot.press("escape")
            await until(
                lambda: screen.table.cell_text("demo02", "state") in ("draining", "drained"),
                "the state on screen",
            )
            assert TRICKY in screen.table.cell_text("demo02", "reason"), "shown literally"


async def test_the_demo_fleet_answers_on_a_loop_that_starts_tasks_eagerly() -> None:
    """On Python 3.12+ ``App.run_async`` (the real terminal, not Pilot's ``run_test``) makes
    the loop start tasks eagerly; asyncssh's server, which the demo runs on that loop, then
    never answers a key offered for auth and every node read "unreachable". The screen must
    reach the demo fleet on such a loop too (on 3.11, which has no eager tasks, as usual)."""
    loop = asyncio.get_running_loop()
    eager = getattr(asyncio, "eager_task_factory", None)
    loop.set_task_factory(eager)  # what run_async does, where the Python has it
    try:
        async with demo_fleet(2, 1) as demo:
            links = FleetLinks(load_inventory(demo.inventory).nodes, LinkOptions(ssh_config=[]))
            app = make_app(links, refresh_s=0.2)
            async with app.run_test(size=(160, 45)):
                fleet = links.fleet
                await until(
                    lambda: all(v.link == "live" for v in fleet.nodes.values()), "all live", 20
                )
    finally:
        loop.set_task_factory(None)
