"""Acting on nodes from the screen: the confirmation dialog, then each node's result.

The dialog names the nodes and their count, opens with Cancel focused, shows who would be
disturbed (GPU processes and their users) and any mass-action warning, and asks for what the
verb needs (a reason, a restart target, a pool). Confirmed, the requests go out through the same
path the scripted commands use, and a results screen shows each node as pending until its agent
answers: ok, refused (with the agent's reason), or not delivered. Nothing is shown as done that
the agent did not say was done.

Keys in the dialog: Cancel has the focus, so a stray enter cancels; whatever is typed goes to
the reason (the operator's first keystroke is the reason's first letter, not lost on a
button); enter in the reason moves to the verb's button, and enter there confirms. So a
confirmation is always two deliberate steps after the reason, never one stray key. The details
scroll (pgup/pgdn) between a fixed title and a fixed form, so the buttons are on screen at any
size down to 80x24.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, get_args

import hostlist
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.widgets.data_table import RowKey

from console.model.fleet import DOWN_STATES, NodeView
from console.ops.actions import (
    VERBS,
    ActionError,
    NodeResult,
    Outcome,
    Verb,
    affected,
    busy_without_processes,
    guard_warnings,
    pools,
    request_args,
    restart_targets,
    run_action,
    why_no_restart_targets,
)
from console.present.words import plural
from console.tui.base import Acts, FleetAppBase, FleetDialog, FleetView
from console.tui.key_bar import KeyBar
from console.tui.style import clean, plain, toned
from console.tui.text_table import rest_width

#: Processes listed in the dialog before "and N more".
SHOWN_PROCESSES = 8


@dataclass(frozen=True)
class Confirmed:
    verb: Verb
    nodes: list[str]
    args: dict[str, Any]


#: The verbs' keys, the same in every view that shows nodes (the fleet and the node view),
#: each bound to that view's ``action_verb``; flagged ``Acts``, so read-only removes them.
VERB_BINDINGS: Final[list[BindingType]] = [
    Acts("d", "verb('drain')", "drain"),
    Acts("u", "verb('resume')", "resume"),
    Acts("r", "verb('restart')", "restart"),
    Acts("p", "verb('reassign')", "reassign"),
]


def start_action(
    app: FleetAppBase, verb: Verb, nodes: list[str], on_sent: Callable[[], None] | None = None
) -> None:
    """Open the dialog for ``verb`` on ``nodes``; on confirmation, send and show results.
    ``on_sent`` runs once the operator confirmed (the view's marks are spent then)."""
    if app.readonly:
        app.notify("read-only: actions are off", severity="warning")
        return
    if not nodes:
        app.notify("no node selected", severity="warning")
        return

    def confirmed(choice: Confirmed | None) -> None:
        if choice is not None:
            app.push_screen(ActionResults(choice))
            if on_sent is not None:
                on_sent()

    app.push_screen(ActionDialog(verb, nodes), confirmed)


def confirm_hint(verb: Verb) -> str:
    """How to confirm, said on the dialog itself."""
    spec = VERBS[verb]
    picks = {"target": "pick what to restart, ", "pool": "pick the pool, "}
    first = picks.get(spec.choice or "", "")
    reason = "type a reason" if spec.reason_required else "type a reason (optional)"
    return (
        f"{first}{reason}, then enter (or tab) to reach {spec.title}; enter on {spec.title} "
        "confirms · esc cancels"
    )


class ActionDialog(FleetDialog[Confirmed | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel"),
        Binding("tab", "cycle(1)", "next", show=False),
        Binding("shift+tab", "cycle(-1)", "previous", show=False),
        Binding("pageup", "scroll(-1)", "scroll up", show=False),
        Binding("pagedown", "scroll(1)", "scroll down", show=False),
    ]

    def __init__(self, verb: Verb, nodes: list[str]) -> None:
        super().__init__()
        self.verb = verb
        self.nodes = nodes

    def compose(self) -> ComposeResult:
        fleet = self.fleet_app.fleet
        spec = VERBS[self.verb]
        count = len(self.nodes)
        # The dialog scrolls under a docked title and form: the details (the processes, the
        # warnings) may run long, the buttons must stay in sight. Node names, users, command
        # lines, reasons: text, never markup (style.clean, markup=False).
        with VerticalScroll(id="dialog", can_focus=False):
            title = f"{spec.title} {count} node{'s' if count != 1 else ''}?"
            yield Label(title, id="title", markup=False)
            with Vertical(id="form"):
                if spec.choice == "target":
                    targets = restart_targets(fleet, self.nodes)
                    yield Select(
                        [(plain(t), t) for t in targets], prompt="restart what?", id="choice"
                    )
                elif spec.choice == "pool":
                    options = [(plain(p), p) for p in pools(fleet)]
                    yield Select(options, prompt="to which pool?", id="choice")
                placeholder = "reason (required)" if spec.reason_required else "reason (optional)"
                # not select_on_focus: the key that moved the focus here is already in it
                yield Input(placeholder=placeholder, id="reason", select_on_focus=False)
                yield Static(confirm_hint(self.verb), id="hint", markup=False)
                yield Static("", id="error", markup=False)
                with Horizontal(id="buttons"):
                    yield Button("Cancel", id="cancel")
                    yield Button(spec.title, id="confirm", variant="error")
            yield Static(clean(hostlist.collect_hostlist(self.nodes)), id="nodes", markup=False)
            yield Static(self._affected_text(), id="affected", markup=False)
            warnings = guard_warnings(fleet, self.nodes, self.verb)
            if spec.choice == "target" and (why := why_no_restart_targets(fleet, self.nodes)):
                warnings.append(why)
            down = [n for n in self.nodes if fleet.nodes[n].link in DOWN_STATES]
            if down:
                links = ", ".join(sorted({fleet.nodes[n].link for n in down}))
                warnings.append(
                    f"{hostlist.collect_hostlist(down)}: not reachable now ({links}): the "
                    "request cannot get there"
                )
            current = [n for n in self.nodes if _current(fleet.nodes[n])]
            hidden = busy_without_processes(fleet, current)
            if hidden and not self._processes_carried():
                warnings.append(
                    f"process lists are not in Prometheus: busy GPUs on "
                    f"{hostlist.collect_hostlist(hidden)} may be running someone's work"
                )
            elif hidden:
                warnings.append(
                    f"busy GPUs with no process listed (containers?) on "
                    f"{hostlist.collect_hostlist(hidden)}"
                )
            if warnings:
                text = "\n".join(f"! {clean(w)}" for w in warnings)
                yield Static(text, id="warnings", markup=False)

    def _processes_carried(self) -> bool:
        """Whether the live view's source carries GPU process lists: the agents' own streams
        do, Prometheus does not (an empty list there says nothing about the GPUs)."""
        feed = self.fleet_app.feed
        return feed is None or feed.spec.kind != "prometheus"

    def _affected_text(self) -> str:
        if not self._processes_carried():
            return (
                "GPU processes: not known here (process lists are not in Prometheus; the "
                "SSH source, gpufleet --source ssh, lists them)."
            )
        fleet = self.fleet_app.fleet
        unknown = [n for n in self.nodes if not _current(fleet.nodes[n])]
        known = [n for n in self.nodes if n not in unknown]
        said = []
        if known:
            said.append(self._processes_text(known))
        if unknown:  # not known is not none
            said.append(
                f"GPU processes on {hostlist.collect_hostlist(unknown)}: not known "
                "(no current sample)."
            )
        return "\n".join(said)

    def _processes_text(self, nodes: list[str]) -> str:
        procs = affected(self.fleet_app.fleet, nodes)
        if not procs:
            return f"No GPU processes listed on {hostlist.collect_hostlist(nodes)}."
        lines = [
            clean(f"{p.node} GPU {p.gpu}: pid {p.pid} {p.user or '?'} {p.command or ''}".rstrip())
            for p in procs[:SHOWN_PROCESSES]
        ]
        if len(procs) > SHOWN_PROCESSES:
            lines.append(f"... and {len(procs) - SHOWN_PROCESSES} more")
        users = sorted({clean(p.user or "?") for p in procs})
        who = "user" if len(users) == 1 else "users"
        counted = f"{plural(len(procs), 'process', 'processes')}; {who} {', '.join(users)}"
        return f"Running there ({counted}):\n" + "\n".join(lines)

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()  # a stray enter must not act

    def _stops(self) -> list[Widget]:
        """The Tab order: the choice, the reason, the verb, Cancel. From Cancel (where the
        dialog opens) one Tab reaches what is to be filled in, and from the reason one Tab
        reaches the verb (on screen Cancel comes first, as in other dialogs)."""
        choice: list[Widget] = list(self.query("#choice"))
        rest = [self.query_one(f"#{w}") for w in ("reason", "confirm", "cancel")]
        return [*choice, *rest]

    def action_cycle(self, step: int) -> None:
        stops, focused = self._stops(), self.focused
        at = next((i for i, w in enumerate(stops) if w is focused), -1)
        stops[(at + step) % len(stops)].focus()

    def action_scroll(self, pages: int) -> None:
        box = self.query_one("#dialog", VerticalScroll)
        if pages < 0:
            box.scroll_page_up()
        else:
            box.scroll_page_down()

    def on_key(self, event: events.Key) -> None:
        """A key typed while a button has the focus goes to the reason: the first keystroke
        of a reason is not lost, and space never presses a button by accident."""
        if isinstance(self.focused, Button) and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            reason = self.query_one("#reason", Input)
            reason.focus()
            reason.insert_text_at_cursor(event.character)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        elif event.button.id == "confirm":
            self._confirm()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the reason does not confirm: it moves to the verb's button (or says
        what is missing), and enter there confirms."""
        event.stop()
        missing = self._missing()
        self.query_one("#error", Static).update(missing or "")
        if missing is None:
            self.query_one("#confirm", Button).focus()

    def _missing(self) -> str | None:
        try:
            self._args()
        except ActionError as exc:
            return str(exc)
        return None

    def _args(self) -> dict[str, Any]:
        reason = self.query_one("#reason", Input).value
        choice = None
        if VERBS[self.verb].choice is not None:
            value = self.query_one("#choice", Select).value
            choice = value if isinstance(value, str) else None
        return request_args(self.verb, reason, choice)

    def _confirm(self) -> None:
        try:
            args = self._args()
        except ActionError as exc:
            self.query_one("#error", Static).update(clean(str(exc)))
            return
        self.dismiss(Confirmed(self.verb, self.nodes, args))


def _current(view: NodeView) -> bool:
    """Whether the node's latest sample is its present (a live or stale link): a node down
    may hold an old one, which says nothing of what runs there now."""
    return view.sample is not None and view.link not in DOWN_STATES


class ActionResults(FleetView[None]):
    """Each node's result as it comes; failures stay on screen until dismissed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(self, action: Confirmed) -> None:
        super().__init__()
        self.action = action
        self.results: dict[str, NodeResult] = {
            n: NodeResult(n, "pending", "sent, waiting for the agent") for n in action.nodes
        }

    def compose(self) -> ComposeResult:
        yield Label("", id="summary", markup=False)
        yield DataTable[Text](id="results", cursor_type="row")
        yield KeyBar()

    def on_mount(self) -> None:
        self._order = {node: i for i, node in enumerate(self.results)}
        self._detail_width = 0
        self._lay_out()
        self._summarise()
        # The app's worker, not this screen's: leaving the screen must not cancel requests
        # already on their way (their outcome would then be unknown to everyone).
        self.app.run_worker(self._send(), group="action")

    def on_resize(self) -> None:
        self._lay_out()

    def _lay_out(self) -> None:
        """The columns for the screen's width, the agent's answer wrapped in what the node and
        the outcome leave: an answer never runs past the screen (it did at 80 columns)."""
        table = self.query_one(DataTable)
        node = min(24, max(len(n) for n in self.results))
        outcome = max(len(o) for o in get_args(Outcome))
        detail = rest_width(table.size.width or self.app.size.width, [node, outcome])
        if detail == self._detail_width:
            return
        self._detail_width = detail
        table.clear(columns=True)
        table.add_column("NODE", key="node", width=node)
        table.add_column("RESULT", key="outcome", width=outcome)
        table.add_column("DETAIL", key="detail", width=detail)
        for node_name, r in self.results.items():
            table.add_row(*self._cells(r), key=node_name, height=None)

    def _cells(self, r: NodeResult) -> list[Text]:
        tone = {"ok": "good", "pending": "dim"}.get(r.outcome, "bad")
        said = r.outcome.replace("_", " ")
        detail = Text(clean(r.message), end="")  # wrapped in its column
        return [plain(r.node), toned(self.app, said, tone), detail]  # type: ignore[arg-type]

    async def _send(self) -> None:
        requester = self.fleet_app.requester
        a = self.action
        if requester is None:  # a screen with no links (never the case from the CLI)
            for node in a.nodes:
                self._show(NodeResult(node, "not_delivered", "not sent: no connection to nodes"))
            return
        results = await run_action(requester, a.nodes, a.verb, a.args, self._show)
        if not self.is_attached:  # the operator left before the end: say how it ended
            failed = [r for r in results if r.outcome != "ok"]
            if failed:
                self.app.notify(
                    f"{self._said()} (e.g. {failed[0].node}: {failed[0].message})",
                    severity="error",
                    timeout=15,
                )
            else:
                self.app.notify(self._said())

    def _show(self, result: NodeResult) -> None:
        self.results[result.node] = result
        if not self.is_attached:
            return
        table = self.query_one(DataTable)
        cells = self._cells(result)
        lines = len(cells[2].wrap(self.app.console, self._detail_width))
        if lines == table.rows[RowKey(result.node)].height:
            table.update_cell(result.node, "outcome", cells[1])
            table.update_cell(result.node, "detail", cells[2])
        else:  # a row's height is measured when it is added: added again, put back in place
            table.remove_row(result.node)
            table.add_row(*cells, key=result.node, height=None)
            table.sort("node", key=lambda node: self._order[node.plain])
        self._summarise()

    def _said(self) -> str:
        """The action and how many nodes ended each way ("Drain demo[01-03]: 2 ok, 1
        refused"): on this screen, and in the notice when the operator left it before the
        end (which once said "done on all 1")."""
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        said = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items()))
        title = VERBS[self.action.verb].title
        return f"{title} {hostlist.collect_hostlist(self.action.nodes)}: {said}"

    def _summarise(self) -> None:
        self.query_one("#summary", Label).update(clean(self._said()))
