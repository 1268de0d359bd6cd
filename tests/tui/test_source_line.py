"""The fleet screen says which source its rows come from and how old their data is, and
shows the source's own fault (Prometheus unreachable) without ending anything. Prometheus'
answers are the recorded ones (tests/fakes/prometheus.py); the model and the screen are real,
and the live server is in tests/integration/test_promsource.py."""

from __future__ import annotations

import pytest

from console.model.inventory import parse_inventory
from console.present import words
from console.sources.prometheus.source import PromSource
from console.tui.app import make_app
from console.tui.fleet_view import FleetScreen
from console.tui.text_line import TextLine
from tests.fakes.prometheus import Recorded
from tests.tui.fleetdata import Clock, Requests, SimFleet

pytestmark = pytest.mark.tui
URL = "http://prom.example:9090"
INVENTORY = '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[01-03]"\n'


class HandPolled(PromSource):
    """Polled by the test, on the test's clock."""

    def start(self) -> None:
        pass


async def test_the_screen_shows_the_source_and_the_age_of_its_data() -> None:
    clock, client = Clock(), Recorded()
    feed = HandPolled(parse_inventory(INVENTORY, "t").nodes, URL, client=client, monotonic=clock)
    await feed.poll()
    app = make_app(feed, requester=Requests(), clock=clock, refresh_s=None)
    async with app.run_test(size=(160, 45)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        line = screen.query_one("#source", TextLine)
        age = feed.fleet.nodes["gpu01"].age(clock.now) or 0.0
        assert line.display
        assert line.text.startswith(f"source: prometheus {URL} (1 host not in the inventory")
        assert f"data {words.age(max(age, feed.fleet.nodes['gpu02'].age(clock.now) or 0))} old" in (
            line.text
        )
        assert screen.table.cell_text("gpu03", "link").startswith("no_data: not in Prometheus")

        clock.now += 1.0  # a second later, without a new poll: the data is a second older
        app.refresh_fleet()
        await pilot.pause()
        assert "polled 1s ago" in line.text

        client.fault = f"cannot reach {URL}: connection refused"
        await feed.poll()
        app.refresh_fleet()
        await pilot.pause()
        assert line.has_class("fault")
        assert f"FAULT: cannot reach {URL}: connection refused" in line.text
        assert isinstance(app.screen, FleetScreen), "a fault of the source ends nothing"

        client.fault = None
        await feed.poll()
        app.refresh_fleet()
        await pilot.pause()
        assert not line.has_class("fault")


async def test_no_source_line_without_a_feed() -> None:
    """Tests (and the snapshots) that feed the model by hand show no source line."""
    sim = SimFleet()
    app = make_app(sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None)
    async with app.run_test(size=(160, 45)):
        assert not app.screen.query_one("#source", TextLine).display


async def test_the_age_behind_a_dialog_keeps_counting() -> None:
    """The fleet view stays in sight behind a dialog: its source line must not go on saying
    how old the data was when the dialog opened."""
    clock, client = Clock(), Recorded()
    feed = HandPolled(parse_inventory(INVENTORY, "t").nodes, URL, client=client, monotonic=clock)
    await feed.poll()
    app = make_app(feed, requester=Requests(), clock=clock, refresh_s=None)
    async with app.run_test(size=(160, 45)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        line = screen.query_one("#source", TextLine)
        assert "polled 0s ago" in line.text
        await pilot.press("d")
        assert type(app.screen).__name__ == "ActionDialog"
        clock.now += 7.0  # no poll while the dialog is open
        app.refresh_fleet()
        await pilot.pause()
        assert "polled 7s ago" in line.text
