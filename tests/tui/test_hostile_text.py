"""Text from nodes, schedulers, users and the network is shown as text: never markup, never a
terminal escape, and never the end of the operator's screen.

A property test: arbitrary text (brackets, closing tags, click actions, control characters,
bidirectional overrides) is put where such text comes from (a drain reason and who drained, a
link's error, an event's message, a GPU process's user and command line, a pool's name, the
operator's filter), and the screen is driven through every view that shows it: the fleet
table, the node view, the alerts, a drain dialog, a toast. The GPUs are simulated (no GPU
here); the model and the screen are the real ones.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import unicodedata
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.text import Text
from textual.content import Content
from textual.geometry import Region
from textual.widgets import DataTable, Input, Static

import console.tui
from agents.protocol import AuditEntry, Event, GpuProcess, NodeState, Response
from console.tui.action_dialog import ActionDialog, ActionResults, Confirmed
from console.tui.alerts_view import AlertsScreen
from console.tui.app import make_app
from console.tui.commands import FleetCommands
from console.tui.fleet_view import FleetScreen
from console.tui.node_view import NodeScreen
from console.tui.style import clean
from tests.tui.fleetdata import SINCE, Requests, SimFleet

pytestmark = pytest.mark.tui
SIZE = (160, 50)

#: What markup parsers and terminals read as something other than text.
FRAGMENTS = [
    "[", "]", "[/]", "[/var/log/kern.log]", "[@click=app.quit]x[/]", "[bold red]", "[b]",
    "[link=http://x]", "\\[", "$var", "\x1b[2J", "\x1b]0;title\x07", "\x07", "\r", "\n", "\t",
    "\x00", "\x9b", "\u202e", "\u2066", "\u200f", "\u2028", "ü", "ش",
]  # fmt: skip
narrow = st.characters(max_codepoint=0x10FF, exclude_categories=("Cs", "Mn", "Me"))
hostile = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        # narrow characters only, so that "the text is visible" can compare characters
        st.text(narrow, max_size=6),
    ),
    min_size=1,
    max_size=6,
).map("".join)


def shown(widget: Any) -> str:
    """What a text widget draws, as plain text."""
    visual = widget.render()
    if isinstance(visual, Text):
        return visual.plain
    assert isinstance(visual, Content), type(visual)
    return visual.plain


def assert_drawable(text: str) -> None:
    """Nothing a terminal would act on: no control or format character (bar the zero-width
    joiners) reaches the screen."""
    bad = [
        c
        for c in text.replace("\n", "")
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in "\u200c\u200d"
    ]
    assert not bad, f"drawn as is: {bad!r} in {text!r}"


def assert_literal(text: str, source: str) -> None:
    """The source's text is there, character for character (escapes for controls)."""
    assert clean(source) in text, f"{clean(source)!r} not shown in {text!r}"
    assert_drawable(text)


def assert_cut(text: str, source: str) -> None:
    """A cell cut to its column: what is shown is the start of the text, then "…"."""
    assert_drawable(text)
    start = text.rstrip().removesuffix("…")
    assert clean(source).startswith(start), f"{start!r} is not the start of {clean(source)!r}"


class HostileAgents(Requests):
    """Agents whose answers carry the text: an audit entry with it as the reason and as the
    agent's message, a refusal with it as the error."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def entry(self) -> AuditEntry:
        args = {"reason": self.text}
        return AuditEntry(ts=SINCE, who=self.text, uid=0, op="drain", args=args,
                          result="refused", message=self.text)  # fmt: skip

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        self.sent.append((node, op, args))
        if op == "audit":
            entries = [msgspec.to_builtins(self.entry())]
            return Response(id=1, ok=True, result={"entries": entries})
        return Response(id=1, ok=False, code="refused", error=self.text)


def hostile_fleet(text: str) -> SimFleet:
    sim = SimFleet(history=3)
    fleet = sim.fleet
    drained = NodeState(state="drained", reason=text, who=text, since=SINCE)
    fleet.apply("gpu04", sim.nodes["gpu04"].inventory(drained), sim.clock.now)
    fleet.set_link("inf2", "unreachable", text, sim.clock.now)
    view = fleet.nodes["gpu01"]
    view.entry = dataclasses.replace(view.entry, pool=text)
    assert view.sample is not None
    proc = GpuProcess(pid=4242, used_memory=1 << 30, user=text, command=text)
    gpus = [msgspec.structs.replace(g, processes=[proc]) for g in view.sample.gpus]
    sample = msgspec.structs.replace(view.sample, gpus=gpus, seq=view.sample.seq + 1)
    fleet.apply("gpu01", sample, sim.clock.now)
    event = Event(seq=999, ts=SINCE, kind="xid", gpu=0, xid=79, message=text)
    fleet.apply("gpu01", event, sim.clock.now)
    fleet.flush()
    return sim


async def walk(text: str) -> None:
    sim = hostile_fleet(text)
    agents = HostileAgents(text)
    app = make_app(sim.fleet, requester=agents, clock=sim.clock, refresh_s=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        table = screen.table
        lines = [table.render_line(y).text for y in range(len(table.rows) + 1)]
        for line in lines:
            assert_drawable(line)
        assert_cut(_cell(screen, "gpu04", "reason"), table.cell_text("gpu04", "reason"))
        assert_cut(_cell(screen, "gpu01", "pool"), text)

        # the drain dialog on gpu01 (the cursor's row): who would be disturbed, how
        await pilot.press("d")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        assert_literal(shown(dialog.query_one("#affected", Static)), text)
        await pilot.press("escape")
        await pilot.pause()

        # the node view of the drained node: its reason and who drained it, whole
        app.open_node("gpu04")
        await pilot.pause()
        assert isinstance(app.screen, NodeScreen)
        head = shown(app.screen.query_one("#node-head"))
        assert_literal(head, text)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert_literal(shown(app.screen.query_one("#audit")), agents.entry().line())

        # gpu01: its processes' users and command lines, its events, its pool
        app.open_node("gpu01")
        await pilot.pause()
        node = app.screen
        assert_literal(shown(node.query_one("#events")), text)
        assert_literal(shown(node.query_one("#node-head")), text)
        procs = shown(node.query_one("#procs")).splitlines()[1]
        assert_drawable(procs)
        assert str(4242) in procs

        # the alerts: inf2's link error is an alert's text
        app.pop_screen()
        await pilot.pause()
        app.open_alerts()
        await pilot.pause()
        alerts = app.screen
        assert isinstance(alerts, AlertsScreen)
        rows = alerts.query_one("#alerts", DataTable)
        cells = [str(c) for i in range(rows.row_count) for c in rows.get_row_at(i)]
        assert any(clean(text) in c for c in cells), cells
        for c in cells:
            assert_drawable(c)
        app.pop_screen()
        await pilot.pause()

        # an action's results: each node's answer, the agent's refusal in its words
        app.push_screen(ActionResults(Confirmed("drain", ["gpu01"], {"reason": "r"})))
        await app.workers.wait_for_complete()
        await pilot.pause()
        results = app.screen.query_one("#results", DataTable)
        detail = str(results.get_row_at(0)[2])
        assert_literal(detail, text)
        app.pop_screen()
        await pilot.pause()

        # the command palette: a pool's name in "filter pool=..."
        palette = FleetCommands(app.screen)
        prompts = [hit.prompt async for hit in palette.discover()]
        prompts += [hit.prompt async for hit in palette.search("pool")]
        pools = [p for p in prompts if isinstance(p, Content) and p.plain.startswith("filter pool")]
        assert any(clean(text) in p.plain for p in pools), prompts
        assert all(isinstance(p, Content) for p in prompts), "a str prompt is read as markup"

        # the filter: an operator's own text, said back in the totals or on the box's border
        fleet_screen = app.screen
        assert isinstance(fleet_screen, FleetScreen)
        fleet_screen.action_filter()
        box = fleet_screen.query_one("#filter", Input)
        box.value = text
        await box.action_submit()
        await pilot.pause()
        assert_drawable(shown(fleet_screen.query_one("#totals")))
        edge = box.render_lines(Region(0, 0, box.size.width, 1))[0].text
        assert_drawable(edge)
    assert app.failure is None
    assert app.return_code in (None, 0)


def _cell(screen: FleetScreen, node: str, column: str) -> str:
    """A cell of the fleet table as drawn, by the columns' widths on screen."""
    table = screen.table
    line = table.render_line(1 + table.row_names.index(node)).text
    x = 1
    for c, w in zip(table.columns, table._widths, strict=True):
        if w is None:
            continue
        if c.key == column:
            return line[x : x + w]
        x += w + 1
    raise AssertionError(f"{column} not on screen")


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=hostile)
def test_hostile_text_is_shown_as_text_everywhere(text: str) -> None:
    asyncio.run(walk(text))


@pytest.mark.parametrize(
    "text",
    [
        "PSU swap, see [/var/log/kern.log]",
        "[@click=app.quit]x[/]",
        "python train.py --out [/scratch/run1]",
        "\x1b[2Jwiped\x1b]0;t\x07 \u202eevil",
    ],
)
def test_the_texts_that_crashed_the_screen(text: str) -> None:
    """The reports' own examples: a drain reason that crashed the node view, a command line
    that crashed the drain dialog, a click action, terminal escapes."""
    asyncio.run(walk(text))


def test_no_widget_reads_markup() -> None:
    """The rule the property test checks by example, checked over the code: in the screen's
    modules every Static and Label is made with markup off (TextBlock is), and nothing parses
    markup (``from_markup``); toasts are text in ``FleetApp.notify``."""
    found = []
    for path in sorted(Path(console.tui.__file__).parent.glob("*.py")):
        source = path.read_text()
        if "from_markup" in source:
            found.append(f"{path.name}: from_markup")
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id in ("Static", "Label"):
                off = any(
                    k.arg == "markup"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                if not off:
                    found.append(f"{path.name}:{node.lineno}: {node.func.id} without markup=False")
    assert not found, found
