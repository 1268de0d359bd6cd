"""How the screen is put together: one way to build the app, views that reach it without
importing it, and read-only keyed on the bindings' own flag."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

import console.tui
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.sources.ssh.fleetlinks import FleetLinks
from console.sources.ssh.link import LinkOptions
from console.tui.app import make_app
from console.tui.base import Acts, FleetView
from console.tui.key_bar import keys_of
from tests.tui.fleetdata import INVENTORY, Requests, SimFleet

pytestmark = pytest.mark.tui
TUI = Path(console.tui.__file__).parent


def test_no_view_imports_the_app() -> None:
    """The views and dialogs reach the app through console.tui.base: importing any of them
    loads no app.py, so app.py can import them at its top (no import cycle to dodge)."""
    views = [p.stem for p in TUI.glob("*.py") if p.stem not in ("__init__", "app")]
    code = (
        "import importlib, sys\n"
        f"for name in {views!r}:\n"
        "    importlib.import_module('console.tui.' + name)\n"
        "print('console.tui.app' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_import_in_the_screen_is_at_the_top_of_its_module() -> None:
    """An import inside a function is how a cycle was dodged; none is left."""
    inside = []
    for path in sorted(TUI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inside += [
                    f"{path.name}:{n.lineno}"
                    for n in ast.walk(node)
                    if isinstance(n, ast.Import | ast.ImportFrom)
                ]
    assert inside == []


def test_the_app_is_built_one_way_from_what_feeds_it() -> None:
    """The links feed the model and carry the actions; a bare model (a test's) has no feed;
    actions go to the requester given, whatever feeds the model."""
    fleet = FleetState(parse_inventory(INVENTORY, "test").nodes)
    bare = make_app(fleet, requester=Requests())
    assert (bare.fleet, bare.feed) == (fleet, None)
    assert isinstance(bare.requester, Requests)
    links = FleetLinks(parse_inventory(INVENTORY, "test").nodes, LinkOptions(ssh_config=[]))
    over_ssh = make_app(links, readonly=True)
    assert (over_ssh.fleet, over_ssh.feed, over_ssh.requester) == (links.fleet, links, links)
    assert over_ssh.readonly and over_ssh.title == "gpufleet (read-only)"


class Probe(FleetView[None]):
    """A view with a key that acts and one that only looks."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Acts("x", "poke", "poke"),
        Binding("y", "look", "look"),
    ]
    done: ClassVar[list[str]] = []

    def compose(self) -> ComposeResult:
        yield Static("probe")

    def action_poke(self) -> None:
        self.done.append("poke")

    def action_look(self) -> None:
        self.done.append("look")


@pytest.mark.parametrize("readonly", [False, True])
async def test_read_only_removes_the_keys_flagged_as_acting(readonly: bool) -> None:
    """A view's key flagged ``Acts`` is gone in read-only mode (not bound, not listed),
    whatever its action is called; others stay."""
    sim = SimFleet()
    app = make_app(
        sim.fleet, requester=Requests(), clock=sim.clock, refresh_s=None, readonly=readonly
    )
    Probe.done.clear()
    async with app.run_test(size=(100, 30)) as pilot:
        probe = Probe()
        await app.push_screen(probe)
        await pilot.press("x", "y")
        listed = [what for _, what in keys_of(probe)]
    assert Probe.done == (["look"] if readonly else ["poke", "look"])
    assert ("poke" in listed) is not readonly
    assert "look" in listed
