"""What the console asks Prometheus, and how the answers become the frames the fleet model
already knows (``Inventory``, ``Sample``, XID ``Event``), one node at a time.

The metric names and units are the exposition contract in ``agents.protocol`` (dcgm-exporter's
``DCGM_FI_DEV_*`` and our ``gpufleet_*``); nothing here is named twice. Pure functions of query
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
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from agents.protocol import (
    METRIC_SPECS,
    MIB,
    Event,
    GpuInfo,
    GpuReading,
    HostInfo,
    HostReading,
    Inventory,
    NodeState,
    OpsState,
    Sample,
)
from console.prometheus import Vector

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


#: GPU readings: (GpuReading field, metric, scale to the protocol's unit, cadence).
GPU_READINGS: Final[tuple[tuple[str, str, float, Cadence], ...]] = (
    ("util_gpu", "DCGM_FI_DEV_GPU_UTIL", 1, "fast"),
    ("mem_used", "DCGM_FI_DEV_FB_USED", MIB, "fast"),
    ("temp_c", "DCGM_FI_DEV_GPU_TEMP", 1, "fast"),
    ("power_mw", "DCGM_FI_DEV_POWER_USAGE", 1000, "fast"),
    ("util_mem", "DCGM_FI_DEV_MEM_COPY_UTIL", 1, "slow"),
    ("mem_total", "DCGM_FI_DEV_FB_TOTAL", MIB, "static"),
    ("mem_reserved", "DCGM_FI_DEV_FB_RESERVED", MIB, "slow"),
    ("temp_mem_c", "DCGM_FI_DEV_MEMORY_TEMP", 1, "slow"),
    ("energy_mj", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1, "slow"),
    ("sm_clock_mhz", "DCGM_FI_DEV_SM_CLOCK", 1, "slow"),
    ("mem_clock_mhz", "DCGM_FI_DEV_MEM_CLOCK", 1, "slow"),
    ("pstate", "DCGM_FI_DEV_PSTATE", 1, "slow"),
    ("remapped_correctable", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", 1, "slow"),
    ("remapped_uncorrectable", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", 1, "slow"),
    ("remap_failure", "DCGM_FI_DEV_ROW_REMAP_FAILURE", 1, "slow"),
    ("pcie_width", "gpufleet_gpu_pcie_link_width", 1, "slow"),
    ("pcie_tx_kbs", "gpufleet_gpu_pcie_tx_bytes_per_second", 1 / 1024, "slow"),
    ("pcie_rx_kbs", "gpufleet_gpu_pcie_rx_bytes_per_second", 1 / 1024, "slow"),
)
#: Readings that raise alerts, read every poll for their non-zero series only (and all of
#: them on the slow cadence): (GpuReading field or "xid", metric).
GPU_ALERTING: Final[tuple[tuple[str, str], ...]] = (
    ("ecc_uncorrected_volatile", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ("remap_pending", "DCGM_FI_DEV_ROW_REMAP_PENDING"),
    ("xid", "DCGM_FI_DEV_XID_ERRORS"),
)
#: What does not change while an agent runs (GpuInfo field, metric, scale).
GPU_LIMITS: Final[tuple[tuple[str, str, float], ...]] = (
    ("temp_slowdown_c", "gpufleet_gpu_temperature_slowdown_celsius", 1),
    ("temp_shutdown_c", "gpufleet_gpu_temperature_shutdown_celsius", 1),
    ("temp_mem_max_c", "gpufleet_gpu_memory_temperature_max_celsius", 1),
    ("power_limit_mw", "gpufleet_gpu_power_limit_watts", 1000),
    ("pcie_max_width", "gpufleet_gpu_pcie_link_width_max", 1),
)
#: Host readings (HostReading field, metric, cadence).
HOST_READINGS: Final[tuple[tuple[str, str, Cadence], ...]] = (
    ("cpu_percent", "gpufleet_host_cpu_utilization_percent", "fast"),
    ("load1", "gpufleet_host_load1", "fast"),
    ("load5", "gpufleet_host_load5", "fast"),
    ("load15", "gpufleet_host_load15", "fast"),
    ("mem_total", "gpufleet_host_memory_total_bytes", "fast"),
    ("mem_used", "gpufleet_host_memory_used_bytes", "fast"),
    ("mem_available", "gpufleet_host_memory_available_bytes", "fast"),
    ("swap_total", "gpufleet_host_swap_total_bytes", "slow"),
    ("swap_used", "gpufleet_host_swap_used_bytes", "slow"),
    ("disk_read_bps", "gpufleet_host_disk_read_bytes_per_second", "slow"),
    ("disk_write_bps", "gpufleet_host_disk_write_bytes_per_second", "slow"),
    ("net_rx_bps", "gpufleet_host_network_receive_bytes_per_second", "slow"),
    ("net_tx_bps", "gpufleet_host_network_transmit_bytes_per_second", "slow"),
    ("uptime_s", "gpufleet_host_uptime_seconds", "slow"),
)
_STATE_LABELS: Final = "Hostname, state, pool, reason, who"
_AGENT_LABELS: Final = (
    "Hostname, version, protocol, backend, driver_version, cuda_version, scheduler, restart_targets"
)
_GPU_IDS: Final = "Hostname, gpu, UUID, modelName, pci_bus_id"
#: Static facts the first screen needs: the memory column's total and the temperature alert's
#: limit.
_FIRST_STATIC: Final = frozenset(
    {"DCGM_FI_DEV_FB_TOTAL", "gpufleet_gpu_temperature_slowdown_celsius"}
)


def _queries() -> tuple[PromQuery, ...]:
    out = [
        # When each node's agent sampled (its clock), and when Prometheus scraped it (its own).
        PromQuery("sample_ts", _node("gpufleet_sample_timestamp_seconds"), "fast"),
        PromQuery(
            "scraped",
            "max by (Hostname) (timestamp(gpufleet_sample_timestamp_seconds))",
            "fast",
        ),
        PromQuery("fresh", _node("gpufleet_sample_fresh"), "fast"),
        PromQuery("state", f"max by ({_STATE_LABELS}) (gpufleet_node_state_info)", "fast"),
        PromQuery("since", _node("gpufleet_node_state_since_timestamp_seconds"), "fast"),
        # Lost GPUs only: the slow ``ids`` says which GPUs a node has.
        PromQuery("lost", _gpu("gpufleet_gpu_lost", " > 0"), "fast"),
        PromQuery(
            "reasons",
            "max by (Hostname, gpu, reason) (gpufleet_gpu_clock_event_active) > 0",
            "fast",
        ),
        PromQuery("xid_ts", _gpu("gpufleet_gpu_last_xid_timestamp_seconds"), "fast"),
        # When the agent's static facts last changed: which nodes' static set to read again.
        PromQuery("stamp", _node("gpufleet_inventory_timestamp_seconds"), "fast"),
        PromQuery("interval", _node("gpufleet_sample_interval_seconds"), "static"),
        PromQuery("agent", f"max by ({_AGENT_LABELS}) (gpufleet_agent_info)", "static"),
        # The one per-GPU series an agent always serves, fresh or not, lost or not.
        PromQuery("ids", f"max by ({_GPU_IDS}) (DCGM_FI_DEV_XID_ERRORS)", "static"),
    ]
    out += [
        PromQuery(m, _gpu(m), cadence, first=m in _FIRST_STATIC)
        for _, m, _, cadence in GPU_READINGS
    ]
    for _, m in GPU_ALERTING:
        out.append(PromQuery(f"{m}>0", _gpu(m, " > 0"), "fast"))
        out.append(PromQuery(m, _gpu(m), "static"))
    out += [PromQuery(m, _gpu(m), "static", first=m in _FIRST_STATIC) for _, m, _ in GPU_LIMITS]
    out += [PromQuery(m, _node(m), cadence) for _, m, cadence in HOST_READINGS]
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


#: (field, scale) by metric: the readings and the limits, as ``_fields_by_gpu`` reads them.
GPU_READINGS_BY_METRIC: Final = {m: (f, scale) for f, m, scale, _ in GPU_READINGS}
GPU_LIMITS_BY_METRIC: Final = {m: (f, scale) for f, m, scale in GPU_LIMITS}


def _fields_by_gpu(
    index: FleetIndex, host: str, table: Mapping[str, tuple[str, float]]
) -> dict[int, dict[str, Any]]:
    """GPU index -> {field: value in the protocol's unit} for one host."""
    out: dict[int, dict[str, Any]] = {}
    for metric, (field_name, scale) in table.items():
        for labels, value in index.series(metric, host):
            gpu = labels.get("gpu", "")
            if gpu.isdigit():
                g = int(gpu)
                if g not in out:
                    out[g] = {}
                out[g][field_name] = round(value * scale)
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
    h = {key: index.value(m, name) for key, m, _ in HOST_READINGS}

    # Per GPU, its readings and limits (absent: not known), each series read once.
    readings = _fields_by_gpu(index, name, GPU_READINGS_BY_METRIC)
    limits = _fields_by_gpu(index, name, GPU_LIMITS_BY_METRIC)
    alerting = {f: (index.by_gpu(f"{m}>0", name), index.by_gpu(m, name)) for f, m in GPU_ALERTING}
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
        alerts: dict[str, int | None] = {}
        for f, (nonzero, every) in alerting.items():
            alerts[f] = _int(nonzero[key]) if key in nonzero else 0 if key in every else None
        xid, when = alerts["xid"], xid_ts.get(key)
        if xid and when is not None:
            xids.append(
                Event(seq=0, ts=when, kind="xid", gpu=key, xid=xid,
                      message=f"GPU {key}: XID {xid}", replay=True)
            )  # fmt: skip
        if lost.get(key):
            gpu_readings.append(GpuReading(index=key, lost=True))
            continue
        values = dict(values)
        pending, failure = alerts["remap_pending"], values.pop("remap_failure", None)
        gpu_readings.append(
            GpuReading(
                index=key,
                clock_reasons=sorted(reasons.get(key, [])),
                ecc_uncorrected_volatile=alerts["ecc_uncorrected_volatile"],
                remap_pending=None if pending is None else bool(pending),
                remap_failure=None if failure is None else bool(failure),
                **values,
            )
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
            memory_total=_int(h["mem_total"]) or 0,
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


def _host(h: Mapping[str, float | None]) -> HostReading:
    """The exported host readings. The protocol's counts of bytes and seconds are not
    optional; when Prometheus lacks one (an older agent) it reads 0 here, which only the
    node view's host line shows."""
    load = (h["load1"], h["load5"], h["load15"])
    return HostReading(
        cpu_percent=h["cpu_percent"],
        cpu_per_core=None,
        load=None if None in load else (load[0] or 0.0, load[1] or 0.0, load[2] or 0.0),
        mem_total=_int(h["mem_total"]) or 0,
        mem_used=_int(h["mem_used"]) or 0,
        mem_available=_int(h["mem_available"]) or 0,
        swap_total=_int(h["swap_total"]) or 0,
        swap_used=_int(h["swap_used"]) or 0,
        disk_read_bps=h["disk_read_bps"],
        disk_write_bps=h["disk_write_bps"],
        net_rx_bps=h["net_rx_bps"],
        net_tx_bps=h["net_tx_bps"],
        uptime_s=h["uptime_s"] or 0.0,
        boot_id=None,
    )
