"""What the fleet table shows for each node, and the fleet's totals, from the model alone.

Headless, so the screen, ``gpufleet status`` (table and JSON), the tests and the benchmark
share one definition of every number: a row is a node's summary (``NodeSummary``), computed
from a ``NodeView`` and the console's clock, and knows how to sort. Values not
known are ``None`` and are shown as ``n/a`` (never 0). A node that is not live shows no GPU
numbers as current: stale ones carry their age, down ones show nothing but the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from agents.protocol import GpuInfo, GpuReading, NodeState, Sample, computing
from console.model.fleet import DOWN_STATES, Alert, FleetState, LinkState, NodeView, PoolSource
from console.model.selector import Selector, SelectorError, check_pools, known_pools, parse_selector
from console.present.words import age, na, plural

#: A column's key (``COLUMNS`` declares them).
Column = str


#: Which readings a node's summary carries: ``current`` (a live node's), ``old`` (a stale
#: node's last, with their age) or ``none`` (a node down, connecting or never reached: its last
#: readings, if any, are not its present).
Readings = Literal["current", "old", "none"]


def when(ts: float | None, seconds: bool = False) -> str:
    """An agent timestamp as the operator reads it: UTC, to the minute (or second)."""
    if ts is None:
        return "?"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    )


@dataclass(frozen=True, slots=True)
class GpuSummary:
    """One GPU's readings as every view reports them: ``None`` where the driver said nothing
    (a lost GPU's readings are all ``None``), power in watts."""

    index: int
    uuid: str | None
    name: str | None
    util: int | None
    mem_used: int | None
    mem_total: int | None
    temp: int | None
    power_w: float | None
    lost: bool


@dataclass(frozen=True, slots=True)
class HostSummary:
    cpu: float | None
    load: tuple[float, ...] | None
    mem_used: int | None
    mem_total: int | None


class Carried(NamedTuple):
    """What a node's summary carries beside what its row shows, for the views that list it
    (``status --json``, the table's ALERTS). One tuple, not eight more fields: a frozen
    dataclass sets each field apart, and summaries are made for every changed row twice a
    second."""

    age_s: float | None  # since the latest sample came
    link_reason: str
    pool_source: PoolSource
    inventory_pool: str
    ops: NodeState | None  # the agent's word on the node's state, if any
    alerts: tuple[Alert, ...]
    sample: Sample | None  # None when the summary's readings are none
    gpu_infos: tuple[GpuInfo, ...]


NOTHING_CARRIED: Final = Carried(None, "", "inventory", "", None, (), None, ())


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What is known of a node now, decided once for the screen's row and for ``gpufleet
    status`` (its table and its ``--json``): which readings it has (a node down none, a stale
    one old ones with their age), what is not known (``None``, shown as ``n/a``, never 0), and
    how its GPUs add up. The views only format it, so they cannot disagree.

    The fields compared (and hashed) are what a row shows, so the screen tells a changed row
    from an unchanged one by equality; ``carried`` (the sample behind the numbers, the alerts'
    wording, the agent's ops state) rides along, out of equality, for the views that list
    them."""

    name: str
    pool: str
    state: str  # schedulable, draining, drained, or "unknown" before the agent says
    state_detail: str  # "reason (who@when)" when not schedulable
    link: LinkState
    link_text: str  # "live", "stale 12s", "agent_down: why"
    gpus: int | None  # from the node's inventory (or its sample); None: never heard of
    util: float | None  # mean over GPUs that answered
    util_max: int | None
    mem_used: int | None
    mem_total: int | None
    temp: int | None  # hottest GPU
    power_w: float | None
    alerts: int
    critical: bool
    live_data: bool  # numbers are from a live stream (not stale, not down)
    #: Live GPUs computing (``agents.protocol.computing``): busy counts load, not whether work
    #: holds the GPU (a drain's ``at_work``), so the totals say how much of the fleet computes.
    gpus_busy: int = 0
    gpus_idle: int = 0  # live GPUs with a utilization reading, not computing
    gpus_lost: int = 0  # live node's GPUs the driver lost
    #: The rest of ``gpus``: on a node not live, or without a utilization reading, so that
    #: busy + idle + lost + unknown is always ``gpus``.
    gpus_unknown: int = 0
    readings: Readings = "none"
    carried: Carried = field(default=NOTHING_CARRIED, compare=False)

    def key(self, column: Column) -> tuple[Any, ...]:
        """Sort key by a sortable column (``COLUMNS``): unknown values sort last whichever
        way, names break ties."""
        sort = COLUMN[column].sort
        if sort is None:
            raise KeyError(f"{column!r} is not a column to sort by")
        value = sort(self)
        return (value is None, value if value is not None else 0, self.name)

    def gpu_readings(self) -> list[GpuSummary]:
        """Each GPU's readings (none when ``readings`` is ``none``), named from the
        inventory where it lists the GPU."""
        sample = self.carried.sample
        if sample is None:
            return []
        infos = {g.index: g for g in self.carried.gpu_infos}
        return [_gpu(r, infos.get(r.index)) for r in sample.gpus]

    def host_readings(self) -> HostSummary | None:
        """The host's readings (``None`` when ``readings`` is ``none``)."""
        sample = self.carried.sample
        if sample is None:
            return None
        h = sample.host
        load = tuple(h.load) if h.load else None
        return HostSummary(h.cpu_percent, load, h.mem_used, h.mem_total)


def _gpu(r: GpuReading, info: GpuInfo | None) -> GpuSummary:
    return GpuSummary(
        index=r.index,
        uuid=info.uuid if info else None,
        name=info.name if info else None,
        util=r.util_gpu,
        mem_used=r.mem_used,
        mem_total=r.mem_total,
        temp=r.temp_c,
        power_w=None if r.power_mw is None else r.power_mw / 1000,
        lost=r.lost,
    )


def summarize(view: NodeView, now: float) -> NodeSummary:
    """The node's summary at ``now`` (the console's clock)."""
    state = view.state
    detail = ""
    if state is not None and state.state != "schedulable":
        who = f"{state.who or '?'}@{when(state.since)}"
        detail = f"{state.reason or 'no reason'} ({who})"
    link_text: str = view.link
    if view.link == "stale":
        link_text = f"stale {age(view.age(now) or 0)}"
    elif view.link in DOWN_STATES:
        link_text = f"{view.link}: {view.link_reason}"
    # Numbers only from a live stream, or a stale one (said so, with its age): a node down or
    # still connecting may hold a replayed or last sample, which is not its present.
    sample = view.sample if view.link in ("live", "stale") else None
    readings: Readings = "none" if sample is None else "current" if view.link == "live" else "old"
    n_util = util_sum = busy = lost = 0
    util_max = temp = power = used = total = None
    for r in sample.gpus if sample else ():  # one pass: this runs for every row, twice a second
        if r.lost:
            lost += 1
            continue
        u = r.util_gpu
        if u is not None:
            n_util += 1
            util_sum += u
            busy += computing(r)
            util_max = u if util_max is None or u > util_max else util_max
        if r.temp_c is not None:
            temp = r.temp_c if temp is None or r.temp_c > temp else temp
        if r.power_mw is not None:
            power = r.power_mw + (power or 0)
        if r.mem_used is not None:
            used = r.mem_used + (used or 0)
        if r.mem_total is not None:
            total = r.mem_total + (total or 0)
    inventory = view.inventory
    gpus = len(inventory.gpus) if inventory else len(sample.gpus) if sample else None
    live = view.link == "live"
    counted = (busy, n_util - busy, lost) if live else (0, 0, 0)  # the totals: live GPUs only
    alerts = tuple(view.alerts)
    return NodeSummary(
        view.name,
        view.pool,
        state.state if state else "unknown",
        detail,
        view.link,
        link_text,
        gpus,
        util_sum / n_util if n_util else None,
        util_max,
        used,
        total,
        temp,
        None if power is None else power / 1000,
        len(alerts),
        any(a.severity == "critical" for a in alerts),
        live,
        *counted,
        max(0, (gpus or 0) - sum(counted)),
        readings,
        Carried(
            view.age(now),
            view.link_reason,
            view.pool_source,
            view.entry.pool,
            state,
            alerts,
            sample,
            tuple(inventory.gpus) if inventory else (),
        ),
    )


# -- the columns --------------------------------------------------------------------------------

#: How serious a cell is, by meaning; the screen takes each tone's colour from its theme.
Tone = Literal["bad", "warn", "good", "dim", "plain"]
GIB: Final = 1 << 30


def row_tone(s: NodeSummary) -> Tone:
    """The tone of a node's name and link: down or critical is bad; stale, alerting or out of
    service is a warning; connecting is dim."""
    if s.critical or s.link in DOWN_STATES:
        return "bad"
    if s.link == "stale" or s.alerts or s.state in ("draining", "drained"):
        return "warn"
    if s.link == "connecting":
        return "dim"
    return "plain"


def _plain(s: NodeSummary) -> Tone:
    return "plain"


def _state_tone(s: NodeSummary) -> Tone:
    return "warn" if s.state in ("draining", "drained") else "plain"


def _alerts_tone(s: NodeSummary) -> Tone:
    return ("bad" if s.critical else "warn") if s.alerts else "plain"


def _mem(s: NodeSummary) -> str:
    if s.mem_used is None or not s.mem_total:
        return "n/a"
    return f"{s.mem_used / GIB:.0f}/{s.mem_total / GIB:.0f}"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column of a node's row, declared once for the screen's fleet table, its sort and
    ``gpufleet status``'s table: adding a column is adding one of these to ``COLUMNS``.

    ``width`` is the values' domain ("draining", "100%", "640/640"), 0 for as wide as the
    fleet's longest value; ``narrowest`` how far it may be cut; ``priority`` which goes
    first on a narrow terminal (the highest first)."""

    key: str
    header: str
    width: int
    narrowest: int
    priority: int
    text: Callable[[NodeSummary], str]
    #: The value it sorts by (``None``: not known, sorted last either way); no ``sort``: the
    #: column is not one to sort by.
    sort: Callable[[NodeSummary], object] | None
    tone: Callable[[NodeSummary], Tone] = _plain
    #: A reading: left blank on the screen for a node with no readings, current or old (its
    #: "n/a" would read as a reading not reported).
    reading: bool = False
    grow: bool = False  # takes the room left on a wide terminal


#: The fleet table's columns, left to right. The node's name, the state and the alerts are the
#: last to go, then the reason, the link, the numbers an operator scans for heat and power;
#: the pool, the GPU count, memory and the busiest GPU drop first on a narrow terminal. A
#: node's name and a pool are as wide as the fleet's longest; a name may be cut, a pool is
#: shown whole or not at all.
# fmt: off
COLUMNS: Final[tuple[ColumnSpec, ...]] = (
    ColumnSpec("name", "NODE", 0, 12, 1, lambda s: s.name, lambda s: s.name, row_tone),
    ColumnSpec("pool", "POOL", 0, 0, 9, lambda s: s.pool, lambda s: s.pool),
    ColumnSpec("state", "STATE", 11, 11, 2, lambda s: s.state, lambda s: s.state, _state_tone),
    ColumnSpec("link", "LINK", 32, 12, 5, lambda s: s.link_text, lambda s: s.link, row_tone),
    ColumnSpec("gpus", "GPUS", 4, 4, 10, lambda s: na(s.gpus), lambda s: s.gpus),
    ColumnSpec("util", "UTIL", 4, 4, 6, lambda s: na(s.util, "{:.0f}%"), lambda s: s.util,
               reading=True),
    ColumnSpec("util_max", "MAX", 4, 4, 12, lambda s: na(s.util_max, "{}%"),
               lambda s: s.util_max, reading=True),
    ColumnSpec("mem", "MEM GiB", 9, 9, 11, _mem, lambda s: s.mem_used, reading=True),
    ColumnSpec("temp", "HOT", 4, 4, 7, lambda s: na(s.temp, "{}C"), lambda s: s.temp,
               reading=True),
    ColumnSpec("power", "POWER W", 7, 7, 8, lambda s: na(s.power_w, "{:.0f}"),
               lambda s: s.power_w, reading=True),
    ColumnSpec("alerts", "ALERTS", 6, 6, 3, lambda s: str(s.alerts) if s.alerts else "",
               lambda s: s.alerts, _alerts_tone),
    ColumnSpec("reason", "REASON", 48, 12, 4, lambda s: s.state_detail, None, grow=True),
)
# fmt: on
COLUMN: Final[dict[str, ColumnSpec]] = {c.key: c for c in COLUMNS}
#: The columns a table may be sorted by (``s`` steps through them in this order).
SORTABLE: Final[tuple[str, ...]] = tuple(c.key for c in COLUMNS if c.sort is not None)


@dataclass(frozen=True, slots=True)
class Totals:
    nodes: int
    live: int
    stale: int
    down: int  # unreachable, auth failed, host key, agent down, protocol
    connecting: int
    draining: int  # asked to drain, work still running
    drained: int  # out of service, nothing running
    gpus: int
    gpus_busy: int
    gpus_idle: int
    alerts: int
    gpus_lost: int = 0
    gpus_unknown: int = 0  # on nodes not live, or not reading utilization

    def line(self) -> str:
        return " ".join(self.parts())

    def parts(self) -> list[str]:
        """The nodes, the GPUs and the alerts, each said whole (the screen wraps the line between
        them, never within one). Every GPU is counted once, so the parts add up to the whole;
        counts of none are left out (all but live and the GPUs' busy and idle): the line fits
        80 columns when all is well, and what is not well stands out."""
        counts = (
            (self.stale, "stale"),
            (self.down, "down"),
            (self.connecting, "connecting"),
            (self.draining, "draining"),
            (self.drained, "drained"),
        )
        nodes = ", ".join([f"{self.live} live", *(f"{n} {what}" for n, what in counts if n)])
        gpus = [f"{self.gpus_busy} busy", f"{self.gpus_idle} idle"]
        if self.gpus_lost:
            gpus.append(f"{self.gpus_lost} lost")
        if self.gpus_unknown:
            gpus.append(f"{self.gpus_unknown} n/a")
        return [
            f"{plural(self.nodes, 'node')}: {nodes};",
            f"{plural(self.gpus, 'GPU')}: {', '.join(gpus)};",
            plural(self.alerts, "alert"),
        ]


def fleet_totals(rows: Iterable[NodeSummary]) -> Totals:
    """The header's counts, from the rows (every node's, not only those a filter shows)."""
    rows = list(rows)
    return Totals(
        nodes=len(rows),
        live=sum(r.link == "live" for r in rows),
        stale=sum(r.link == "stale" for r in rows),
        down=sum(r.link in DOWN_STATES for r in rows),
        connecting=sum(r.link == "connecting" for r in rows),
        draining=sum(r.state == "draining" for r in rows),
        drained=sum(r.state == "drained" for r in rows),
        gpus=sum(r.gpus or 0 for r in rows),
        gpus_busy=sum(r.gpus_busy for r in rows),
        gpus_idle=sum(r.gpus_idle for r in rows),
        alerts=sum(r.alerts for r in rows),
        gpus_lost=sum(r.gpus_lost for r in rows),
        gpus_unknown=sum(r.gpus_unknown for r in rows),
    )


@dataclass(frozen=True)
class RowFilter:
    """The ``/`` filter: selector terms (``pool=``, ``state=``, ``link=``, ``alert``,
    ``gpu[01-04]``, ``gpu1*``) narrow as in ``gpufleet status``; any other word must appear in
    the node's name, pool or state reason. Unlike a command's selector, a hostlist naming nodes
    not in the fleet simply matches nothing: this is a view, not an action."""

    selector: Selector
    words: tuple[str, ...]

    def matches(self, view: NodeView) -> bool:
        if not self.selector.matches(view):
            return False
        if not self.words:
            return True
        state = view.state
        text = f"{view.name} {view.pool} {state.reason if state else ''}".lower()
        return all(w in text for w in self.words)


def parse_filter(text: str, views: Iterable[NodeView] | None = None) -> RowFilter:
    """Raises SelectorError for a malformed term (an unknown ``key=``, a bad hostlist), an
    unknown state or link, or (given the fleet's ``views``) a pool no node is in."""
    terms, words = [], []
    for term in text.split():
        if "=" in term or term == "alert" or "[" in term or "*" in term or "?" in term:
            terms.append(term)
        else:
            words.append(term.lower())
    selector = parse_selector(terms)
    if views is not None:
        check_pools(selector, known_pools(views))
    return RowFilter(selector, tuple(words))


def filter_note(shown: int, text: str) -> str:
    """What the filter line says: how many rows it shows, or that it matches no node (an
    empty table alone reads as a fleet gone)."""
    return f"showing {shown} ({text})" if shown else f"no node matches ({text})"


def sort_rows(rows: list[NodeSummary], column: Column, reverse: bool) -> list[NodeSummary]:
    """By ``column``, names breaking ties; unknown values last either way."""
    rows = sorted(rows, key=lambda r: r.key(column), reverse=reverse)
    if reverse:
        rows.sort(key=lambda r: r.key(column)[0])
    return rows


class RowCache:
    """Rows kept between refreshes: only the nodes that changed are computed again (a fleet
    of 1,000 changes about half its rows between two refreshes at 2 Hz, not all of them)."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet
        self._rows: dict[str, NodeSummary] = {}

    def update(self, now: float, changed: Iterable[str] | None = None) -> None:
        """Recompute the rows of ``changed`` (every row when None)."""
        for name in self.fleet.nodes if changed is None else changed:
            self._rows[name] = summarize(self.fleet.nodes[name], now)

    def all(self) -> list[NodeSummary]:
        return list(self._rows.values())

    def visible(
        self, row_filter: RowFilter | None, column: Column, reverse: bool
    ) -> list[NodeSummary]:
        views: Iterable[NodeView] = self.fleet.nodes.values()
        if row_filter is not None:
            views = [v for v in views if row_filter.matches(v)]
        return sort_rows([self._rows[v.name] for v in views], column, reverse)


__all__ = [
    "COLUMN",
    "COLUMNS",
    "SORTABLE",
    "Carried",
    "Column",
    "ColumnSpec",
    "GpuSummary",
    "HostSummary",
    "NodeSummary",
    "Readings",
    "RowCache",
    "RowFilter",
    "SelectorError",
    "Tone",
    "Totals",
    "filter_note",
    "fleet_totals",
    "parse_filter",
    "row_tone",
    "summarize",
    "when",
]
