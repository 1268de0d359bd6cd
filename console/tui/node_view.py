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
from textual.widgets import Header

from agents.protocol import (
    MIB,
    AuditEntry,
    GpufleetError,
    clock_reason_words,
    slowdown_reasons,
)
from console.model.fleet import DOWN_STATES
from console.model.history import Metric
from console.ops.actions import VERBS
from console.present.rows import when
from console.present.sparkline import sparkline
from console.present.words import age, plural
from console.tui.action_dialog import VERB_BINDINGS, start_action
from console.tui.base import FleetView
from console.tui.help import HelpScreen
from console.tui.key_bar import KeyBar
from console.tui.style import clean, na, tone_style
from console.tui.text_line import TextBlock, packed
from console.tui.text_table import Cell, TableColumn, layout, text_table

if TYPE_CHECKING:
    from console.model.fleet import NodeView

SPARK_WIDTH: Final = 16
#: The GPU table's sparklines at their widest (they shrink on a narrow terminal).
GPU_SPARK_WIDTH: Final = 12
#: Cells of a reading after its sparkline, from the value's domain: utilization to "100",
#: memory to 6 digits of MiB (141 GiB), temperature to 3 digits, power to 4 (1,000 W).
VALUE_WIDTH: Final = {"util": 3, "mem": 6, "temp": 3, "power": 4}
SPARK_METRICS: Final[tuple[Metric, ...]] = ("util", "mem", "temp", "power")
#: The GPU table's columns: widths from the values' domain, not from the values, so nothing
#: moves as readings change; on a narrow terminal the sparklines shrink, then the clock speeds
#: go (see text_table.layout). The clocks' reasons, of any length, come last.
GPU_COLUMNS: Final = (
    TableColumn("gpu", "GPU", 3, priority=1),
    TableColumn("util", "UTIL %", GPU_SPARK_WIDTH + 1 + VALUE_WIDTH["util"], 6, priority=2),
    TableColumn("mem", "MEM MiB", GPU_SPARK_WIDTH + 1 + VALUE_WIDTH["mem"], 7, priority=8),
    TableColumn("temp", "TEMP C", GPU_SPARK_WIDTH + 1 + VALUE_WIDTH["temp"], 6, priority=3),
    TableColumn("power", "POWER W", GPU_SPARK_WIDTH + 1 + VALUE_WIDTH["power"], 7, priority=4),
    TableColumn("clocks", "SM/MEM MHz", 10, priority=9),
    TableColumn("ecc", "ECC UNCORR", 10, priority=6),
    TableColumn("remap", "REMAPPED", 16, 8, priority=7),
    TableColumn("reasons", "CLOCKS LIMITED BY", 24, 12, priority=5, grow=True, short="LIMITED BY"),
)
PROC_COLUMNS: Final = (
    TableColumn("gpu", "GPU", 3, priority=1),
    TableColumn("pid", "PID", 7, priority=2),
    TableColumn("user", "USER", 12, 4, priority=3),
    TableColumn("mem", "MEM MiB", 7, priority=5),
    TableColumn("command", "COMMAND", 60, 10, priority=4, grow=True),
)
#: Columns between the tables' columns.
GAP: Final = 2
EVENTS_SHOWN: Final = 20
AUDIT_SHOWN: Final = 20


def audit_text(entries: list[dict[str, Any]]) -> str:
    """The agent's audit entries, newest first, one line each (as the agent prints them)."""
    lines = [msgspec.convert(e, AuditEntry).line() for e in reversed(entries)]
    shown = "\n".join(lines) if lines else "  empty: nothing was done on this node"
    return "audit log (newest first)\n" + shown


class NodeScreen(FleetView[None]):
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
        self._drawn_width = 0  # the width the tables were laid out for

    def show(self, name: str) -> None:
        """The node this view shows next time it is pushed."""
        self.node = name

    @property
    def view(self) -> NodeView:
        return self.fleet_app.fleet.nodes[self.node]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll():
            yield TextBlock(id="node-head")
            yield TextBlock(id="gpus")
            yield TextBlock(id="procs")
            yield TextBlock(id="host")
            yield TextBlock(id="events")
            yield TextBlock(id="audit")
        yield KeyBar()

    def on_screen_resume(self) -> None:
        self.sub_title = clean(self.node)
        self.audit_text = "audit log: asking the agent ..."
        self.redraw()
        self.call_after_refresh(self._relaid)  # the tables again at the width now laid out
        self.action_audit()

    def on_resize(self) -> None:
        self.call_after_refresh(self._relaid)

    def _relaid(self) -> None:
        """The tables again if the room for them changed (a scrollbar came, the terminal
        was resized)."""
        here = self.is_current and self.node in self.fleet_app.fleet.nodes
        if here and self._table_width() != self._drawn_width:
            self._draw_gpus()
            self._draw_host()

    def _table_width(self) -> int:
        """Cells the tables may take: the scrolling area's width, less their padding (before
        the first layout: the terminal's, less a scrollbar)."""
        width = self.query_one(VerticalScroll).scrollable_content_region.width
        return max(20, (width or self.app.size.width - 2) - 2)

    def fleet_changed(self, changed: set[str], now: float) -> None:
        if self.node in changed:
            self.redraw()

    def redraw(self) -> None:
        view, app = self.view, self.fleet_app
        now = app.clock()
        state = view.state
        inv = view.inventory
        link = view.link if view.link == "live" else f"{view.link}: {clean(view.link_reason)}"
        ops: str = state.state if state else "unknown"
        if state and state.state != "schedulable":
            reason, who = clean(state.reason or "no reason"), clean(state.who or "?")
            ops += f" ({reason}, {who}@{when(state.since)})"
        pool = clean(view.pool)
        if view.pool != view.entry.pool:  # reassigned: where the pool comes from
            pool += f" (the agent's; inventory: {clean(view.entry.pool)})"
        # A node the console cannot reach: its last readings are kept on screen, dimmed and
        # said to be old (the fleet view leaves them out), never as if current.
        old = view.sample is not None and view.link in DOWN_STATES
        sample_age = age(view.age(now)) if view.age(now) else ""
        head = [
            f"{clean(view.name)}  pool {pool}  state {ops}",
            f"link {link}" + (f"  (sample {sample_age} old)" if sample_age and not old else ""),
        ]
        if old:
            head.append(f"below: the last readings, {sample_age} old: not current")
        for part in ("#gpus", "#procs", "#host"):
            self.query_one(part).set_class(old, "old")
        if inv is not None:
            head.append(
                f"{plural(len(inv.gpus), 'GPU')} via {inv.backend}, "
                f"driver {na(inv.driver_version)}, "
                f"CUDA {na(inv.cuda_version)}; agent {view.agent or 'n/a'}"
            )
        self.query_one("#node-head", TextBlock).update("\n".join(head))
        self._draw_gpus()
        self._draw_host()
        self._draw_events()
        self.query_one("#audit", TextBlock).update(self.audit_text)

    def _spark(self, gpu: int, metric: Metric, hi: float | None, width: int | None) -> str:
        """The GPU's history as a sparkline (as much as ``width`` leaves room for), then its
        latest value in the column's unit, right-aligned to the widest the unit allows."""
        if width is None:
            return ""
        values = self.view.history.gpu(gpu, metric)
        scale = {"mem": MIB, "power": 1000}.get(metric, 1)
        values = [None if v is None else v / scale for v in values]
        latest = next((v for v in reversed(values) if v is not None), None)
        value = na(latest, "{:.0f}").rjust(VALUE_WIDTH[metric])
        spark = width - len(value) - 1
        return f"{sparkline(values, spark, hi=hi)} {value}" if spark >= 2 else value.rjust(width)

    def _draw_gpus(self) -> None:
        view, app = self.view, self.fleet_app
        sample = view.sample
        infos = {g.index: g for g in view.inventory.gpus} if view.inventory else {}
        bad = tone_style(app, "bad")
        table_width = self._drawn_width = self._table_width()
        laid = layout(GPU_COLUMNS, table_width + GAP, GAP)
        widths = {c.key: w for c, w in zip(GPU_COLUMNS, laid, strict=True)}
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
            limit = info.temp_slowdown_c if info else None
            hot = app.fleet.rules.temperature(r.temp_c, limit) is not None
            remap = (
                na(r.remapped_uncorrectable)
                + (" pending" if r.remap_pending else "")
                + (" FAILED" if r.remap_failure else "")
            )
            his = {"util": 100.0, "mem": mem_hi, "temp": temp_hi, "power": power_hi}
            util, mem, temp, power = (
                self._spark(r.index, m, his[m], widths[m]) for m in SPARK_METRICS
            )
            rows.append(
                [
                    (str(r.index), ""),
                    (util, ""),
                    (mem, ""),
                    (temp, bad if hot else ""),
                    (power, ""),
                    (f"{na(r.sm_clock_mhz)}/{na(r.mem_clock_mhz)}", ""),
                    (na(r.ecc_uncorrected_volatile), bad if r.ecc_uncorrected_volatile else ""),
                    (remap, bad if r.remap_pending or r.remap_failure else ""),
                    (reasons, bad if slowdown_reasons(r) else ""),
                ]
            )
        if sample is None:  # never answered: no table of nothing
            self.query_one("#gpus", TextBlock).update("GPUs: no sample yet")
            self.query_one("#procs", TextBlock).update("GPU processes: not known (no sample)")
            return
        self.query_one("#gpus", TextBlock).update(text_table(GPU_COLUMNS, rows, table_width))
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
        shown = (
            text_table(PROC_COLUMNS, procs, table_width)
            if procs
            else Text("no GPU processes listed")
        )
        self.query_one("#procs", TextBlock).update(shown)

    def _draw_host(self) -> None:
        sample = self.view.sample
        if sample is None:
            self.query_one("#host", TextBlock).update("host: no sample yet")
            return
        h = sample.host
        load = " ".join(f"{x:.2f}" for x in h.load) if h.load else "n/a"
        net = (
            f"net rx {h.net_rx_bps / 1e6:.1f} MB/s tx {h.net_tx_bps / 1e6:.1f} MB/s"
            if h.net_rx_bps is not None and h.net_tx_bps is not None
            else "net n/a"
        )
        cpu = sparkline(self.view.history.host_cpu(), SPARK_WIDTH, hi=100.0)
        total = f"{h.mem_total / (1 << 30):.1f}"
        parts = [
            f"host  cpu {cpu} {na(h.cpu_percent, '{:.0f}%')}",
            f"load {load}",
            f"memory {h.mem_used / (1 << 30):.1f}/{total} GiB",
            net,
        ]
        # Broken where the values at their widest would be, so a reading gaining a digit
        # never moves a part to the other line.
        widest = [
            f"host  cpu {cpu} 100%",
            "load 99.99 99.99 99.99",
            f"memory {total}/{total} GiB",
            "net rx 9999.9 MB/s tx 9999.9 MB/s",
        ]
        room = [max(len(w), len(p)) for w, p in zip(widest, parts, strict=True)]
        width = self._table_width()
        self.query_one("#host", TextBlock).update("\n".join(packed(parts, width, room, "  ")))

    def _draw_events(self) -> None:
        events = list(self.view.events)[-EVENTS_SHOWN:]
        lines = [f"{when(e.ts, True)}  {e.kind:<14} {clean(e.message)}" for e in reversed(events)]
        self.query_one("#events", TextBlock).update(
            "recent events\n"
            + ("\n".join(lines) if lines else "  none since the console connected")
        )

    def action_audit(self) -> None:
        self.run_worker(self._load_audit(), exclusive=True, group="audit")

    async def _load_audit(self) -> None:
        self.audit_text = await self._ask_audit()
        if self.is_mounted:
            self.query_one("#audit", TextBlock).update(self.audit_text)

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
        self.app.push_screen(HelpScreen(self))

    def chosen(self) -> list[str]:
        """The nodes a verb acts on here: this node."""
        return [self.node]

    def action_verb(self, verb: str) -> None:
        if verb in VERBS:
            start_action(self.fleet_app, VERBS[verb].verb, self.chosen())
