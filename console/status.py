"""``gpufleet status --json``: the fleet as a document scripts can rely on.

This shape is a public contract (issue 3): an array of nodes, each with at least ``name``,
``pool``, ``link``, ``link_reason``, ``state``, ``reason``, ``alerts``, ``gpus`` and ``host``.
Fields are added, never renamed or removed; a value not known is ``null``, never 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from console.fleet import FleetState, NodeView
from console.fleetlinks import CONNECTING_AT_ONCE, FleetLinks
from console.inventory import NodeEntry
from console.link import LinkOptions, one_shot

EXIT_ALL: Final = 0
EXIT_SOME_MISSING: Final = 1
EXIT_USAGE: Final = 2
EXIT_NONE: Final = 3


def exit_code(views: Iterable[NodeView]) -> int:
    """0 every node answered, 1 some did not, 3 none did (an empty selection is 0)."""
    got = [v.answered for v in views]
    if all(got):
        return EXIT_ALL
    return EXIT_SOME_MISSING if any(got) else EXIT_NONE


def node_doc(view: NodeView, now: float) -> dict[str, Any]:
    state = view.state
    infos = {g.index: g for g in view.inventory.gpus} if view.inventory else {}
    sample = view.sample
    gpus = []
    for r in sample.gpus if sample else []:
        info = infos.get(r.index)
        gpus.append(
            {
                "index": r.index,
                "uuid": info.uuid if info else None,
                "name": info.name if info else None,
                "util": r.util_gpu,
                "mem_used": r.mem_used,
                "mem_total": r.mem_total,
                "temp": r.temp_c,
                "power": None if r.power_mw is None else r.power_mw / 1000,  # watts
                "lost": r.lost,
            }
        )
    host = None
    if sample is not None:
        h = sample.host
        host = {
            "cpu": h.cpu_percent,
            "load": list(h.load) if h.load else None,
            "memory": {"used": h.mem_used, "total": h.mem_total},
        }
    return {
        "name": view.name,
        "pool": view.pool,  # the agent's once it has one, else the inventory's
        "pool_source": view.pool_source,
        "inventory_pool": view.entry.pool,
        "link": view.link,
        "link_reason": view.link_reason or None,
        "age_s": view.age(now),
        "state": state.state if state else None,
        "reason": state.reason if state else None,
        "who": state.who if state else None,
        "since": state.since if state else None,
        "alerts": [
            {"kind": a.kind, "severity": a.severity, "gpu": a.gpu, "message": a.message}
            for a in view.alerts
        ],
        "gpus": gpus,
        "host": host,
    }


def status_doc(views: Iterable[NodeView], now: float) -> list[dict[str, Any]]:
    return [node_doc(v, now) for v in views]


async def snapshot(
    entries: list[NodeEntry],
    options: LinkOptions,
    *,
    wait: float,
    concurrency: int = CONNECTING_AT_ONCE,
) -> FleetState:
    """Connect to every node, until each has answered or failed (or ``wait`` runs out).

    A snapshot takes a node's first failure as its answer: retrying is for the live screen."""
    links = FleetLinks(entries, one_shot(options), concurrency=concurrency)
    async with links:
        for name in await links.settle(wait):
            links.fleet.set_link(name, "unreachable", f"no answer in {wait:g} s", time.monotonic())
    return links.fleet


def table(views: Iterable[NodeView], now: float) -> str:
    """The human view of a snapshot: one line per node, n/a where nothing is known."""
    rows = [
        f"{'NODE':<20}{'POOL':<10}{'LINK':<18}{'STATE':<12}{'GPUS':>5}{'UTIL':>6}"
        f"{'HOTTEST':>8}{'POWER W':>9}  ALERTS"
    ]
    for v in views:
        doc = node_doc(v, now)
        gpus = [g for g in doc["gpus"] if not g["lost"]]
        utils = [g["util"] for g in gpus if g["util"] is not None]
        temps = [g["temp"] for g in gpus if g["temp"] is not None]
        power = sum(g["power"] for g in gpus if g["power"] is not None)
        link = v.link if v.link == "live" else f"{v.link}"
        rows.append(
            f"{v.name:<20.19}{v.pool:<10.9}{link:<18.17}{doc['state'] or 'n/a':<12}"
            f"{len(doc['gpus']):>5}"
            f"{(f'{sum(utils) / len(utils):.0f}%' if utils else 'n/a'):>6}"
            f"{(f'{max(temps)}C' if temps else 'n/a'):>8}"
            f"{(f'{power:.0f}' if gpus else 'n/a'):>9}  "
            + ("; ".join(a["message"] for a in doc["alerts"]) or "-")
        )
    return "\n".join(rows)


def check_result(view: NodeView) -> dict[str, Any]:
    """``inventory check``: in order (host key, login, agent, protocol), or what is wrong with
    the remedy the link's reason already carries."""
    if view.answered:
        inv = view.inventory
        gpus = f"{len(inv.gpus)} GPU(s) via {inv.backend}" if inv else "no inventory"
        return {"name": view.name, "ok": True, "problem": None, "detail": f"{view.agent}; {gpus}"}
    return {"name": view.name, "ok": False, "problem": view.link, "detail": view.link_reason}
