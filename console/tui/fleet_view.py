"""The fleet view: one row per node, the fleet's totals above, the verbs on the keys.

Rows come from ``console.rows`` (headless); this screen only lays them out, keeps the cursor on
the same node across refreshes, and redraws only the rows that changed when the order did not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from console.actions import VERBS
from console.rows import (
    COLUMNS,
    Column,
    NodeRow,
    RowFilter,
    SelectorError,
    fleet_totals,
    parse_filter,
    visible_rows,
)
from console.tui.style import Tone, na, toned

if TYPE_CHECKING:
    from console.tui.app import FleetApp

GIB: Final = 1 << 30
LABELS: Final[dict[Column, str]] = {
    "name": "NODE",
    "pool": "POOL",
    "state": "STATE",
    "link": "LINK",
    "gpus": "GPUS",
    "util": "UTIL",
    "util_max": "MAX",
    "mem": "MEM GiB",
    "temp": "HOT",
    "power": "POWER W",
    "alerts": "ALERTS",
}


#: Columns of fixed width (text beyond ends in "…"); the others fit their content.
WIDTHS: Final[dict[Column, int]] = {"link": 32, "state": 11}


def _tone(row: NodeRow) -> Tone:
    if row.critical or row.link_text.startswith(("unreachable", "auth", "host", "agent", "proto")):
        return "bad"
    if row.link == "stale" or row.alerts or row.state in ("draining", "drained"):
        return "warn"
    if row.link == "connecting":
        return "dim"
    return "plain"


class FleetScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_node", "node", show=True),
        Binding("slash", "filter", "filter"),
        Binding("space", "mark", "mark"),
        Binding("s", "sort", "sort"),
        Binding("S", "reverse", "reverse", show=False),
        Binding("a", "alerts", "alerts"),
        Binding("d", "verb('drain')", "drain"),
        Binding("u", "verb('resume')", "resume"),
        Binding("r", "verb('restart')", "restart"),
        Binding("p", "verb('reassign')", "reassign"),
        Binding("question_mark", "help", "help"),
        Binding("escape", "clear", "clear", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_column: Column = "name"
        self.sort_reverse = False
        self.row_filter: RowFilter | None = None
        self.filter_text = ""
        self.marked: set[str] = set()
        self._order: list[str] = []

    @property
    def fleet_app(self) -> FleetApp:
        from console.tui.app import FleetApp

        assert isinstance(self.app, FleetApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="totals")
        yield Static(id="banner")
        table: DataTable[Text | str] = DataTable(id="fleet", cursor_type="row", zebra_stripes=True)
        table.add_column(" ", key="mark", width=1)
        for column in COLUMNS:
            table.add_column(LABELS[column], key=column, width=WIDTHS.get(column))
        table.add_column("REASON", key="reason")
        yield table
        yield Input(
            id="filter", placeholder="filter: words, gpu[01-08], pool=, state=, link=, alert"
        )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one(DataTable).focus()
        self.redraw()

    def on_screen_resume(self) -> None:
        self.redraw()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # --readonly: the verbs are not there at all (not shown, not bound)
        return not (action == "verb" and self.fleet_app.readonly)

    # -- drawing ------------------------------------------------------------------------------

    @property
    def table(self) -> DataTable[Text | str]:
        return self.query_one("#fleet", DataTable)

    def fleet_changed(self, changed: set[str], now: float) -> None:
        self.redraw(changed, now)

    def redraw(self, changed: set[str] | None = None, now: float | None = None) -> None:
        app = self.fleet_app
        now = app.clock() if now is None else now
        rows = visible_rows(app.fleet, now, self.row_filter, self.sort_column, self.sort_reverse)
        self._draw_head(now)
        table = self.table
        order = [r.name for r in rows]
        if order == self._order and changed is not None:
            for row in rows:
                if row.name in changed:
                    for key, cell in zip(self._keys(), self._cells(row), strict=True):
                        table.update_cell(row.name, key, cell, update_width=True)
            return
        current = self.current_node()
        table.clear()
        for row in rows:
            table.add_row(*self._cells(row), key=row.name)
        self._order = order
        if current in order:
            table.move_cursor(row=order.index(current), animate=False, scroll=False)

    def _keys(self) -> list[str]:
        return ["mark", *COLUMNS, "reason"]

    def _draw_head(self, now: float) -> None:
        app = self.fleet_app
        totals = fleet_totals(app.fleet)
        shown = f"  |  showing {len(self._order)} ({self.filter_text})" if self.row_filter else ""
        marks = f"  |  {len(self.marked)} marked" if self.marked else ""
        sort = f"  |  sort {LABELS[self.sort_column]}{' desc' if self.sort_reverse else ''}"
        self.query_one("#totals", Static).update(totals.line() + shown + marks + sort)
        banner = self.query_one("#banner", Static)
        if totals.nodes and totals.down == totals.nodes:
            banner.update(f"No node is reachable: all {totals.nodes} are down (see LINK).")
        else:
            parts = [
                f"{n} {what}" for n, what in ((totals.down, "down"), (totals.stale, "stale")) if n
            ]
            banner.update(f"Nodes not live: {', '.join(parts)} (see LINK).")
        banner.display = bool(totals.down + totals.stale)

    def _cells(self, row: NodeRow) -> list[Text | str]:
        app = self.fleet_app
        tone = _tone(row)
        mem = (
            f"{row.mem_used / GIB:.0f}/{row.mem_total / GIB:.0f}"
            if row.mem_used is not None and row.mem_total
            else "n/a"
        )
        live = row.live_data or row.link == "stale"
        return [
            "*" if row.name in self.marked else " ",
            toned(app, row.name, tone),
            row.pool,
            toned(app, row.state, "warn" if row.state in ("draining", "drained") else "plain"),
            toned(app, row.link_text, tone),
            str(row.gpus),
            na(row.util, "{:.0f}%") if live else "",
            na(row.util_max, "{}%") if live else "",
            mem if live else "",
            na(row.temp, "{}C") if live else "",
            na(row.power_w, "{:.0f}") if live else "",
            toned(app, str(row.alerts), "bad" if row.critical else "warn") if row.alerts else "",
            row.state_detail,
        ]

    # -- the cursor and the marks ------------------------------------------------------------

    def current_node(self) -> str | None:
        table = self.table
        if not self._order or table.cursor_row >= len(self._order):
            return None
        return self._order[table.cursor_row]

    def chosen(self) -> list[str]:
        """Marked rows if any (in the table's order), else the row under the cursor."""
        if self.marked:
            return [n for n in self.fleet_app.fleet.nodes if n in self.marked]
        node = self.current_node()
        return [node] if node else []

    # -- actions --------------------------------------------------------------------------------

    def action_open_node(self) -> None:
        node = self.current_node()
        if node is not None:
            self.fleet_app.open_node(node)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.fleet_app.open_node(event.row_key.value)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in COLUMNS:
            column: Column = key
            self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
            self.sort_column = column
            self.redraw()

    def action_mark(self) -> None:
        node = self.current_node()
        if node is None:
            return
        self.marked ^= {node}
        self.table.update_cell(node, "mark", "*" if node in self.marked else " ")
        self._draw_head(self.fleet_app.clock())
        self.table.action_cursor_down()

    def action_sort(self) -> None:
        self.sort_column = COLUMNS[(COLUMNS.index(self.sort_column) + 1) % len(COLUMNS)]
        self.redraw()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.value = self.filter_text
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        text = event.value.strip()
        try:
            self.row_filter = parse_filter(text) if text else None
        except SelectorError as exc:
            self.notify(str(exc), title="filter", severity="error")
            return
        self.filter_text = text
        event.input.display = False
        self.table.focus()
        self.redraw()

    def action_clear(self) -> None:
        """esc: close the filter box, else drop the filter, else drop the marks."""
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
            self.table.focus()
        elif self.row_filter is not None:
            self.row_filter, self.filter_text = None, ""
            self.redraw()
        elif self.marked:
            dropped, self.marked = self.marked, set()
            for node in dropped & set(self._order):
                self.table.update_cell(node, "mark", " ")
            self._draw_head(self.fleet_app.clock())

    def action_alerts(self) -> None:
        self.fleet_app.open_alerts()

    def action_help(self) -> None:
        from console.tui.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    def action_verb(self, verb: str) -> None:
        from console.tui.action_dialog import start_action

        if verb in VERBS:
            start_action(self.fleet_app, VERBS[verb].verb, self.chosen())
