"""What the fleet table shows for each node, and the fleet's totals, from the model alone.

Headless, so the screen, its tests and its benchmark share one definition of every number: a
row is computed from a ``NodeView`` and the console's clock, and knows how to sort. Values not
known are ``None`` and are shown as ``n/a`` (never 0). A node that is not live shows no GPU
numbers as current: stale ones carry their age, down ones show nothing but the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from console.fleet import DOWN_STATES, FleetState, NodeView
from console.selector import Selector, SelectorError, parse_selector

Column = Literal[
    "name", "pool", "state", "link", "gpus", "util", "util_max", "mem", "temp", "power", "alerts"
]
COLUMNS: Final[tuple[Column, ...]] = (
    "name", "pool", "state", "link", "gpus", "util", "util_max", "mem", "temp", "power", "alerts"
)  # fmt: skip
BUSY_UTIL: Final = 10  # a GPU above this utilization % counts as busy in the totals


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    pool: str
    state: str  # schedulable, draining, drained, or "unknown" before the agent says
    state_detail: str  # "reason (who@when)" when not schedulable
    link: str
    link_text: str  # "live", "stale 12s", "agent_down: why"
    gpus: int
    util: float | None  # mean over GPUs that answered
    util_max: int | None
    mem_used: int | None
    mem_total: int | None
    temp: int | None  # hottest GPU
    power_w: float | None
    alerts: int
    critical: bool
    live_data: bool  # numbers are from a live stream (not stale, not down)

    def key(self, column: Column) -> tuple[Any, ...]:
        """Sort key: unknown values sort last whichever way, names break ties."""
        value: Any = {
            "name": self.name,
            "pool": self.pool,
            "state": self.state,
            "link": self.link,
            "gpus": self.gpus,
            "util": self.util,
            "util_max": self.util_max,
            "mem": self.mem_used,
            "temp": self.temp,
            "power": self.power_w,
            "alerts": self.alerts,
        }[column]
        return (value is None, value if value is not None else 0, self.name)


def when(ts: float | None, seconds: bool = False) -> str:
    """An agent timestamp as the operator reads it: UTC, to the minute (or second)."""
    if ts is None:
        return "?"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    )


def node_row(view: NodeView, now: float) -> NodeRow:
    state = view.state
    detail = ""
    if state is not None and state.state != "schedulable":
        who = f"{state.who or '?'}@{when(state.since)}"
        detail = f"{state.reason or 'no reason'} ({who})"
    link_text: str = view.link
    if view.link == "stale":
        link_text = f"stale {view.age(now) or 0:.0f}s"
    elif view.link in DOWN_STATES:
        link_text = f"{view.link}: {view.link_reason}"
    sample = None if view.link in DOWN_STATES else view.sample
    readings = [r for r in sample.gpus if not r.lost] if sample else []
    utils = [r.util_gpu for r in readings if r.util_gpu is not None]
    temps = [r.temp_c for r in readings if r.temp_c is not None]
    powers = [r.power_mw for r in readings if r.power_mw is not None]
    used = [r.mem_used for r in readings if r.mem_used is not None]
    total = [r.mem_total for r in readings if r.mem_total is not None]
    gpus = len(view.inventory.gpus) if view.inventory else len(sample.gpus) if sample else 0
    return NodeRow(
        name=view.name,
        pool=view.entry.pool,
        state=state.state if state else "unknown",
        state_detail=detail,
        link=view.link,
        link_text=link_text,
        gpus=gpus,
        util=sum(utils) / len(utils) if utils else None,
        util_max=max(utils) if utils else None,
        mem_used=sum(used) if used else None,
        mem_total=sum(total) if total else None,
        temp=max(temps) if temps else None,
        power_w=sum(powers) / 1000 if powers else None,
        alerts=len(view.alerts),
        critical=any(a.severity == "critical" for a in view.alerts),
        live_data=view.link == "live",
    )


@dataclass(frozen=True, slots=True)
class Totals:
    nodes: int
    live: int
    stale: int
    down: int  # unreachable, auth failed, host key, agent down, protocol
    connecting: int
    drained: int  # draining or drained
    gpus: int
    gpus_busy: int
    gpus_idle: int
    alerts: int

    def line(self) -> str:
        return (
            f"nodes {self.nodes}: {self.live} live, {self.stale} stale, {self.down} down, "
            f"{self.connecting} connecting, {self.drained} drained  |  GPUs {self.gpus}: "
            f"{self.gpus_busy} busy, {self.gpus_idle} idle  |  alerts {self.alerts}"
        )


def fleet_totals(fleet: FleetState) -> Totals:
    views = list(fleet.nodes.values())
    busy = idle = gpus = 0
    for v in views:
        gpus += len(v.inventory.gpus) if v.inventory else 0
        if v.link == "live" and v.sample is not None:
            for r in v.sample.gpus:
                if r.lost or r.util_gpu is None:
                    continue
                if r.util_gpu > BUSY_UTIL:
                    busy += 1
                else:
                    idle += 1
    return Totals(
        nodes=len(views),
        live=sum(v.link == "live" for v in views),
        stale=sum(v.link == "stale" for v in views),
        down=sum(v.link in DOWN_STATES for v in views),
        connecting=sum(v.link == "connecting" for v in views),
        drained=sum(v.state is not None and v.state.state != "schedulable" for v in views),
        gpus=gpus,
        gpus_busy=busy,
        gpus_idle=idle,
        alerts=sum(len(v.alerts) for v in views),
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
        text = f"{view.name} {view.entry.pool} {state.reason if state else ''}".lower()
        return all(w in text for w in self.words)


def parse_filter(text: str) -> RowFilter:
    """Raises SelectorError for a malformed term (an unknown ``key=``, a bad hostlist)."""
    terms, words = [], []
    for term in text.split():
        if "=" in term or term == "alert" or "[" in term or "*" in term or "?" in term:
            terms.append(term)
        else:
            words.append(term.lower())
    return RowFilter(parse_selector(terms), tuple(words))


def visible_rows(
    fleet: FleetState, now: float, row_filter: RowFilter | None, column: Column, reverse: bool
) -> list[NodeRow]:
    views: Iterable[NodeView] = fleet.nodes.values()
    if row_filter is not None:
        views = [v for v in views if row_filter.matches(v)]
    rows = [node_row(v, now) for v in views]
    rows.sort(key=lambda r: r.key(column), reverse=reverse)
    if reverse:  # unknown values last either way
        rows.sort(key=lambda r: r.key(column)[0])
    return rows


__all__ = [
    "COLUMNS",
    "Column",
    "NodeRow",
    "RowFilter",
    "SelectorError",
    "Totals",
    "fleet_totals",
    "node_row",
    "parse_filter",
    "visible_rows",
]
