"""The alerts view: active and recent alerts across the fleet, newest first; enter opens the
node."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from console.tui.key_bar import KeyBar
from console.tui.style import toned

if TYPE_CHECKING:
    from console.tui.app import FleetApp


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


class AlertsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_node", "node"),
        Binding("escape", "app.pop_screen", "back"),
        Binding("question_mark", "help", "help"),
    ]

    @property
    def fleet_app(self) -> FleetApp:
        from console.tui.app import FleetApp

        assert isinstance(self.app, FleetApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="alerts-head")
        table: DataTable[Text | str] = DataTable(id="alerts", cursor_type="row")
        for key, label in [
            ("since", "RAISED"),
            ("status", "STATUS"),
            ("severity", "SEVERITY"),
            ("node", "NODE"),
            ("message", "ALERT"),
        ]:
            table.add_column(label, key=key)
        yield table
        yield KeyBar()

    def __init__(self) -> None:
        super().__init__()
        self._row_nodes: list[str] = []

    def on_mount(self) -> None:
        self.sub_title = "alerts"
        self.redraw()
        self.query_one(DataTable).focus()

    def fleet_changed(self, changed: set[str], now: float) -> None:
        if changed:
            self.redraw()

    def redraw(self) -> None:
        app = self.fleet_app
        now = app.clock()
        table = self.query_one("#alerts", DataTable)
        row = table.cursor_row
        table.clear()
        records = sorted(app.fleet.alert_log, key=lambda r: r.since, reverse=True)
        active = 0
        for i, r in enumerate(records):
            a = r.alert
            if r.ended is None:
                active += 1
                status = toned(app, "active", "bad" if a.severity == "critical" else "warn")
            else:
                status = toned(app, f"ended {ago(now - r.ended)}", "dim")
            table.add_row(ago(now - r.since), status, a.severity, a.node, a.message, key=str(i))
        self._row_nodes = [r.alert.node for r in records]
        self.query_one("#alerts-head", Static).update(
            f"{active} active, {len(records) - active} ended (newest first)"
        )
        if records:
            table.move_cursor(row=min(row, len(records) - 1), animate=False)

    def action_open_node(self) -> None:
        table = self.query_one("#alerts", DataTable)
        if self._row_nodes and table.cursor_row < len(self._row_nodes):
            self.fleet_app.open_node(self._row_nodes[table.cursor_row])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_node()

    def action_help(self) -> None:
        from console.tui.help import HelpScreen

        self.app.push_screen(HelpScreen(self))
