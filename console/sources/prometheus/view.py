"""What the console asks Prometheus, and how the answers become the frames the fleet model
already knows (``Inventory``, ``Sample``, XID ``Event``), one node at a time.

The metric names and units are the exposition contract in ``agents.protocol`` (dcgm-exporter's
``DCGM_FI_DEV_*`` and our ``gpufleet_*``), and so are which field each metric carries, its scale
and the cadence it is read at (``METRICS``): the queries and the decoding of plain fields are
derived from that table; only what is not one field (labels, lost GPUs, reasons, XIDs, the ops
state, the agent's info) is coded here. Pure functions of query
results, so the conversion is tested on a recorded answer without a server.

Cost, which is what a 40,000-GPU fleet is about: one query per metric for the whole fleet,
never one per node, and each stripped to the labels the console joins on (``max by (Hostname,
gpu)``), because labels are most of an answer's bytes. Three cadences (``Cadence``):

- ``fast``: what the table and the alerts need, read for every node with news on every poll.
- ``static``: what does not change while an agent runs (GPU identities, limits, memory size,
  agent info and restart targets), read once per node and again only when the node's
  ``gpufleet_inventory_timestamp_seconds`` moves (its agent restarted, a GPU came back): at
  5,000 nodes re-reading them was half of every slow poll's 84 MB.
- ``slow``: clocks, PCIe, HBM temperature and the slow host rates, read for a node once its
  last read is ``SLOW_EVERY`` polls old and it has news since: spread over the polls instead of
  every node at once.

The first poll reads only the ``first`` queries (``fast`` plus the memory size and slowdown
limit that the table and the temperature alert compare against), so that the screen shows
every node before the rest arrives. Counters read every poll only for alerts (XID, ECC,
pending remaps) are filtered to their non-zero series; the static, unfiltered read of the same
metric says which GPUs have it at all, so that "absent" still means "not known", never 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import msgspec

from agents.protocol import (
    METRIC_SPECS,
    Event,
    GpuInfo,
    GpuReading,
    HostInfo,
    HostReading,
    Inventory,
    NodeState,
    OpsState,
    Sample,
    xid_message,
)
from agents.protocol.metrics import METRICS, FieldRef, FieldStruct
from console.sources.prometheus.client import Vector

#: Polls between two reads of one node's slow readings.
SLOW_EVERY: Final = 6

Cadence = Literal["fast", "static", "slow"]
_OPS: Final[dict[str, OpsState]] = {
    "schedulable": "schedulable", "draining": "draining", "drained": "drained"
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PromQuery:
    key: str  # what the conversion looks the answer up by
    expr: str
    cadence: Cadence
    #: Read on the first poll: what the table and the alerts need to show a node at all.
    first: bool = False


def _gpu(name: str, suffix: str = "") -> str:
    _known(name)
    return f"max by (Hostname, gpu) ({name}){suffix}"


def _node(name: str) -> str:
    _known(name)
    return f"max by (Hostname) ({name})"


def _known(name: str) -> None:
    if name not in METRIC_SPECS:  # a rename in the contract fails at import, not at 3 a.m.
        raise AssertionError(f"{name} is not in agents.protocol.METRICS")


def _cadence(name: str) -> Cadence:
    """How often the table says the console reads ``name``: one query, one cadence."""
    _known(name)
    read = METRIC_SPECS[name].read
    if read is None or read == "alerting":
        raise AssertionError(f"{name} is read as {read}, not on one cadence")
    return read


def _plain(struct: FieldStruct) -> dict[str, FieldRef]:
    """The table's metrics the console reads that are one field of ``struct``: field by
    metric, in the table's order."""
    return {
        m.name: m.field
        for m in METRICS
        if m.field is not None and m.field.struct == struct and m.read is not None
    }


#: GPU readings (``GpuReading`` fields), the alerting ones included (see ``ALERTING``).
GPU_READINGS: Final = _plain("GpuReading")
#: What does not change while an agent runs (``GpuInfo`` fields).
GPU_LIMITS: Final = _plain("GpuInfo")
#: Host readings (``HostReading`` fields; the load average one metric per element).
HOST_READINGS: Final = _plain("HostReading")
#: Readings that raise alerts, read every poll for their non-zero series only, and all of
#: them with the static set: the XID (an event, not a field) and the alerting fields.
ALERTING: Final = tuple(m.name for m in METRICS if m.read == "alerting")
_XID: Final = "DCGM_FI_DEV_XID_ERRORS"
_STATE_LABELS: Final = "Hostname, state, pool, reason, who"
_AGENT_LABELS: Final = (
    "Hostname, version, protocol, backend, driver_version, cuda_version, scheduler, restart_targets"
)
_GPU_IDS: Final = "Hostname, gpu, UUID, modelName, pci_bus_id"


def _queries() -> tuple[PromQuery, ...]:
    stamp, state = "gpufleet_sample_timestamp_seconds", "gpufleet_node_state_info"
    out = [
        # When each node's agent sampled (its clock), and when Prometheus scraped it (its own).
        PromQuery("sample_ts", _node(stamp), _cadence(stamp)),
        PromQuery("scraped", f"max by (Hostname) (timestamp({stamp}))", _cadence(stamp)),
        PromQuery("fresh", _node("gpufleet_sample_fresh"), _cadence("gpufleet_sample_fresh")),
        PromQuery("state", f"max by ({_STATE_LABELS}) ({state})", _cadence(state)),
        PromQuery(
            "since",
            _node("gpufleet_node_state_since_timestamp_seconds"),
            _cadence("gpufleet_node_state_since_timestamp_seconds"),
        ),
        # Lost GPUs only: the static ``ids`` says which GPUs a node has.
        PromQuery("lost", _gpu("gpufleet_gpu_lost", " > 0"), _cadence("gpufleet_gpu_lost")),
        PromQuery(
            "reasons",
            "max by (Hostname, gpu, reason) (gpufleet_gpu_clock_event_active) > 0",
            _cadence("gpufleet_gpu_clock_event_active"),
        ),
        PromQuery(
            "xid_ts",
            _gpu("gpufleet_gpu_last_xid_timestamp_seconds"),
            _cadence("gpufleet_gpu_last_xid_timestamp_seconds"),
        ),
        # When the agent's static facts last changed: which nodes' static set to read again.
        PromQuery(
            "stamp",
            _node("gpufleet_inventory_timestamp_seconds"),
            _cadence("gpufleet_inventory_timestamp_seconds"),
        ),
        PromQuery(
            "interval",
            _node("gpufleet_sample_interval_seconds"),
            _cadence("gpufleet_sample_interval_seconds"),
        ),
        PromQuery(
            "agent",
            f"max by ({_AGENT_LABELS}) (gpufleet_agent_info)",
            _cadence("gpufleet_agent_info"),
        ),
        # The one per-GPU series an agent always serves, fresh or not, lost or not: its
        # labels, read with the static set as the XID's own (alerting) read is.
        PromQuery("ids", f"max by ({_GPU_IDS}) ({_XID})", "static"),
    ]
    for m in METRICS:
        if m.read == "alerting":
            out.append(PromQuery(f"{m.name}>0", _gpu(m.name, " > 0"), "fast"))
            out.append(PromQuery(m.name, _gpu(m.name), "static"))
        elif m.name in GPU_READINGS or m.name in GPU_LIMITS:
            out.append(PromQuery(m.name, _gpu(m.name), _cadence(m.name), first=m.first))
        elif m.name in HOST_READINGS:
            out.append(PromQuery(m.name, _node(m.name), _cadence(m.name), first=m.first))
    return tuple(PromQuery(q.key, q.expr, q.cadence, q.first or q.cadence == "fast") for q in out)


QUERIES: Final = _queries()
#: Asked of every node on every poll: when Prometheus last scraped each (which says which
#: nodes have news), and the ops state the table shows. Every other query may be narrowed to
#: the nodes with news (``only``, ``host_matcher``).
HEAD_KEYS: Final = frozenset({"sample_ts", "scraped", "fresh", "state", "since"})
_METRIC_NAME: Final = re.compile(r"\b(?:DCGM_FI_|gpufleet_)\w+")


def host_matcher(hosts: Iterable[str]) -> str:
    """The label matcher that selects ``hosts`` (by the Hostname label): built once per host
    set of a poll, not per query (at thousands of hosts, milliseconds each)."""
    pattern = "|".join(re.escape(h) for h in sorted(hosts))
    return "{Hostname=~" + json.dumps(pattern) + "}"


def only(expr: str, matcher: str) -> str:
    """``expr`` narrowed by ``matcher`` (``host_matcher``), so that Prometheus selects,
    evaluates and sends only those hosts' series."""
    narrowed, found = _METRIC_NAME.subn(lambda m: m.group(0) + matcher, expr, count=1)
    if not found:
        raise AssertionError(f"no metric to narrow in {expr!r}")
    return narrowed


@dataclass(slots=True)
class PromNode:
    """One node as Prometheus has it, in the model's frames."""

    scraped: float  # Prometheus' clock: when it last scraped the node
    sample_ts: float | None  # the agent's clock: when it took the newest sample
    inventory: Inventory
    #: The newest sample, or None when the agent withholds its readings (sampling stalled).
    sample: Sample | None
    interval: float | None  # the agent's sampling interval
    agent: tuple[str, str] | None  # (software, protocol)
    xids: list[Event] = field(default_factory=list)


#: One series of an answer: its labels and value.
Series = tuple[dict[str, str], float]


class FleetIndex:
    """The latest answer to every query, grouped by host and kept between polls, so that a
    poll converts only the nodes it has news of (and may ask only for those): at 5,000 nodes
    re-indexing every answer on every poll was most of a poll's CPU."""

    def __init__(self) -> None:
        self._by: dict[str, dict[str, list[Series]]] = {}

    def update(self, key: str, vec: Vector, hosts: Collection[str] | None = None) -> None:
        """``vec`` is the answer for ``hosts`` only (None: for every host); a host it names
        without series has none now."""
        grouped: dict[str, list[Series]] = {}
        for labels, value in vec.series:
            name = labels.get("Hostname", "")
            if name in grouped:
                grouped[name].append((labels, value))
            else:
                grouped[name] = [(labels, value)]
        if hosts is None:
            self._by[key] = grouped
            return
        table = self._by.setdefault(key, {})
        for name in hosts:
            table.pop(name, None)
        table.update(grouped)

    def hosts(self, key: str) -> list[str]:
        return list(self._by.get(key, ()))

    def series(self, key: str, host: str) -> list[Series]:
        return self._by.get(key, {}).get(host, [])

    def value(self, key: str, host: str) -> float | None:
        found = self._by.get(key, {}).get(host)
        return found[0][1] if found else None

    def by_gpu(self, key: str, host: str) -> dict[int, float]:
        out = {}
        for labels, value in self._by.get(key, {}).get(host, ()):
            gpu = labels.get("gpu", "")
            if gpu.isdigit():
                out[int(gpu)] = value
        return out


def _fields_by_gpu(
    index: FleetIndex, host: str, table: Mapping[str, FieldRef]
) -> dict[int, dict[str, Any]]:
    """GPU index -> {field: value in the protocol's unit and type} for one host."""
    out: dict[int, dict[str, Any]] = {}
    for metric, field_ref in table.items():
        if metric in ALERTING:  # read by its own two queries (``node_from``)
            continue
        decode, field_name = field_ref.decode, field_ref.name
        for labels, value in index.series(metric, host):
            gpu = labels.get("gpu", "")
            if gpu.isdigit():
                g = int(gpu)
                if g not in out:
                    out[g] = {}
                out[g][field_name] = decode(value)
    return out


def _int(value: float | None, scale: float = 1) -> int | None:
    return None if value is None else round(value * scale)


def nodes_from(vectors: Mapping[str, Vector]) -> dict[str, PromNode]:
    """Every node Prometheus has a sample time for, by its Hostname label."""
    index = FleetIndex()
    for key, vec in vectors.items():
        index.update(key, vec)
    return nodes_of(index, index.hosts("scraped"))


def nodes_of(index: FleetIndex, hosts: Iterable[str]) -> dict[str, PromNode]:
    """Those of ``hosts`` that Prometheus has a sample time for."""
    out = {}
    for name in hosts:
        node = node_from(index, name)
        if node is not None:
            out[name] = node
    return out


def node_from(index: FleetIndex, name: str) -> PromNode | None:
    """One node as the index has it; None without a sample time."""
    at = index.value("scraped", name)
    if at is None:
        return None
    ts = index.value("sample_ts", name)
    since = index.value("since", name)
    states = _states(index.series("state", name), {name: since} if since is not None else {})
    agents = _agents(index.series("agent", name))
    h = _host_fields(index, name)

    # Per GPU, its readings and limits (absent: not known), each series read once.
    readings = _fields_by_gpu(index, name, GPU_READINGS)
    limits = _fields_by_gpu(index, name, GPU_LIMITS)
    alerting = {m: (index.by_gpu(f"{m}>0", name), index.by_gpu(m, name)) for m in ALERTING}
    lost = index.by_gpu("lost", name)
    xid_ts = index.by_gpu("xid_ts", name)
    reasons: dict[int, list[str]] = defaultdict(list)
    for labels, _ in index.series("reasons", name):
        gpu = labels.get("gpu", "")
        if gpu.isdigit() and labels.get("reason"):
            reasons[int(gpu)].append(labels["reason"])
    ids: dict[int, dict[str, str]] = {}
    for labels, _ in index.series("ids", name):
        gpu = labels.get("gpu", "")
        if gpu.isdigit():
            ids[int(gpu)] = labels
    gpus: set[int] = set(lost) | set(ids) | set(readings)

    infos, gpu_readings, xids = [], [], []
    for key in sorted(gpus):
        labels = ids.get(key, {})
        values = readings.get(key, {})
        infos.append(
            GpuInfo(
                index=key,
                uuid=labels.get("UUID") or None,
                name=labels.get("modelName") or None,
                pci_bus_id=labels.get("pci_bus_id") or None,
                memory_total=values.get("mem_total"),
                **limits.get(key, {}),
            )
        )
        # Non-zero where the filtered read has it, else 0 where the static read has it.
        alerts: dict[str, float | None] = {}
        for m, (nonzero, every) in alerting.items():
            alerts[m] = nonzero.get(key, 0 if key in every else None)
        xid, when = _int(alerts[_XID]), xid_ts.get(key)
        if xid and when is not None:
            xids.append(
                Event(seq=0, ts=when, kind="xid", gpu=key, xid=xid,
                      message=xid_message(key, xid), replay=True)
            )  # fmt: skip
        if lost.get(key):
            gpu_readings.append(GpuReading(index=key, lost=True))
            continue
        alerted: dict[str, Any] = {
            GPU_READINGS[m].name: None if v is None else GPU_READINGS[m].decode(v)
            for m, v in alerts.items()
            if m in GPU_READINGS
        }
        gpu_readings.append(
            GpuReading(index=key, clock_reasons=sorted(reasons.get(key, [])), **values, **alerted)
        )
    agent = agents.get(name, {})
    inventory = Inventory(
        node=name,
        backend=_backend(agent.get("backend")),
        driver_version=agent.get("driver_version") or None,
        cuda_version=agent.get("cuda_version") or None,
        # Kernel, CPUs and boot id are not exported; nothing on screen reads them.
        host=HostInfo(
            hostname=name,
            kernel="",
            cpu_count=0,
            memory_total=h.get("mem_total", 0),
            boot_id=None,
        ),
        gpus=infos,
        state=states.get(name),
        scheduler=agent.get("scheduler") or None,
        restart_targets=[t for t in agent.get("restart_targets", "").split(",") if t],
    )
    sample = None
    if ts is not None and (index.value("fresh", name) or 0) >= 1:
        sample = Sample(seq=0, ts=ts, host=_host(h), gpus=gpu_readings)
    software = agent.get("version")
    return PromNode(
        scraped=at,
        sample_ts=ts,
        inventory=inventory,
        sample=sample,
        interval=index.value("interval", name),
        agent=(f"gpufleet-agent {software}", agent.get("protocol", "?")) if software else None,
        xids=xids,
    )


def _states(series: Iterable[Series], since: Mapping[str, float]) -> dict[str, NodeState]:
    out = {}
    for labels, _ in series:
        name, ops = labels.get("Hostname", ""), _OPS.get(labels.get("state", ""))
        if ops is None:
            continue
        out[name] = NodeState(
            state=ops,
            pool=labels.get("pool") or None,
            reason=labels.get("reason") or None,
            who=labels.get("who") or None,
            since=since.get(name),
        )
    return out


def _agents(series: Iterable[Series]) -> dict[str, dict[str, str]]:
    return {m.get("Hostname", ""): m for m, _ in series}


def _backend(text: str | None) -> Literal["nvml", "sim", "none"]:
    return "nvml" if text == "nvml" else "sim" if text == "sim" else "none"


#: How many metrics carry each tuple field of the host (the load average: three).
_HOST_ITEMS: Final = Counter(f.name for f in HOST_READINGS.values() if f.item is not None)
#: A host field Prometheus lacks (an older agent, a value not given): None where the protocol
#: allows it; 0 where it does not (counts of bytes and seconds), which only the node view's
#: host line shows.
_HOST_ABSENT: Final[dict[str, Any]] = {
    f.name: None if type(None) in get_args(f.type) else f.type()
    for f in msgspec.structs.fields(HostReading)
}


def _host_fields(index: FleetIndex, name: str) -> dict[str, Any]:
    """The host's exported fields Prometheus has, as ``HostReading`` holds them."""
    out: dict[str, Any] = {}
    items: dict[str, dict[int, Any]] = {}
    for metric, f in HOST_READINGS.items():
        value = index.value(metric, name)
        if value is None:
            continue
        if f.item is None:
            out[f.name] = f.decode(value)
        else:
            items.setdefault(f.name, {})[f.item] = f.decode(value)
    for field_name, parts in items.items():
        if len(parts) == _HOST_ITEMS[field_name]:  # a tuple only whole
            out[field_name] = tuple(parts[i] for i in sorted(parts))
    return out


def _host(h: Mapping[str, Any]) -> HostReading:
    """The exported host readings; what is not exported (per-core CPU, the boot id) or not
    in Prometheus reads as ``_HOST_ABSENT`` says."""
    return HostReading(**{**_HOST_ABSENT, **h})
