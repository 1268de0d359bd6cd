"""The fleet as the console knows it: one ``NodeView`` per inventory node, fed frames by the
links, judged by alert rules, and read by the screen and the commands.

Headless on purpose (it never imports Textual): the TUI, ``gpufleet status`` and the tests all
drive the same model. It does no I/O and reads no clock of its own: every call that depends on
time takes ``now`` (monotonic seconds), so staleness is decided by the console's clock and not
by the agents' timestamps, which a node with a jumping clock would corrupt.

Subscribers are not called once per frame: the model collects which nodes changed, and
``flush`` hands them over in one batch, which the screen calls at its steady refresh rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from agents.protocol import (
    ALARMING_REASONS,
    Event,
    Inventory,
    NodeState,
    Sample,
)
from console.inventory import NodeEntry

LinkState = Literal[
    "connecting",
    "live",
    "stale",
    "unreachable",
    "auth_failed",
    "hostkey_unknown",
    "hostkey_changed",
    "agent_down",
    "protocol_mismatch",
]
#: Link states in which the node's data cannot be trusted as current.
DOWN_STATES: Final = frozenset(
    {"unreachable", "auth_failed", "hostkey_unknown", "hostkey_changed", "agent_down",
     "protocol_mismatch"}
)  # fmt: skip

Severity = Literal["warning", "critical"]


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds an operator may tune; the defaults follow design.md §2."""

    #: Alert when a GPU is this close to its own slowdown temperature (0: at it).
    temp_margin_c: int = 3
    #: An XID stays an active alert this long after it was seen.
    xid_window_s: float = 3600.0
    #: Samples missing for this many intervals make a live node stale.
    stale_intervals: float = 3.0
    #: History kept per node for sparklines (samples).
    history: int = 300


@dataclass(frozen=True, slots=True)
class Alert:
    node: str
    kind: str  # temperature, slowdown, xid, ecc, remap_pending, gpu_lost, stale, unreachable
    severity: Severity
    message: str
    gpu: int | None = None


@dataclass
class NodeView:
    entry: NodeEntry
    link: LinkState = "connecting"
    link_reason: str = ""
    link_since: float = 0.0
    inventory: Inventory | None = None
    sample: Sample | None = None
    sample_at: float | None = None  # console monotonic time the latest sample arrived
    interval: float = 1.0
    agent: str | None = None  # the agent's software and protocol, from its hello
    history: deque[Sample] = field(default_factory=deque)  # bounded by FleetState
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=200))
    xids_seen: dict[int, tuple[float, int]] = field(default_factory=dict)  # gpu -> (at, xid)
    alerts: list[Alert] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def state(self) -> NodeState | None:
        """The ops state, from the latest inventory or state event."""
        return self.inventory.state if self.inventory else None

    def age(self, now: float) -> float | None:
        """Seconds since the latest sample arrived, or None before the first."""
        return None if self.sample_at is None else max(0.0, now - self.sample_at)


class FleetState:
    def __init__(self, entries: Iterable[NodeEntry], rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        self.nodes: dict[str, NodeView] = {
            e.name: NodeView(e, history=deque(maxlen=self.rules.history)) for e in entries
        }
        self._dirty: set[str] = set()
        self._subscribers: list[Callable[[set[str]], None]] = []

    # -- what the links report ------------------------------------------------------------

    def set_link(self, node: str, link: LinkState, reason: str, now: float) -> None:
        view = self.nodes[node]
        if (view.link, view.link_reason) != (link, reason):
            view.link, view.link_reason, view.link_since = link, reason, now
            self._judge(view, now)

    def apply(self, node: str, frame: Inventory | Sample | Event, now: float) -> None:
        """One frame from a node's agent."""
        view = self.nodes[node]
        if isinstance(frame, Inventory):
            # Each session starts with the inventory, then the agent replays its whole
            # buffer: start the history afresh rather than hold every replay twice.
            view.inventory = frame
            view.history.clear()
        elif isinstance(frame, Sample):
            view.history.append(frame)
            if not frame.replay:
                view.sample, view.sample_at = frame, now
                if view.link != "live":
                    view.link, view.link_reason, view.link_since = "live", "", now
            elif view.sample is None or frame.seq > view.sample.seq:
                view.sample = frame  # history fills the table too until live samples come
        else:
            view.events.append(frame)
            if frame.kind == "xid" and frame.gpu is not None and frame.xid is not None:
                view.xids_seen[frame.gpu] = (now, frame.xid)
            if frame.kind == "state" and frame.state is not None and view.inventory is not None:
                view.inventory = _with_state(view.inventory, frame.state)
        self._judge(view, now)

    def set_agent(self, node: str, software: str, proto: str, interval: float | None) -> None:
        """What the agent said in its hello."""
        view = self.nodes[node]
        view.agent = f"{software}, protocol {proto}"
        if interval:
            view.interval = interval

    # -- time passing -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Mark live nodes whose samples stopped as stale, with their age."""
        for view in self.nodes.values():
            age = view.age(now)
            limit = self.rules.stale_intervals * view.interval
            if view.link in ("live", "stale") and age is not None and age > limit:
                reason = f"no sample for {age:.0f} s"
                if (view.link, view.link_reason) != ("stale", reason):
                    view.link, view.link_reason = "stale", reason
                    self._judge(view, now)

    # -- alerts -------------------------------------------------------------------------------

    def _judge(self, view: NodeView, now: float) -> None:
        view.alerts = list(self._alerts(view, now))
        self._dirty.add(view.name)

    def _alerts(self, view: NodeView, now: float) -> Iterable[Alert]:
        name = view.name
        if view.link in DOWN_STATES:
            yield Alert(name, "unreachable", "critical", f"{view.link}: {view.link_reason}")
        elif view.link == "stale":
            yield Alert(name, "stale", "warning", view.link_reason)
        for gpu, (at, xid) in sorted(view.xids_seen.items()):
            if now - at <= self.rules.xid_window_s:
                yield Alert(name, "xid", "critical", f"GPU {gpu}: XID {xid}", gpu)
        if view.sample is None:
            return
        infos = {g.index: g for g in view.inventory.gpus} if view.inventory else {}
        for r in view.sample.gpus:
            i = r.index
            if r.lost:
                yield Alert(name, "gpu_lost", "critical", f"GPU {i} is lost", i)
                continue
            info = infos.get(i)
            limit = info.temp_slowdown_c if info else None
            hot = self._temperature(name, i, r.temp_c, limit)
            if hot is not None:
                yield hot
            slowed = ALARMING_REASONS.intersection(r.clock_reasons or ())
            if slowed:
                msg = f"GPU {i}: clocks slowed ({', '.join(sorted(slowed))})"
                yield Alert(name, "slowdown", "warning", msg, i)
            if r.ecc_uncorrected_volatile:
                msg = f"GPU {i}: {r.ecc_uncorrected_volatile} uncorrected ECC errors"
                yield Alert(name, "ecc", "critical", msg, i)
            if r.remap_pending:
                msg = f"GPU {i}: row remapping pending, needs a reset"
                yield Alert(name, "remap_pending", "warning", msg, i)

    def _temperature(
        self, node: str, gpu: int, temp: int | None, limit: int | None
    ) -> Alert | None:
        """Against the GPU's own slowdown threshold, not a fixed number: cards differ."""
        if temp is None or limit is None or temp < limit - self.rules.temp_margin_c:
            return None
        severity: Severity = "critical" if temp >= limit else "warning"
        return Alert(
            node, "temperature", severity, f"GPU {gpu}: {temp} C, slowdown at {limit} C", gpu
        )

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[set[str]], None]) -> None:
        self._subscribers.append(callback)

    def flush(self) -> set[str]:
        """Hand every subscriber the names changed since the last flush, once; return them."""
        if not self._dirty:
            return set()
        changed, self._dirty = self._dirty, set()
        for callback in self._subscribers:
            callback(set(changed))
        return changed


def _with_state(inv: Inventory, state: NodeState) -> Inventory:
    return msgspec.structs.replace(inv, state=state)
