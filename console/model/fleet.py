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
    STALE_INTERVALS,
    Event,
    Inventory,
    NodeState,
    Sample,
    ecc_message,
    gpu_lost_message,
    remap_pending_message,
    slowdown_message,
    slowdown_reasons,
    xid_message,
)
from console.model.history import History
from console.model.inventory import NodeEntry
from console.present.words import age

LinkState = Literal[
    "connecting",  # only until the first answer: a retry keeps the data, or the node down
    "live",
    "stale",
    "unreachable",
    "auth_failed",
    "hostkey_unknown",
    "hostkey_changed",
    "agent_down",
    "protocol_mismatch",
    "no_data",  # the Prometheus source has no series for the node
    "not_tried",  # a snapshot ended before this node's turn for a handshake came
    "fault",  # a fault of gpufleet's own code in the node's feed: the traceback is in the log
]
#: Link states in which the node's data cannot be trusted as current.
DOWN_STATES: Final = frozenset(
    {"unreachable", "auth_failed", "hostkey_unknown", "hostkey_changed", "agent_down",
     "protocol_mismatch", "no_data", "not_tried", "fault"}
)  # fmt: skip

Severity = Literal["warning", "critical"]
PoolSource = Literal["agent", "inventory"]

#: Alerts kept in the fleet's alert log, active and ended.
ALERT_LOG: Final = 1000


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds an operator may tune; the defaults follow design.md §2."""

    #: Alert when a GPU is this close to its own slowdown temperature (0: at it).
    temp_margin_c: int = 3
    #: An XID stays an active alert this long after it was seen.
    xid_window_s: float = 3600.0
    #: Samples missing for this many intervals make a live node stale.
    stale_intervals: float = STALE_INTERVALS
    #: History kept per node for sparklines (samples).
    history: int = 300

    def temperature(self, temp: int | None, limit: int | None) -> Severity | None:
        """The temperature rule, against the GPU's own slowdown threshold (``limit``,
        ``GpuInfo.temp_slowdown_c``), not a fixed number: cards differ. Critical at the
        threshold, a warning within ``temp_margin_c`` of it, else None (and None when either
        is not known). The alert and the node view's hot temperature both ask this."""
        if temp is None or limit is None or temp < limit - self.temp_margin_c:
            return None
        return "critical" if temp >= limit else "warning"


@dataclass(frozen=True, slots=True)
class Alert:
    node: str
    kind: str  # temperature, slowdown, xid, ecc, remap_pending, gpu_lost, stale, unreachable,
    # not_tried (a snapshot's node whose handshake never started), fault (gpufleet's own)
    severity: Severity
    message: str
    gpu: int | None = None


@dataclass(slots=True)
class AlertRecord:
    """One alert from when it was first raised until it ended (console monotonic times)."""

    alert: Alert  # the latest wording (a temperature alert's reading changes as it goes)
    since: float
    ended: float | None = None


@dataclass
class NodeView:
    entry: NodeEntry
    link: LinkState = "connecting"
    link_reason: str = ""
    link_since: float = 0.0
    #: The node's inventory frame, as its agent (or the Prometheus source) last sent it, with
    #: the ops state one field of it, kept current by state events (``FleetState.apply``):
    #: the one place the console holds either, so a source compares what it reads against
    #: this frame whole, and nothing is kept beside it or stripped from it.
    inventory: Inventory | None = None
    sample: Sample | None = None
    sample_at: float | None = None  # console monotonic time the latest sample arrived
    interval: float = 1.0
    agent: str | None = None  # the agent's software and protocol, from its hello
    protocol: tuple[int, int] | None = None  # the protocol (major, minor) it speaks
    history: History = field(default_factory=lambda: History(AlertRules().history))
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=200))
    xids_seen: dict[int, tuple[float, int]] = field(default_factory=dict)  # gpu -> (at, xid)
    alerts: list[Alert] = field(default_factory=list)
    open_alerts: dict[tuple[str, int | None], AlertRecord] = field(default_factory=dict)
    #: Why the stream broke while its data was still recent: the link state it becomes if no
    #: sample comes back within the stale window.
    lost: tuple[LinkState, str] | None = None
    #: An inventory came and no sample since: if the next is a replay, it is the start of a
    #: session's copy of the agent's buffer, which replaces the history.
    after_inventory: bool = False

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def link_said(self) -> str:
        """The link's state with its reason, as an operator is told why a node was not reached
        (a verb not sent, a dry run, an audit not read): the state alone says nothing to do."""
        return f"{self.link}: {self.link_reason}" if self.link_reason else self.link

    @property
    def state(self) -> NodeState | None:
        """The ops state: the inventory frame's, which the latest state event set."""
        return self.inventory.state if self.inventory else None

    @property
    def pool(self) -> str:
        """The pool the node is in now: the agent's, once it has one (a reassign, or the
        scheduler's partition or label), else the inventory's, which is the default until an
        agent says otherwise. An operator who reassigns a node expects it to be in the new
        pool everywhere: the inventory is what was planned, the agent is what is."""
        state = self.state
        return state.pool if state is not None and state.pool else self.entry.pool

    @property
    def pool_source(self) -> PoolSource:
        """Where ``pool`` comes from: ``agent`` or ``inventory``."""
        state = self.state
        return "agent" if state is not None and state.pool else "inventory"

    @property
    def answered(self) -> bool:
        """The node's agent sent a live sample on the current connection."""
        return self.link in ("live", "stale") and self.sample_at is not None

    def age(self, now: float) -> float | None:
        """Seconds since the latest sample arrived, or None before the first."""
        return None if self.sample_at is None else max(0.0, now - self.sample_at)


class FleetState:
    def __init__(self, entries: Iterable[NodeEntry], rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        self.nodes: dict[str, NodeView] = {
            e.name: NodeView(e, history=History(self.rules.history)) for e in entries
        }
        #: Alerts raised across the fleet, active and ended, oldest first (the alerts view).
        self.alert_log: deque[AlertRecord] = deque(maxlen=ALERT_LOG)
        self.alert_changes = 0  # counts alerts raised and ended: a view redraws when it moves
        self._dirty: set[str] = set()
        self._subscribers: list[Callable[[set[str]], None]] = []

    # -- what the links report ------------------------------------------------------------

    def set_link(self, node: str, link: LinkState, reason: str, now: float) -> None:
        """A link's news. A stream that breaks while its data is still within the stale window
        (an agent restarting, a blip) makes the node stale, not down: it is down only if no
        sample comes back in time (``tick``), so a routine agent restart does not page."""
        view = self.nodes[node]
        if link != "live" and view.link in ("live", "stale") and not self._expired(view, now):
            view.lost = (link, reason)
            link, reason = "stale", self._stale_reason(view, now)
        else:
            view.lost = None
        self._set(view, link, reason, now)

    def _set(self, view: NodeView, link: LinkState, reason: str, now: float) -> None:
        if (view.link, view.link_reason) != (link, reason):
            if view.link != link:
                view.link_since = now
            view.link, view.link_reason = link, reason
            self._judge(view, now)

    def _expired(self, view: NodeView, now: float) -> bool:
        age = view.age(now)
        return age is None or age > self.rules.stale_intervals * view.interval

    @staticmethod
    def _stale_reason(view: NodeView, now: float) -> str:
        said = f"no sample for {age(view.age(now) or 0)}"
        if view.lost is None:
            return said
        return f"{said}; {view.lost[1]}; reconnecting"

    def apply(self, node: str, frame: Inventory | Sample | Event, now: float) -> None:
        """One frame from a node's agent."""
        view = self.nodes[node]
        if isinstance(frame, Inventory):
            # A GPU coming back makes the agent send its inventory again mid-session: the
            # other GPUs' sparklines stay, and so does its own unless it is another GPU now.
            if view.inventory is not None:
                view.history.keep_gpus(same_gpus(view.inventory, frame))
            view.inventory = frame
            view.after_inventory = True
        elif isinstance(frame, Sample):
            if view.after_inventory:
                view.after_inventory = False
                if frame.replay:
                    # A session's inventory is followed by the agent's whole buffer: from its
                    # first sample on it replaces what the console holds, rather than the
                    # console holding it twice; what is older stays, so an agent restarted
                    # (upgraded) with an empty buffer does not wipe the sparklines.
                    view.history.drop_since(frame.ts)
            view.history.append(frame)
            if not frame.replay:
                view.sample, view.sample_at, view.lost = frame, now, None
                if view.link != "live":
                    view.link, view.link_reason, view.link_since = "live", "", now
            elif view.sample is None or frame.ts >= view.sample.ts:
                # History fills the table too until live samples come. By the agent's clock,
                # not seq: a restarted agent numbers from 1 again.
                view.sample = frame
        else:
            if frame.replay and _known(view.events, frame):
                return  # retold on a reconnect to the same agent: heard it already
            view.events.append(frame)
            if frame.kind == "xid" and frame.gpu is not None and frame.xid is not None:
                seen = now
                if frame.replay and view.sample is not None:
                    # Dated by the agent's own clock against its newest sample (sent just
                    # before), so an old XID retold to a new console expires on time.
                    seen = now - max(0.0, view.sample.ts - frame.ts)
                view.xids_seen[frame.gpu] = (seen, frame.xid)
            if (
                frame.kind == "state"
                and frame.state is not None
                and view.inventory is not None
                and not frame.replay  # retold: the inventory before it is newer
            ):
                view.inventory = _with_state(view.inventory, frame.state)
        self._judge(view, now)

    def amend(self, node: str, frame: Sample, now: float) -> None:
        """The newest sample again, with readings the source read later (Prometheus' slow
        set): it replaces the one shown without counting as a new one; any other is ignored."""
        view = self.nodes[node]
        if view.sample is None or view.sample.ts != frame.ts or view.sample == frame:
            return
        view.sample = frame
        self._judge(view, now)

    def set_agent(self, node: str, software: str, proto: str, interval: float | None) -> None:
        """What the agent said in its hello."""
        view = self.nodes[node]
        view.agent = f"{software}, protocol {proto}"
        major, _, minor = proto.partition(".")
        view.protocol = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
        view.lost = None  # the stream is back: what broke it is no longer the reason
        if interval:
            view.interval = interval

    # -- time passing -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Age the nodes: a live node whose samples stopped goes stale (showing its age), and a
        stale node whose stream broke is down once the stale window has passed."""
        window = self.rules.xid_window_s
        for view in self.nodes.values():
            old = [gpu for gpu, (at, _) in view.xids_seen.items() if now - at > window]
            if old:  # expire XID alerts on a node that sends nothing to re-judge it by
                for gpu in old:
                    del view.xids_seen[gpu]
                self._judge(view, now)
            if view.link not in ("live", "stale") or view.sample_at is None:
                continue
            expired = self._expired(view, now)
            if expired and view.lost is not None:
                (link, reason), view.lost = view.lost, None
                self._set(view, link, reason, now)
            elif expired or view.link == "stale":
                self._set(view, "stale", self._stale_reason(view, now), now)

    # -- alerts -------------------------------------------------------------------------------

    def _judge(self, view: NodeView, now: float) -> None:
        alerts = list(self._alerts(view, now))
        current = set()
        for alert in alerts:
            key = (alert.kind, alert.gpu)
            current.add(key)
            record = view.open_alerts.get(key)
            if record is None:
                record = view.open_alerts[key] = AlertRecord(alert, now)
                self.alert_log.append(record)
                self.alert_changes += 1
            else:
                record.alert = alert
        for key in [k for k in view.open_alerts if k not in current]:
            view.open_alerts.pop(key).ended = now
            self.alert_changes += 1
        view.alerts = alerts
        self._dirty.add(view.name)

    def _alerts(self, view: NodeView, now: float) -> Iterable[Alert]:
        name = view.name
        if view.link == "not_tried":  # nothing is known of it: not down, nobody to page
            yield Alert(name, "not_tried", "warning", view.link_reason)
        elif view.link == "fault":  # ours, not the node's: not "unreachable"
            yield Alert(name, "fault", "critical", view.link_reason)
        elif view.link in DOWN_STATES:
            yield Alert(name, "unreachable", "critical", f"{view.link}: {view.link_reason}")
        elif view.link == "stale":
            yield Alert(name, "stale", "warning", view.link_reason)
        for gpu, (at, xid) in sorted(view.xids_seen.items()):
            if now - at <= self.rules.xid_window_s:
                yield Alert(name, "xid", "critical", xid_message(gpu, xid), gpu)
        if view.sample is None:
            return
        infos = {g.index: g for g in view.inventory.gpus} if view.inventory else {}
        for r in view.sample.gpus:
            i = r.index
            if r.lost:
                yield Alert(name, "gpu_lost", "critical", gpu_lost_message(i), i)
                continue
            info = infos.get(i)
            limit = info.temp_slowdown_c if info else None
            hot = self._temperature(name, i, r.temp_c, limit)
            if hot is not None:
                yield hot
            slowed = slowdown_reasons(r)
            if slowed:
                yield Alert(name, "slowdown", "warning", slowdown_message(i, slowed), i)
            if r.ecc_uncorrected_volatile:
                msg = ecc_message(i, r.ecc_uncorrected_volatile)
                yield Alert(name, "ecc", "critical", msg, i)
            if r.remap_pending:
                yield Alert(name, "remap_pending", "warning", remap_pending_message(i), i)

    def _temperature(
        self, node: str, gpu: int, temp: int | None, limit: int | None
    ) -> Alert | None:
        severity = self.rules.temperature(temp, limit)
        if severity is None:
            return None
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


def same_gpus(old: Inventory, new: Inventory) -> dict[int, int]:
    """Each GPU of ``old`` that is in ``new`` too, old index to new index. A GPU is the same
    when its UUID is (wherever it now sits), or, where either side has no UUID, when its
    index is; a GPU gone, or another card at its index, is not."""
    by_uuid = {g.uuid: g.index for g in new.gpus if g.uuid is not None}
    by_index = {g.index: g for g in new.gpus}
    same: dict[int, int] = {}
    for g in old.gpus:
        if g.uuid is not None and g.uuid in by_uuid:
            same[g.index] = by_uuid[g.uuid]
            continue
        there = by_index.get(g.index)
        if there is not None and (g.uuid is None or there.uuid is None):
            same[g.index] = g.index
    return same


def _known(events: Iterable[Event], event: Event) -> bool:
    return any((e.seq, e.ts, e.kind) == (event.seq, event.ts, event.kind) for e in events)


def _with_state(inv: Inventory, state: NodeState) -> Inventory:
    """The inventory frame with a new ops state: a state event changes that field alone."""
    return msgspec.structs.replace(inv, state=state)
