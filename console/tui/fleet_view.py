"""The fleet view: one row per node, the fleet's totals above, the verbs on the keys.

Rows come from ``console.present.rows`` (headless); this screen only lays them out, keeps the cursor
on the same node across refreshes, and redraws only the rows that changed when the order did not.
"""

from __future__ import annotations

from typing import ClassVar, Final

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widgets import Header, Input

from console.ops.actions import VERBS
from console.present.rows import (
    COLUMN,
    COLUMNS,
    SORTABLE,
    Column,
    NodeSummary,
    RowCache,
    RowFilter,
    SelectorError,
    filter_note,
    fleet_totals,
    parse_filter,
)
from console.tui.action_dialog import VERB_BINDINGS, start_action
from console.tui.base import Acts, FleetView
from console.tui.fleet_table import Cell, FleetTable, fleet_columns
from console.tui.help import HelpScreen
from console.tui.key_bar import KeyBar
from console.tui.style import clean
from console.tui.text_line import PartsLine, TextLine

#: Rows recomputed per message during a refresh (about 2.5 ms of work each).
ROWS_PER_SLICE: Final = 100


class FleetScreen(FleetView[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_node", "node", show=True),
        Binding("slash", "filter", "filter"),
        Acts("space", "mark", "mark"),  # marks only choose what a verb acts on
        Binding("s", "sort", "sort"),
        Binding("S", "reverse", "reverse", show=False),
        Binding("a", "alerts", "alerts"),
        *VERB_BINDINGS,
        Binding("question_mark", "help", "help"),
        Binding("escape", "clear", "clear the filter, then the marks", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_column: Column = "name"
        self.sort_reverse = False
        self.row_filter: RowFilter | None = None
        self.filter_text = ""
        self.marked: set[str] = set()

    def compose(self) -> ComposeResult:
        self.rows = RowCache(self.fleet_app.fleet)
        yield Header(show_clock=False)
        yield PartsLine(id="totals")
        yield TextLine(id="source")
        yield TextLine(id="banner")
        fleet = self.fleet_app.fleet
        fits = {
            "name": max((len(n) for n in fleet.nodes), default=4),
            "pool": max((len(v.pool) for v in fleet.nodes.values()), default=4),
        }
        yield FleetTable(fleet_columns(fits), self._cells, id="fleet")
        yield Input(
            id="filter", placeholder="filter: words, gpu[01-08], pool=, state=, link=, alert"
        )
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#source", TextLine).display = self.fleet_app.feed is not None
        self.table.focus()
        now = self.fleet_app.clock()
        self.rows.update(now)
        self.redraw(now)

    def on_screen_resume(self) -> None:
        self.redraw()  # the rows were kept up while covered (keep_up)

    def keep_up(self, changed: set[str], now: float) -> None:
        self.rows.update(now, changed)

    @property
    def key_note(self) -> str:
        """Said first on the key bar: how many rows are marked, so a mark is never silent
        (and the totals line, cut at 80 columns, is not where to look for it)."""
        if not self.marked:
            return ""
        return f"{len(self.marked)} marked (esc clears)"

    # -- drawing ------------------------------------------------------------------------------

    @property
    def table(self) -> FleetTable:
        return self.query_one("#fleet", FleetTable)

    def fleet_changed(self, changed: set[str], now: float) -> None:
        self._update_rows(list(changed), now)

    def _update_rows(self, names: list[str], now: float) -> None:
        """The changed rows, a slice at a time, each slice its own message: a key pressed
        during a refresh of 1,000 rows waits for one slice, not for all of them."""
        self.rows.update(now, names[:ROWS_PER_SLICE])
        if len(names) > ROWS_PER_SLICE:
            self.call_later(self._update_rows, names[ROWS_PER_SLICE:], now)
        else:
            self.redraw(now)

    def redraw(self, now: float | None = None) -> None:
        """The visible nodes' rows, sorted; the table draws only what is on screen."""
        now = self.fleet_app.clock() if now is None else now
        self.table.set_rows(self.rows.visible(self.row_filter, self.sort_column, self.sort_reverse))
        self._draw_head(now)

    def _draw_head(self, now: float) -> None:
        totals = fleet_totals(self.rows.all())
        shown = (
            [f"| {filter_note(self.table.row_count, self.filter_text)}"] if self.row_filter else []
        )
        sort = f"| sort {COLUMN[self.sort_column].header}{' desc' if self.sort_reverse else ''}"
        self.query_one("#totals", PartsLine).parts = (*totals.parts(), *shown, sort)
        self._draw_source(now)
        banner = self.query_one("#banner", TextLine)
        if totals.nodes and totals.down == totals.nodes:
            banner.text = f"No node is reachable: all {totals.nodes} are down (see LINK)."
        else:
            parts = [
                f"{n} {what}" for n, what in ((totals.down, "down"), (totals.stale, "stale")) if n
            ]
            banner.text = f"Nodes not live: {', '.join(parts)} (see LINK)."
        shown_now = bool(totals.down + totals.stale)
        if banner.display != shown_now:  # a change of layout only when it appears or goes
            banner.display = shown_now

    def _draw_source(self, now: float) -> None:
        """Which source the rows come from and how old its data is; its fault, if any."""
        feed = self.fleet_app.feed
        if feed is None:
            return
        status = feed.status(now)
        line = self.query_one("#source", TextLine)
        line.text = status.line()
        line.set_class(status.fault is not None, "fault")

    def _cells(self, row: NodeSummary) -> list[Cell]:
        """Each column's words and tone, as ``COLUMNS`` declares them; a node with no
        readings (down, connecting) shows none, not even "n/a": no old numbers as current."""
        blank = not (row.live_data or row.link == "stale")
        return [
            ("", "plain") if blank and c.reading else (c.text(row), c.tone(row)) for c in COLUMNS
        ]

    # -- the cursor and the marks ------------------------------------------------------------

    def current_node(self) -> str | None:
        return self.table.current_node()

    def chosen(self) -> list[str]:
        """Marked rows that the filter shows, in the table's order; else the cursor's row.
        Marks hidden by a filter are not acted on: an operator acts on what is in sight."""
        if self.marked:
            return [n for n in self.table.row_names if n in self.marked]
        node = self.current_node()
        return [node] if node else []

    # -- actions --------------------------------------------------------------------------------

    def action_open_node(self) -> None:
        node = self.current_node()
        if node is not None:
            self.fleet_app.open_node(node)

    def on_fleet_table_selected(self, event: FleetTable.Selected) -> None:
        self.fleet_app.open_node(event.node)

    def on_fleet_table_header_clicked(self, event: FleetTable.HeaderClicked) -> None:
        if event.column in SORTABLE:
            column: Column = event.column
            self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
            self.sort_column = column
            self.redraw()

    def action_mark(self) -> None:
        node = self.current_node()
        if node is None:
            return
        self.marked ^= {node}
        self._show_marks()
        self.table.action_cursor(1)

    def _show_marks(self) -> None:
        self.table.set_marked(self.marked)
        self.query_one(KeyBar).refresh()

    def action_sort(self) -> None:
        self.sort_column = SORTABLE[(SORTABLE.index(self.sort_column) + 1) % len(SORTABLE)]
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
            self.row_filter = (
                parse_filter(text, self.fleet_app.fleet.nodes.values()) if text else None
            )
        except SelectorError as exc:
            # Said on the box, which stays open to be put right: a toast covered the box's
            # right half at 80x24.
            event.input.border_title = Content(clean(str(exc)))  # it quotes the filter: text
            event.input.add_class("-invalid")
            return
        self.filter_text = text
        event.input.display = False
        self.table.focus()
        self.redraw()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter" and event.input.border_title:
            event.input.border_title = None  # the error was about the text before
            event.input.remove_class("-invalid")

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
            self.marked = set()
            self._show_marks()

    def action_alerts(self) -> None:
        self.fleet_app.open_alerts()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self))

    def action_verb(self, verb: str) -> None:
        if verb in VERBS:
            start_action(self.fleet_app, VERBS[verb].verb, self.chosen(), self._marks_spent)

    def _marks_spent(self) -> None:
        """Once an action is sent, its marks are cleared (a second verb on the same marks
        would be a second decision, not a leftover), and the operator is told so."""
        if not self.marked:
            return
        count, self.marked = len(self.marked), set()
        self._show_marks()
        self.notify(f"{count} mark{'s' if count != 1 else ''} cleared: the action was sent")
