"""The node view: every GPU with its sparklines, processes, the host, events and the audit log.

Sparklines are full on first paint: the link filled the history from the agent's buffer.
The audit entries are asked of the agent when the view opens (and on ``A``); if it cannot
answer, the view says why instead of showing an empty list as if nothing had happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Static

from agents.protocol import (
    ALARMING_REASONS,
    MIB,
    AuditEntry,
    GpufleetError,
    clock_reason_words,
)
from console.actions import VERBS
from console.history import Metric
from console.rows import when
from console.sparkline import sparkline
from console.tui.action_dialog import VERB_BINDINGS, verbs_allowed
from console.tui.key_bar import KeyBar
from console.tui.style import na, tone_style
from console.tui.text_table import Cell, text_table
from console.words import age

if TYPE_CHECKING:
    from console.fleet import NodeView
    from console.tui.app import FleetApp

SPARK_WIDTH: Final = 16
GPU_HEADERS: Final = (
    "GPU", "UTIL %", "MEM MiB", "TEMP C", "POWER W", "SM/MEM MHz", "CLOCKS LIMITED BY",
    "ECC UNCORR", "REMAPPED",
)  # fmt: skip
PROC_HEADERS: Final = ("GPU", "PID", "USER", "MEM MiB", "COMMAND")
EVENTS_SHOWN: Final = 20
AUDIT_SHOWN: Final = 20


def audit_text(entries: list[dict[str, Any]]) -> str:
    """The agent's audit entries, newest first, one line each (as the agent prints them)."""
    lines = [msgspec.convert(e, AuditEntry).line() for e in reversed(entries)]
    shown = "\n".join(lines) if lines else "  empty: nothing was done on this node"
    return "audit log (newest first)\n" + shown


class NodeScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("A", "audit", "reload audit"),
        *VERB_BINDINGS,
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self) -> None:
        """One instance serves every node (``show``): building a screen of tables each time a
        node is opened costs more than the operator should wait."""
        super().__init__()
        self.node = ""
        self.audit_text = ""

    def show(self, name: str) -> None:
        """The node this view shows next time it is pushed."""
        self.node = name

    @property
    def fleet_app(self) -> FleetApp:
        from console.tui.app import FleetApp

        assert isinstance(self.app, FleetApp)
        return self.app

    @property
    def view(self) -> NodeView:
        return self.fleet_app.fleet.nodes[self.node]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll():
            yield Static(id="node-head")
            yield Static(id="gpus")
            yield Static(id="procs")
            yield Static(id="host")
            yield Static(id="events")
            yield Static(id="audit")
        yield KeyBar()

    def on_screen_resume(self) -> None:
        self.sub_title = self.node
        self.audit_text = "audit log: asking the agent ..."
        self.redraw()
        self.action_audit()

    def fleet_changed(self, changed: set[str], now: float) -> None:
        if self.node in changed:
            self.redraw()

    def redraw(self) -> None:
        view, app = self.view, self.fleet_app
        now = app.clock()
        state = view.state
        inv = view.inventory
        link = view.link if view.link == "live" else f"{view.link}: {view.link_reason}"
        ops: str = state.state if state else "unknown"
        if state and state.state != "schedulable":
            ops += f" ({state.reason or 'no reason'}, {state.who or '?'}@{when(state.since)})"
        pool = view.pool
        if pool != view.entry.pool:  # reassigned: where the pool comes from
            pool += f" (the agent's; inventory: {view.entry.pool})"
        head = [
            f"{view.name}  pool {pool}  state {ops}",
            f"link {link}" + (f"  (sample {age(view.age(now))} old)" if view.age(now) else ""),
        ]
        if inv is not None:
            head.append(
                f"{len(inv.gpus)} GPU(s) via {inv.backend}, driver {na(inv.driver_version)}, "
                f"CUDA {na(inv.cuda_version)}; agent {view.agent or 'n/a'}"
            )
        self.query_one("#node-head", Static).update("\n".join(head))
        self._draw_gpus()
        self._draw_host()
        self._draw_events()
        self.query_one("#audit", Static).update(self.audit_text)

    def _spark(self, gpu: int, metric: Metric, hi: float | None) -> str:
        """The GPU's history as a sparkline, then its latest value in the column's unit."""
        values = self.view.history.gpu(gpu, metric)
        scale = {"mem": MIB, "power": 1000}.get(metric, 1)
        values = [None if v is None else v / scale for v in values]
        latest = next((v for v in reversed(values) if v is not None), None)
        return f"{sparkline(values, SPARK_WIDTH, hi=hi)} {na(latest, '{:.0f}')}"

    def _draw_gpus(self) -> None:
        view, app = self.view, self.fleet_app
        sample = view.sample
        infos = {g.index: g for g in view.inventory.gpus} if view.inventory else {}
        bad = tone_style(app, "bad")
        rows: list[list[Cell]] = []
        for r in sample.gpus if sample else []:
            info = infos.get(r.index)
            if r.lost:
                rows.append([(str(r.index), ""), ("GPU lost", bad), *[("", "")] * 7])
                continue
            mem_hi = info.memory_total / MIB if info and info.memory_total else None
            power_hi = info.power_limit_mw / 1000 if info and info.power_limit_mw else None
            temp_hi = float(info.temp_shutdown_c) if info and info.temp_shutdown_c else None
            reasons = clock_reason_words(r.clock_reasons or []) or "none"
            hot = (
                info is not None
                and info.temp_slowdown_c is not None
                and (r.temp_c or 0) >= (info.temp_slowdown_c - app.fleet.rules.temp_margin_c)
            )
            remap = (
                na(r.remapped_uncorrectable)
                + (" pending" if r.remap_pending else "")
                + (" FAILED" if r.remap_failure else "")
            )
            rows.append(
                [
                    (str(r.index), ""),
                    (self._spark(r.index, "util", 100.0), ""),
                    (self._spark(r.index, "mem", mem_hi), ""),
                    (self._spark(r.index, "temp", temp_hi), bad if hot else ""),
                    (self._spark(r.index, "power", power_hi), ""),
                    (f"{na(r.sm_clock_mhz)}/{na(r.mem_clock_mhz)}", ""),
                    (reasons, bad if ALARMING_REASONS & set(r.clock_reasons or ()) else ""),
                    (na(r.ecc_uncorrected_volatile), bad if r.ecc_uncorrected_volatile else ""),
                    (remap, bad if r.remap_pending or r.remap_failure else ""),
                ]
            )
        self.query_one("#gpus", Static).update(text_table(GPU_HEADERS, rows))
        procs: list[list[Cell]] = [
            [
                (str(r.index), ""),
                (str(p.pid), ""),
                (p.user or "?", ""),
                (na(None if p.used_memory is None else p.used_memory // MIB), ""),
                (p.command or "?", ""),
            ]
            for r in (sample.gpus if sample else [])
            for p in r.processes or []
        ]
        shown = text_table(PROC_HEADERS, procs) if procs else Text("no GPU processes listed")
        self.query_one("#procs", Static).update(shown)

    def _draw_host(self) -> None:
        sample = self.view.sample
        if sample is None:
            self.query_one("#host", Static).update("host: no sample yet")
            return
        h = sample.host
        load = " ".join(f"{x:.2f}" for x in h.load) if h.load else "n/a"
        net = (
            f"net rx {h.net_rx_bps / 1e6:.1f} MB/s tx {h.net_tx_bps / 1e6:.1f} MB/s"
            if h.net_rx_bps is not None and h.net_tx_bps is not None
            else "net n/a"
        )
        cpu = sparkline(self.view.history.host_cpu(), SPARK_WIDTH, hi=100.0)
        self.query_one("#host", Static).update(
            f"host  cpu {cpu} {na(h.cpu_percent, '{:.0f}%')}  load {load}  "
            f"memory {h.mem_used / (1 << 30):.1f}/{h.mem_total / (1 << 30):.1f} GiB  {net}"
        )

    def _draw_events(self) -> None:
        events = list(self.view.events)[-EVENTS_SHOWN:]
        lines = [f"{when(e.ts, True)}  {e.kind:<14} {e.message}" for e in reversed(events)]
        self.query_one("#events", Static).update(
            "recent events\n"
            + ("\n".join(lines) if lines else "  none since the console connected")
        )

    def action_audit(self) -> None:
        self.run_worker(self._load_audit(), exclusive=True, group="audit")

    async def _load_audit(self) -> None:
        self.audit_text = await self._ask_audit()
        if self.is_mounted:
            self.query_one("#audit", Static).update(self.audit_text)

    async def _ask_audit(self) -> str:
        requester = self.fleet_app.requester
        if requester is None:
            return "audit log: not connected"
        try:
            answer = await requester.request(self.node, "audit", {"limit": AUDIT_SHOWN})
        except GpufleetError as exc:  # not delivered: said, not raised
            return f"audit log: {exc}"
        if not answer.ok:
            return f"audit log: the agent refused: {answer.error}"
        return audit_text((answer.result or {}).get("entries", []))

    def action_help(self) -> None:
        from console.tui.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return verbs_allowed(self.fleet_app, action)

    def chosen(self) -> list[str]:
        """The nodes a verb acts on here: this node."""
        return [self.node]

    def action_verb(self, verb: str) -> None:
        from console.tui.action_dialog import start_action

        if verb in VERBS:
            start_action(self.fleet_app, VERBS[verb].verb, self.chosen())
