"""The alerts view: active and recent alerts across the fleet, newest first; enter opens the
node.

The alert's text (a link error, an agent's words) is wrapped in the room the other columns
leave, so it never runs past the screen, and shown literally (``style.plain``): a DataTable
reads a ``str`` cell as markup."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Header

from console.model.fleet import AlertRecord
from console.present.words import ago
from console.tui.base import FleetView
from console.tui.help import HelpScreen
from console.tui.key_bar import KeyBar
from console.tui.style import clean, plain, toned
from console.tui.text_line import TextBlock
from console.tui.text_table import rest_width

#: Seconds between redraws for the ages alone ("12s ago") when no alert came or went.
AGES_EVERY_S = 5.0


#: The longest age said (``words.age``: "9m59s", as long as "9h59m" and "9d23h"), ago.
AGO_WIDTH = len(ago(9 * 60 + 59))
#: The columns before the alert's text: (key, label, width). Widths from the values' domain:
#: "9m59s ago", "ended 9m59s ago", "critical"; the node's is the fleet's longest name.
COLUMNS = (
    ("since", "RAISED", AGO_WIDTH),
    ("status", "STATUS", len("ended ") + AGO_WIDTH),
    ("severity", "SEVERITY", 8),
)


class AlertsScreen(FleetView[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_node", "node"),
        Binding("escape", "app.pop_screen", "back"),
        Binding("question_mark", "help", "help"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield TextBlock(id="alerts-head")
        yield DataTable[Text](id="alerts", cursor_type="row")
        yield KeyBar()

    def __init__(self) -> None:
        super().__init__()
        self._records: list[AlertRecord] = []
        self._drawn_changes = -1
        self._drawn_at = 0.0
        self._message_width = 0  # the alert column's width, from the screen's

    def _columns(self, table: DataTable[Text]) -> None:
        """The columns for the table's width: the alert's text gets what the others leave
        (and a vertical scrollbar's room)."""
        fleet = self.fleet_app.fleet
        node = min(24, max((len(n) for n in fleet.nodes), default=4))
        width = table.size.width or self.app.size.width
        message = rest_width(width, [*(w for _, _, w in COLUMNS), node])
        if message == self._message_width:
            return
        self._message_width = message
        table.clear(columns=True)
        for key, label, w in COLUMNS:
            table.add_column(label, key=key, width=w)
        table.add_column("NODE", key="node", width=node)
        table.add_column("ALERT", key="message", width=message)

    def on_resize(self) -> None:
        self.redraw()

    def on_mount(self) -> None:
        self.sub_title = "alerts"
        self.redraw()
        self.query_one(DataTable).focus()

    def fleet_changed(self, changed: set[str], now: float) -> None:
        """Redrawn when an alert is raised or ends, and every few seconds for the ages."""
        fleet = self.fleet_app.fleet
        if fleet.alert_changes != self._drawn_changes or now - self._drawn_at >= AGES_EVERY_S:
            self.redraw()

    def redraw(self) -> None:
        app = self.fleet_app
        now = app.clock()
        table: DataTable[Text] = self.query_one("#alerts", DataTable)
        keep = self._records[table.cursor_row] if table.cursor_row < len(self._records) else None
        self._columns(table)
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
            table.add_row(
                plain(ago(now - r.since)),
                status,
                plain(a.severity),
                plain(a.node),
                Text(clean(a.message), end=""),  # wrapped in its column
                key=str(i),
                height=None,
            )
        self._records = records
        self._drawn_changes, self._drawn_at = app.fleet.alert_changes, now
        self.query_one("#alerts-head", TextBlock).update(
            f"{active} active, {len(records) - active} ended (newest first)"
        )
        at = next((i for i, r in enumerate(records) if r is keep), None)
        if at is not None:  # the cursor stays on its alert
            table.move_cursor(row=at, animate=False)

    def action_open_node(self) -> None:
        table = self.query_one("#alerts", DataTable)
        if table.cursor_row < len(self._records):
            self.fleet_app.open_node(self._records[table.cursor_row].alert.node)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_node()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self))
