"""What ``/metrics`` says: the agent's newest sample and ops state as Prometheus series.

The names, units and labels are the table in ``agents.protocol`` (``METRICS``); this module only
computes values from what the agent already holds. Serving a scrape reads no GPU: the sample
is the sampler's newest (``Sampler.latest``), the static facts the backend's cached inventory,
so any number of scrapes cost NVML nothing (tests/unit/test_metrics.py counts the calls).

Threads: ``collect`` runs on the HTTP server's threads while the event loop records samples
and events. Everything it reads is an immutable object behind a single reference (a frozen
``Sample``, ``NodeState`` and inventory, the XID table replaced whole, never mutated), and
swapping a reference is atomic in CPython, so a scrape sees one consistent sample without a
lock that could make the event loop wait on a slow scraper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agents import __version__
from agents.gpu.base import GpuInventory
from agents.gpu.clocks import encode_clock_reasons
from agents.protocol import (
    GPU_LABELS,
    METRIC_SPECS,
    METRICS,
    MIB,
    NODE_LABELS,
    PROTOCOL_VERSION,
    STALE_INTERVALS,
    Event,
    GpuInfo,
    GpuReading,
    HostReading,
    NodeState,
    Sample,
)
from agents.protocol.metrics import FieldRef, FieldStruct


def _plain(struct: FieldStruct) -> tuple[tuple[str, FieldRef], ...]:
    """The table's metrics that are one field of ``struct``: (metric, field)."""
    return tuple((m.name, m.field) for m in METRICS if m.field and m.field.struct == struct)


#: Per-GPU readings taken straight from a field (value as is, or scaled to the exported unit).
_GPU_FIELDS: Final = _plain("GpuReading")
#: Per-GPU static facts from the inventory, served whether or not the sample is fresh.
_INFO_FIELDS: Final = _plain("GpuInfo")
_HOST_FIELDS: Final = _plain("HostReading")
_STATE_FIELDS: Final = _plain("NodeState")


class _Families:
    """One Metric per table entry, created on first use, in the table's order on output."""

    def __init__(self) -> None:
        self._made: dict[str, Metric] = {}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        metric = self._made.get(name)
        if metric is None:
            spec = METRIC_SPECS[name]
            metric = self._made[name] = Metric(name, spec.help, spec.kind)
        metric.add_sample(name, labels, float(value))

    def __iter__(self) -> Iterator[Metric]:
        return (self._made[m.name] for m in METRICS if m.name in self._made)


class MetricsCollector(Collector):
    """A prometheus-client collector over the agent's own state.

    ``latest``, ``gpus`` and ``state`` must only read what the agent holds (no hardware call):
    the daemon passes ``Sampler.latest``, the backend's cached inventory and its ops state.
    """

    def __init__(
        self,
        *,
        node: str,
        latest: Callable[[], Sample | None],
        gpus: Callable[[], GpuInventory],
        state: Callable[[], NodeState | None],
        interval: float,
        scheduler: str,
        restart_targets: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self._latest = latest
        self._gpus = gpus
        self._state = state
        self.interval = interval
        self.scheduler = scheduler
        self.restart_targets = ",".join(restart_targets)
        self._clock = clock
        #: The inventory last served and since when (the agent's clock): a console reads the
        #: static facts again only when this time moves, instead of on every slow poll.
        self._inventory: tuple[GpuInventory | None, float] = (None, clock())
        #: GPU index -> (newest XID, its unix time); replaced whole, never changed in place.
        self._xids: dict[int, tuple[int, float]] = {}

    def saw_event(self, event: Event) -> None:
        """Called on the event loop for every event the agent emits: keeps the newest XID."""
        if event.kind == "xid" and event.gpu is not None and event.xid is not None:
            self._xids = {**self._xids, event.gpu: (event.xid, event.ts)}

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not run ``collect``."""
        return []

    def fresh(self, sample: Sample | None, now: float) -> bool:
        """Whether ``sample`` is current: the same rule as the console's stale one."""
        return sample is not None and now - sample.ts <= STALE_INTERVALS * self.interval

    def collect(self) -> Iterator[Metric]:
        sample, inv, state = self._latest(), self._gpus(), self._state()
        xids = self._xids
        served, since = self._inventory
        if inv is not served:
            if served is not None and inv != served:  # a GPU came back: its facts re-read
                since = self._clock()
            self._inventory = (inv, since)  # one reference, swapped whole (see above)
        fresh = self.fresh(sample, self._clock())
        out = _Families()
        node = {
            "Hostname": self.node,
            "pool": (state.pool if state else None) or "",
            "state": state.state if state else "",
        }
        assert tuple(node) == NODE_LABELS
        infos = {g.index: g for g in inv.gpus}
        readings = {r.index: r for r in sample.gpus} if sample is not None and fresh else {}
        for index in sorted(infos.keys() | readings.keys()):
            labels = self._gpu_labels(index, infos.get(index), node)
            info = infos.get(index)
            if info is not None:
                _fields(out, labels, info, _INFO_FIELDS)
            xid, at = xids.get(index, (0, None))
            out.add("DCGM_FI_DEV_XID_ERRORS", labels, xid)
            if at is not None:
                out.add("gpufleet_gpu_last_xid_timestamp_seconds", labels, at)
            reading = readings.get(index)
            if reading is not None:
                _gpu_reading(out, labels, reading)
        if state is not None:
            info_labels = {**node, "reason": state.reason or "", "who": state.who or ""}
            out.add("gpufleet_node_state_info", info_labels, 1)
            _fields(out, node, state, _STATE_FIELDS)
        out.add("gpufleet_node_gpus", node, len(inv.gpus))
        if sample is not None:
            out.add("gpufleet_sample_timestamp_seconds", node, sample.ts)
        out.add("gpufleet_sample_interval_seconds", node, self.interval)
        out.add("gpufleet_sample_fresh", node, fresh)
        agent = {
            **node,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "backend": inv.backend,
            "driver_version": inv.driver_version or "",
            "cuda_version": inv.cuda_version or "",
            "scheduler": self.scheduler,
            "restart_targets": self.restart_targets,
        }
        out.add("gpufleet_agent_info", agent, 1)
        out.add("gpufleet_inventory_timestamp_seconds", node, since)
        if sample is not None and fresh:
            _fields(out, node, sample.host, _HOST_FIELDS)
        return iter(out)

    def _gpu_labels(self, index: int, info: GpuInfo | None, node: dict[str, str]) -> dict[str, str]:
        """dcgm-exporter's labels, in its order, then ours."""
        labels = {
            "gpu": str(index),
            "UUID": (info.uuid if info else None) or "",
            "pci_bus_id": (info.pci_bus_id if info else None) or "",
            "device": f"nvidia{index}",
            "modelName": (info.name if info else None) or "",
            **node,
        }
        assert tuple(labels) == GPU_LABELS
        return labels


def _fields(
    out: _Families,
    labels: dict[str, str],
    obj: GpuInfo | GpuReading | HostReading | NodeState,
    table: tuple[tuple[str, FieldRef], ...],
) -> None:
    for name, field in table:
        value = field.export(obj)
        if value is not None:  # not given by the hardware: no series, never 0
            out.add(name, labels, value)


def _gpu_reading(out: _Families, labels: dict[str, str], r: GpuReading) -> None:
    out.add("gpufleet_gpu_lost", labels, r.lost)
    if r.lost:  # nothing it reported is current: no readings at all
        return
    _fields(out, labels, r, _GPU_FIELDS)
    if r.mem_total is not None and r.mem_used is not None:
        free = r.mem_total - r.mem_used - (r.mem_reserved or 0)
        out.add("DCGM_FI_DEV_FB_FREE", labels, free / MIB)
    if r.clock_reasons is not None:
        out.add("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", labels, encode_clock_reasons(r.clock_reasons))
        for reason in r.clock_reasons:
            out.add("gpufleet_gpu_clock_event_active", {**labels, "reason": reason}, 1)
    if r.processes is not None:
        out.add("gpufleet_gpu_processes", labels, len(r.processes))


def _number(value: float) -> str:
    """As Go writes it (what dcgm-exporter shows): whole numbers without ".0"."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: Iterable[Metric]) -> bytes:
    """Prometheus text format 0.0.4, as dcgm-exporter writes it.

    Not prometheus-client's ``generate_latest``: it names a counter's HELP and TYPE lines
    ``<name>_total``, which dcgm's counters (``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``) are not,
    and sorts labels, where dcgm-exporter keeps ``gpu, UUID, ...`` in order. A family without
    samples is left out."""
    out: list[str] = []
    # The collector hands every series of one GPU the same labels dict: format it once. Keyed
    # by id(), with the dict kept beside its text so that no other dict can take that id.
    formatted: dict[int, tuple[dict[str, str], str]] = {}
    for metric in families:
        if not metric.samples:
            continue
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.type}\n")
        for s in metric.samples:
            seen = formatted.get(id(s.labels))
            if seen is None:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
                seen = formatted[id(s.labels)] = (s.labels, text)
            labels = seen[1]
            out.append(f"{s.name}{{{labels}}} {_number(s.value)}\n")
    return "".join(out).encode()
