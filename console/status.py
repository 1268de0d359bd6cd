"""``gpufleet status --json``: the fleet as a document scripts can rely on.

This shape is a public contract (issue 3): an array of nodes, each with at least ``name``,
``pool``, ``link``, ``link_reason``, ``state``, ``reason``, ``alerts``, ``gpus`` and ``host``.
Fields are added, never renamed or removed; a value not known is ``null``, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from console.fleet import NodeView

EXIT_ALL: Final = 0
EXIT_SOME_MISSING: Final = 1
EXIT_USAGE: Final = 2
EXIT_NONE: Final = 3


def answered(view: NodeView) -> bool:
    """The node's agent sent a live sample on this connection."""
    return view.link in ("live", "stale") and view.sample_at is not None


def exit_code(views: Iterable[NodeView]) -> int:
    """0 every node answered, 1 some did not, 3 none did (an empty selection is 0)."""
    got = [answered(v) for v in views]
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
