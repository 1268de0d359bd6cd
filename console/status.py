"""``gpufleet status --json``: the fleet as a document scripts can rely on.

This shape is a public contract (issue 3): an array of nodes, each with at least ``name``,
``pool``, ``link``, ``link_reason``, ``state``, ``reason``, ``alerts``, ``gpus`` and ``host``.
Fields are added, never renamed or removed; a value not known is ``null``, never 0. ``link``
is a link state; ``not_tried`` is a node the snapshot's wait ended before it got to.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from console.fleet import FleetState, LinkState, NodeView
from console.fleetlinks import FleetLinks
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
        "pool": view.entry.pool,
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
    concurrency: int | None = None,
) -> FleetState:
    """Connect to every node, until each has answered or failed (or ``wait`` runs out).

    A snapshot takes a node's first failure as its answer: retrying is for the live screen.
    A node whose handshake never started (the fan-out was busy with others for the whole
    wait) is ``not_tried``, never ``unreachable``: nothing is known of it."""
    links = FleetLinks(entries, one_shot(options), concurrency=concurrency)
    async with links:
        links.give_up(await links.settle(wait), wait, time.monotonic())
    return links.fleet


def not_tried_note(views: Iterable[NodeView]) -> str | None:
    """One line for stderr when a snapshot left nodes untried: how many, and what to widen."""
    return next((v.link_reason for v in views if v.link == "not_tried"), None)


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
            f"{v.name:<20.19}{v.entry.pool:<10.9}{link:<18.17}{doc['state'] or 'n/a':<12}"
            f"{len(doc['gpus']):>5}"
            f"{(f'{sum(utils) / len(utils):.0f}%' if utils else 'n/a'):>6}"
            f"{(f'{max(temps)}C' if temps else 'n/a'):>8}"
            f"{(f'{power:.0f}' if gpus else 'n/a'):>9}  "
            + ("; ".join(a["message"] for a in doc["alerts"]) or "-")
        )
    return "\n".join(rows)


#: ``inventory check``'s next step for each way a node can fail it: the reason says what
#: happened (often what to look at too); this says what to do next, for every failed check
#: (``{name}``: the node's inventory name, as ssh resolves it through ssh_config too).
NEXT_STEP: Final[dict[LinkState, str]] = {
    "connecting": "it did not answer in time: try again with a longer --connect-wait",
    "live": "it answered, then stopped: run the check again",
    "stale": "it stopped sending samples: check the agent there (systemctl status gpufleet-agent)",
    "unreachable": "try `ssh {name} true` by hand, with the same user and ssh_config",
    "auth_failed": "try `ssh {name} true` by hand: check the user, the key and ssh-agent",
    "hostkey_unknown": "ssh to it once and check the key, or use --accept-new",
    "hostkey_changed": "find out why the key changed before removing it with ssh-keygen -R",
    "agent_down": "start the agent there (systemctl start gpufleet-agent) and check the socket",
    "protocol_mismatch": "upgrade the older side, the console or gpufleet-agent",
    "no_data": "check that Prometheus scrapes the node's agent",
    "not_tried": "widen --connect-wait or --fan-out, or check fewer nodes at once",
}


def check_result(view: NodeView) -> dict[str, Any]:
    """``inventory check``: in order (host key, login, agent, protocol), or what is wrong and
    the next step (``next``, for every failed check)."""
    if view.answered:
        inv = view.inventory
        gpus = f"{len(inv.gpus)} GPU(s) via {inv.backend}" if inv else "no inventory"
        return {
            "name": view.name,
            "ok": True,
            "problem": None,
            "detail": f"{view.agent}; {gpus}",
            "next": None,
        }
    return {
        "name": view.name,
        "ok": False,
        "problem": view.link,
        "detail": view.link_reason,
        "next": NEXT_STEP[view.link].format(name=view.name),
    }
