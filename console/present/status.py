"""``gpufleet status --json``: the fleet as a document scripts can rely on.

This shape is a public contract (issue 3): an array of nodes, each with at least ``name``,
``pool``, ``link``, ``link_reason``, ``state``, ``reason``, ``alerts``, ``gpus`` and ``host``.
Fields are added, never renamed or removed; a value not known is ``null``, never 0; readings
are current (``gpus``, ``host``) or marked old (``last_seen``), never old as if current.
``link`` is a link state; ``not_tried`` is a node the snapshot's wait ended before it got to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from agents.protocol import clip
from console.model.fleet import LinkState, NodeView
from console.present.rows import COLUMN, NodeSummary, summarize
from console.present.words import aligned, plural

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


def _readings(s: NodeSummary) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The GPUs' and the host's readings the summary carries, as the contract spells them."""
    gpus = [
        {
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "util": g.util,
            "mem_used": g.mem_used,
            "mem_total": g.mem_total,
            "temp": g.temp,
            "power": g.power_w,  # watts
            "lost": g.lost,
        }
        for g in s.gpu_readings()
    ]
    h = s.host_readings()
    host = None
    if h is not None:
        load = list(h.load) if h.load else None
        host = {"cpu": h.cpu, "load": load, "memory": {"used": h.mem_used, "total": h.mem_total}}
    return gpus, host


def node_doc(view: NodeView, now: float) -> dict[str, Any]:
    """The node's summary (``summarize``, the screen's too) as the contract spells it.
    ``gpus`` and ``host`` hold current readings only: a live node's. A stale node's last
    readings are under ``last_seen``, with their age; a node down or never reached has
    none (its last readings are not its present, and a script must not take them for it)."""
    s = summarize(view, now)
    state = s.carried.ops
    gpus: list[dict[str, Any]] = []
    host = last_seen = None
    if s.readings == "current":
        gpus, host = _readings(s)
    elif s.readings == "old":
        old, old_host = _readings(s)
        last_seen = {"age_s": s.carried.age_s, "gpus": old, "host": old_host}
    return {
        "name": s.name,
        "pool": s.pool,  # the agent's once it has one, else the inventory's
        "pool_source": s.carried.pool_source,
        "inventory_pool": s.carried.inventory_pool,
        "link": s.link,
        "link_reason": s.carried.link_reason or None,
        "age_s": s.carried.age_s,
        "state": state.state if state else None,
        "reason": state.reason if state else None,
        "who": state.who if state else None,
        "since": state.since if state else None,
        "alerts": [
            {"kind": a.kind, "severity": a.severity, "gpu": a.gpu, "message": a.message}
            for a in s.carried.alerts
        ],
        "gpus": gpus,
        "host": host,
        "last_seen": last_seen,
    }


def status_doc(views: Iterable[NodeView], now: float) -> list[dict[str, Any]]:
    return [node_doc(v, now) for v in views]


#: The table's columns, left to right, as the screen declares them
#: (``console.present.rows.COLUMNS``).
TABLE_COLUMNS: Final = (
    "name", "pool", "link", "state", "gpus", "util", "temp", "power", "reason", "alerts",
)  # fmt: skip
TABLE_HEADER: Final = tuple(COLUMN[key].header for key in TABLE_COLUMNS)
#: Where the command's words differ from the screen's: a line of text has no colour and no
#: node view, so the link says its reason only when stale (the reason is under ALERTS, where
#: a down node's alert says it), an empty cell is "-", and the alerts are said whole.
OWN_TEXT: Final[dict[str, Callable[[NodeSummary], str]]] = {
    "link": lambda s: s.link_text if s.link == "stale" else s.link,
    "reason": lambda s: clip(s.state_detail) or "-",  # one line: a newline shows as \\n
    "alerts": lambda s: "; ".join(a.message for a in s.carried.alerts) or "-",
}


def not_tried_note(views: Iterable[NodeView]) -> str | None:
    """One line for stderr when a snapshot left nodes untried: how many, and what to widen
    (the reason of each, which says it after its link state: ``not_tried: 4 of 6 ...``)."""
    why = next((v.link_reason for v in views if v.link == "not_tried"), None)
    return None if why is None else f"not tried: {why}"


def table(views: Iterable[NodeView], now: float) -> str:
    """The human view of a snapshot: a row per node, from the summary the screen's rows are
    (``summarize``).
    n/a where nothing is known; numbers only from a live node, or a stale one whose LINK
    says how old they are; a node down shows none, its reason is under ALERTS. REASON: why
    a node is out of service and who took it out when (the screen's), "-" for one in it."""
    texts = [OWN_TEXT.get(key, COLUMN[key].text) for key in TABLE_COLUMNS]
    rows = [[text(s) for text in texts] for s in (summarize(v, now) for v in views)]
    return "\n".join(aligned(TABLE_HEADER, rows))


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
    "not_tried": "check fewer nodes at once, or widen what the detail names",
    "fault": "a fault of gpufleet's own: report it, with the traceback from the log it names",
}


def check_result(view: NodeView) -> dict[str, Any]:
    """``inventory check``: in order (host key, login, agent, protocol), or what is wrong and
    the next step (``next``, for every failed check)."""
    if view.answered:
        inv = view.inventory
        gpus = f"{plural(len(inv.gpus), 'GPU')} via {inv.backend}" if inv else "no inventory"
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
