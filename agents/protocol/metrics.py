"""Prometheus exposition (issue 7)."""

from __future__ import annotations

from functools import cache
from typing import Any, Final, Literal, cast, get_args

import msgspec

from agents.protocol.readings import GpuInfo, GpuReading, HostReading, NodeState

# What an agent with ``[metrics] listen`` set serves on ``/metrics``, and what the console's
# Prometheus source reads back: one table, so the two sides cannot drift. For each metric it
# says where the value comes from (one field of a reading struct and its scale to the exported
# unit, or a rule in words) and how often the console reads it. The agent's exporter
# (agents/export/metrics.py) and the console's queries and decoding
# (console/sources/prometheus/view.py) are derived from it; tests/unit/test_metrics_roundtrip.py
# takes every field through both and back.
#
# Readings dcgm-exporter also exports keep its names, units and labels (``DCGM_FI_DEV_*``), so
# that Grafana dashboards and alert rules written for it work unchanged; ours, and any of ours
# whose meaning differs from DCGM's (PCIe throughput: a rate here, a cumulative KB counter
# there), are ``gpufleet_*``.
#
# Rules both sides rely on:
# - A value the hardware did not give (NotSupported, a lost GPU) is absent: no series, never 0.
#   A lost GPU has ``gpufleet_gpu_lost 1`` and nothing else.
# - The readings (every ``scope="gpu"`` metric and the ``gpufleet_host_*`` ones) come from the
#   agent's newest sample, and only while it is fresh: younger than ``STALE_INTERVALS`` sampling
#   intervals. Past that, the agent serves what it knows without a sample (its info, its ops
#   state, the inventory's limits, the newest sample's time and ``gpufleet_sample_fresh 0``),
#   so Prometheus marks the readings stale instead of keeping old numbers as live.
# - Serving a scrape reads no hardware: it renders what the sampler already holds.
# - Text format 0.0.4 only (dcgm-exporter's), whatever the scraper asks for: OpenMetrics would
#   require ``_total`` on counters, which dcgm's counter names do not have.

MetricKind = Literal["gauge", "counter"]
MetricScope = Literal["gpu", "node"]

#: Labels on every per-GPU series, in dcgm-exporter's spelling and order (``gpu`` is NVML's
#: index, ``device`` is ``nvidia<index>``, ``Hostname`` the agent's node name), then ours:
#: ``pool`` and the ops ``state`` (schedulable, draining, drained). A label with no value (a node
#: in no pool) is left empty, which Prometheus treats as absent.
GPU_LABELS: Final = (
    "gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "pool", "state"
)  # fmt: skip
#: Labels on every per-node series.
NODE_LABELS: Final = ("Hostname", "pool", "state")

#: Port the agent's exporter is documented with: beside dcgm-exporter's 9400, so a site's
#: firewall rules and service discovery find it near the one they know, but not on it, so both
#: can run on a node while dashboards move over. The exporter is off unless configured.
METRICS_PORT: Final = 9401
#: Sampling intervals after which the newest sample no longer counts as current (the console's
#: stale rule, design.md §4).
STALE_INTERVALS: Final = 3.0
#: Bytes in a mebibyte: dcgm-exporter's framebuffer unit, and the screen's.
MIB: Final = 1 << 20


#: The structs a metric's value can be one field of (``agents.protocol.readings``).
FieldStruct = Literal["GpuReading", "GpuInfo", "HostReading", "NodeState"]
#: How often the console's Prometheus source (console/sources/prometheus/view.py) reads a metric,
#: for the whole fleet in one query: ``fast`` every poll (what the table and the alerts show),
#: ``slow`` every ``SLOW_EVERY`` polls per node with news, ``static`` once per agent start (again
#: only when ``gpufleet_inventory_timestamp_seconds`` moves), ``alerting`` its non-zero series every
#: poll and all of them with the static set (so that absent still means "not known", never 0).
ReadCadence = Literal["fast", "slow", "static", "alerting"]

STRUCTS: Final[dict[FieldStruct, type[msgspec.Struct]]] = {
    "GpuReading": GpuReading,
    "GpuInfo": GpuInfo,
    "HostReading": HostReading,
    "NodeState": NodeState,
}


@cache
def _field_types(struct: FieldStruct) -> dict[str, Any]:
    """The struct's fields and their types, read once a struct: msgspec evaluates every
    annotation of the struct to answer, which at a struct per metric cost 20 ms of every
    agent's and console's start."""
    return {f.name: f.type for f in msgspec.structs.fields(STRUCTS[struct])}


@cache
def _scalar(struct: FieldStruct, name: str, item: int | None) -> type:
    """The field's own type, less ``None`` (an element's, for ``item``): what the console
    turns an exported float back into, read from the struct so it is not stated twice."""
    types = _field_types(struct)
    if name not in types:
        raise AssertionError(f"{struct} has no field {name!r}")
    kinds = [t for t in get_args(types[name]) or (types[name],) if t is not type(None)]
    kind = kinds[0]
    if item is not None:
        kind = get_args(kind)[item]
    if kind not in (bool, int, float):
        raise AssertionError(f"{struct}.{name} is not a number: {kind}")
    return cast(type, kind)


class FieldRef(msgspec.Struct, kw_only=True, frozen=True):
    """A metric whose value is one field of a reading struct, scaled to the exported unit.

    Both sides convert through this one object: the agent exports ``field * scale``
    (``export``), the console turns a series back into the field's own type and unit
    (``decode``); the round-trip test takes every one of them through both."""

    struct: FieldStruct
    name: str
    #: One element of a tuple field (``HostReading.load``).
    item: int | None = None
    #: Exported value = field value * scale (W from mW: 1/1000; MiB from bytes: 1/2**20).
    scale: float = 1

    @property
    def path(self) -> str:
        at = "" if self.item is None else f"[{self.item}]"
        return f"{self.struct}.{self.name}{at}"

    def export(self, obj: object) -> float | None:
        """The exported value from ``obj`` (a ``struct``), None when the hardware did not give
        it: no series then, never 0."""
        value = getattr(obj, self.name)
        if value is not None and self.item is not None:
            value = value[self.item]
        if value is None:
            return None
        return value * self.scale if self.scale != 1 else value  # type: ignore[no-any-return]

    def decode(self, value: float) -> bool | int | float:
        """A series' value as the field holds it: the scale undone, then the field's type
        (a count or a size an integer, a flag a bool)."""
        kind = _scalar(self.struct, self.name, self.item)
        unscaled = value / self.scale if self.scale != 1 else value
        if kind is bool:
            return bool(round(unscaled))
        if kind is int:
            return round(unscaled)
        return unscaled

    def __post_init__(self) -> None:
        _scalar(self.struct, self.name, self.item)  # a renamed field fails at import


def _scale_words(scale: float) -> str:
    if scale == 1:
        return ""
    if scale > 1:
        return f" * {scale:g}"
    inverse = round(1 / scale)
    if inverse >= 1024 and inverse & (inverse - 1) == 0:
        return f" / 2**{inverse.bit_length() - 1}"
    return f" / {inverse}"


class MetricSpec(msgspec.Struct, kw_only=True, frozen=True):
    """One exported metric: its name and type as Prometheus sees them, the unit of its value,
    where the value comes from, and how often the console reads it.

    A value is either one field (``field``: both sides convert it from this table alone) or
    computed by a rule (``rule``: said here in words, coded once on each side, with the
    fields it reads in ``uses`` so that the table still accounts for every field)."""

    name: str
    kind: MetricKind
    help: str
    unit: str  # MHz, C, W, mJ, %, MiB, bytes, bytes/s, s, count, bool (0 or 1), bitmask
    scope: MetricScope
    field: FieldRef | None = None
    #: What a value that is not one field is computed from, and how.
    rule: str = ""
    #: The fields (``Struct.field``) a rule reads.
    uses: tuple[str, ...] = ()
    #: Words added to the source (a unit's origin).
    note: str = ""
    #: How often the console reads it; None: it does not (nothing it shows needs it).
    read: ReadCadence | None = None
    #: Read on the console's first poll, before the rest: what the table and the alerts
    #: compare against (``fast`` ones always are).
    first: bool = False
    #: Labels beyond ``GPU_LABELS`` / ``NODE_LABELS`` (an info metric's fields).
    extra_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.field is None) == (not self.rule):
            raise AssertionError(f"{self.name}: a field or a rule, exactly one")

    @property
    def labels(self) -> tuple[str, ...]:
        return (GPU_LABELS if self.scope == "gpu" else NODE_LABELS) + self.extra_labels

    @property
    def dcgm(self) -> bool:
        """Named as dcgm-exporter names the same reading."""
        return self.name.startswith("DCGM_FI_")

    @property
    def source(self) -> str:
        """Where the value comes from, in words (``GpuReading.power_mw / 1000``)."""
        text = self.rule if self.field is None else self.field.path + _scale_words(self.field.scale)
        return f"{text} ({self.note})" if self.note else text


def _gpu(
    name: str,
    kind: MetricKind,
    unit: str,
    source: FieldRef | str,
    help: str,
    *,
    read: ReadCadence | None,
    uses: tuple[str, ...] = (),
    note: str = "",
    first: bool = False,
    extra: tuple[str, ...] = (),
) -> MetricSpec:
    return MetricSpec(
        name=name, kind=kind, help=help, unit=unit, scope="gpu",
        field=source if isinstance(source, FieldRef) else None,
        rule=source if isinstance(source, str) else "",
        uses=uses, note=note, read=read, first=first, extra_labels=extra,
    )  # fmt: skip


def _node(
    name: str,
    kind: MetricKind,
    unit: str,
    source: FieldRef | str,
    help: str,
    *,
    read: ReadCadence | None,
    uses: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> MetricSpec:
    return MetricSpec(
        name=name, kind=kind, help=help, unit=unit, scope="node",
        field=source if isinstance(source, FieldRef) else None,
        rule=source if isinstance(source, str) else "",
        uses=uses, read=read, extra_labels=extra,
    )  # fmt: skip


def _r(name: str, scale: float = 1) -> FieldRef:
    return FieldRef(struct="GpuReading", name=name, scale=scale)


def _i(name: str, scale: float = 1) -> FieldRef:
    return FieldRef(struct="GpuInfo", name=name, scale=scale)


def _h(name: str, item: int | None = None) -> FieldRef:
    return FieldRef(struct="HostReading", name=name, item=item)


METRICS: Final[tuple[MetricSpec, ...]] = (
    # -- per GPU, dcgm-exporter's names (etc/default-counters.csv and DCGM's field list) --------
    _gpu("DCGM_FI_DEV_SM_CLOCK", "gauge", "MHz", _r("sm_clock_mhz"),
         "SM clock frequency (in MHz).", read="slow"),
    _gpu("DCGM_FI_DEV_MEM_CLOCK", "gauge", "MHz", _r("mem_clock_mhz"),
         "Memory clock frequency (in MHz).", read="slow"),
    _gpu("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "C", _r("temp_mem_c"),
         "Memory temperature (in C).", read="slow"),
    _gpu("DCGM_FI_DEV_GPU_TEMP", "gauge", "C", _r("temp_c"), "GPU temperature (in C).",
         read="fast"),
    _gpu("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", _r("power_mw", 1 / 1000),
         "Power draw (in W).", read="fast"),
    _gpu("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "mJ", _r("energy_mj"),
         "Total energy consumption since boot (in mJ).", read="slow"),
    _gpu("DCGM_FI_DEV_GPU_UTIL", "gauge", "%", _r("util_gpu"), "GPU utilization (in %).",
         read="fast"),
    _gpu("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "%", _r("util_mem"),
         "Memory utilization (in %).", read="slow"),
    _gpu("DCGM_FI_DEV_XID_ERRORS", "gauge", "count", "Event(kind='xid').xid, newest per GPU",
         "Value of the last XID error encountered (0: none since the agent started).",
         read="alerting"),
    _gpu("DCGM_FI_DEV_FB_FREE", "gauge", "MiB",
         "(GpuReading.mem_total - mem_used - mem_reserved) / 2**20",
         "Framebuffer memory free (in MiB).", read=None,
         uses=("GpuReading.mem_total", "GpuReading.mem_used", "GpuReading.mem_reserved")),
    _gpu("DCGM_FI_DEV_FB_USED", "gauge", "MiB", _r("mem_used", 1 / MIB),
         "Framebuffer memory used (in MiB).", read="fast"),
    _gpu("DCGM_FI_DEV_FB_TOTAL", "gauge", "MiB", _r("mem_total", 1 / MIB),
         "Total framebuffer memory (in MiB).", read="static", first=True),
    _gpu("DCGM_FI_DEV_FB_RESERVED", "gauge", "MiB", _r("mem_reserved", 1 / MIB),
         "Framebuffer memory reserved by the driver (in MiB).", read="slow"),
    _gpu("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "count", _r("ecc_uncorrected_volatile"),
         "Total number of double-bit volatile ECC errors.", read="alerting"),
    _gpu("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "count",
         _r("remapped_uncorrectable"), "Number of remapped rows for uncorrectable errors",
         read="slow"),
    _gpu("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "count", _r("remapped_correctable"),
         "Number of remapped rows for correctable errors", read="slow"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "bool", _r("remap_failure"),
         "Whether remapping of rows has failed", read="slow"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "bool", _r("remap_pending"),
         "Whether remapping of rows is pending (the GPU needs a reset)", read="alerting"),
    _gpu("DCGM_FI_DEV_PSTATE", "gauge", "count", _r("pstate"),
         "Performance state (P-State) 0-15. 0=highest", read="slow"),
    _gpu("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "bitmask",
         "GpuReading.clock_reasons, encoded as NVML's nvmlClocksEventReason* bit mask",
         "Current clocks event reasons (bit mask of NVML's nvmlClocksEventReason* values).",
         read=None, uses=("GpuReading.clock_reasons",)),
    # -- per GPU, ours ----------------------------------------------------------------------------
    _gpu("gpufleet_gpu_lost", "gauge", "bool",
         "GpuReading.lost; when 1, the GPU's other readings are left out",
         "1 when the GPU stopped answering the driver (GpuIsLost); its readings are then absent.",
         read="fast", uses=("GpuReading.lost",)),
    _gpu("gpufleet_gpu_clock_event_active", "gauge", "bool",
         "GpuReading.clock_reasons, one series per reason present",
         "1 for each clocks event reason holding the GPU's clocks back, by name "
         "(sw_power_cap is normal under load; the thermal ones and hw_slowdown are alarms).",
         read="fast", uses=("GpuReading.clock_reasons",), extra=("reason",)),
    _gpu("gpufleet_gpu_last_xid_timestamp_seconds", "gauge", "s", "Event(kind='xid').ts",
         "Unix time (agent's clock) of the XID in DCGM_FI_DEV_XID_ERRORS; absent if none.",
         read="fast"),
    _gpu("gpufleet_gpu_processes", "gauge", "count", "len(GpuReading.processes)",
         "Processes the driver lists on the GPU (0 does not mean idle: containers hide theirs).",
         read=None, uses=("GpuReading.processes",)),
    _gpu("gpufleet_gpu_pcie_link_width", "gauge", "count", _r("pcie_width"),
         "Current PCIe link width (lanes).", read="slow"),
    _gpu("gpufleet_gpu_pcie_link_width_max", "gauge", "count", _i("pcie_max_width"),
         "Maximum PCIe link width of the GPU (lanes).", read="static"),
    _gpu("gpufleet_gpu_pcie_tx_bytes_per_second", "gauge", "bytes/s", _r("pcie_tx_kbs", 1024),
         "PCIe transmit throughput over NVML's last sample window (bytes per second).",
         read="slow", note="NVML's KB/s"),
    _gpu("gpufleet_gpu_pcie_rx_bytes_per_second", "gauge", "bytes/s", _r("pcie_rx_kbs", 1024),
         "PCIe receive throughput over NVML's last sample window (bytes per second).",
         read="slow", note="NVML's KB/s"),
    _gpu("gpufleet_gpu_temperature_slowdown_celsius", "gauge", "C", _i("temp_slowdown_c"),
         "Temperature at which the GPU slows its clocks down (in C).", read="static",
         first=True),
    _gpu("gpufleet_gpu_temperature_shutdown_celsius", "gauge", "C", _i("temp_shutdown_c"),
         "Temperature at which the GPU shuts down (in C).", read="static"),
    _gpu("gpufleet_gpu_memory_temperature_max_celsius", "gauge", "C", _i("temp_mem_max_c"),
         "Maximum operating temperature of the GPU's memory (in C).", read="static"),
    _gpu("gpufleet_gpu_power_limit_watts", "gauge", "W", _i("power_limit_mw", 1 / 1000),
         "Enforced power limit (in W).", read="static"),
    # -- per node ---------------------------------------------------------------------------------
    _node("gpufleet_node_state_info", "gauge", "bool", "NodeState: state, pool, reason, who",
          "Always 1: the node's ops state (schedulable, draining, drained) in its labels, with "
          "the reason and who set it.", read="fast",
          uses=("NodeState.state", "NodeState.pool", "NodeState.reason", "NodeState.who"),
          extra=("reason", "who")),
    _node("gpufleet_node_state_since_timestamp_seconds", "gauge", "s",
          FieldRef(struct="NodeState", name="since"),
          "Unix time (agent's clock) the ops state last changed.", read="fast"),
    _node("gpufleet_node_gpus", "gauge", "count", "len(Inventory.gpus)",
          "GPUs the agent found on the node.", read=None),
    _node("gpufleet_sample_timestamp_seconds", "gauge", "s", "Sample.ts",
          "Unix time (agent's clock) of the newest sample: its age is the data's age.",
          read="fast"),
    _node("gpufleet_sample_interval_seconds", "gauge", "s", "Hello.interval_s",
          "Seconds between the agent's samples.", read="static"),
    _node("gpufleet_sample_fresh", "gauge", "bool", "Sample.ts within STALE_INTERVALS intervals",
          "1 while the newest sample is current; 0 when sampling stalled (readings withheld).",
          read="fast"),
    _node("gpufleet_agent_info", "gauge", "bool",
          "Hello.software, Inventory (restart_targets comma-joined)",
          "Always 1: the agent's version, protocol, GPU backend, driver and scheduler, and the "
          "restart targets it allows (comma-separated).", read="static",
          extra=("version", "protocol", "backend", "driver_version", "cuda_version", "scheduler",
                 "restart_targets")),
    _node("gpufleet_inventory_timestamp_seconds", "gauge", "s",
          "when the agent started or its GPU inventory last changed (a GPU came back)",
          "Unix time (agent's clock) of the static facts served (GPU identities and limits, "
          "agent info): a new value means they may have changed.", read="fast"),
    _node("gpufleet_host_cpu_utilization_percent", "gauge", "%", _h("cpu_percent"),
          "Host CPU utilization over the last interval, all cores (in %).", read="fast"),
    _node("gpufleet_host_load1", "gauge", "count", _h("load", 0), "1-minute load average.",
          read="fast"),
    _node("gpufleet_host_load5", "gauge", "count", _h("load", 1), "5-minute load average.",
          read="fast"),
    _node("gpufleet_host_load15", "gauge", "count", _h("load", 2), "15-minute load average.",
          read="fast"),
    _node("gpufleet_host_memory_total_bytes", "gauge", "bytes", _h("mem_total"),
          "Host memory (bytes).", read="fast"),
    _node("gpufleet_host_memory_used_bytes", "gauge", "bytes", _h("mem_used"),
          "Host memory used (bytes).", read="fast"),
    _node("gpufleet_host_memory_available_bytes", "gauge", "bytes", _h("mem_available"),
          "Host memory available to start new work (bytes).", read="fast"),
    _node("gpufleet_host_swap_total_bytes", "gauge", "bytes", _h("swap_total"),
          "Swap space (bytes).", read="slow"),
    _node("gpufleet_host_swap_used_bytes", "gauge", "bytes", _h("swap_used"),
          "Swap space used (bytes).", read="slow"),
    _node("gpufleet_host_disk_read_bytes_per_second", "gauge", "bytes/s", _h("disk_read_bps"),
          "Disk read rate over the last slow interval.", read="slow"),
    _node("gpufleet_host_disk_write_bytes_per_second", "gauge", "bytes/s", _h("disk_write_bps"),
          "Disk write rate over the last slow interval.", read="slow"),
    _node("gpufleet_host_network_receive_bytes_per_second", "gauge", "bytes/s", _h("net_rx_bps"),
          "Network receive rate over the last slow interval.", read="slow"),
    _node("gpufleet_host_network_transmit_bytes_per_second", "gauge", "bytes/s",
          _h("net_tx_bps"), "Network transmit rate over the last slow interval.", read="slow"),
    _node("gpufleet_host_uptime_seconds", "gauge", "s", _h("uptime_s"),
          "Seconds since the host booted.", read="slow"),
)  # fmt: skip

#: The table by metric name.
METRIC_SPECS: Final[dict[str, MetricSpec]] = {m.name: m for m in METRICS}

#: The labels taken from a reading struct's field (the rest are the agent's own: ``device``,
#: ``Hostname``, an info metric's). The console reads them back (GPU identities, the ops state).
LABEL_FIELDS: Final[dict[str, str]] = {
    "gpu": "GpuInfo.index",
    "UUID": "GpuInfo.uuid",
    "pci_bus_id": "GpuInfo.pci_bus_id",
    "modelName": "GpuInfo.name",
    "pool": "NodeState.pool",
    "state": "NodeState.state",
    "reason": "NodeState.reason",
    "who": "NodeState.who",
}

#: Fields of the reading structs that no metric carries, and why: with the table and
#: ``LABEL_FIELDS``, every field is accounted for (tests/unit/test_metrics_table.py), so that a
#: field added to a struct is either exported or left out on purpose.
NOT_EXPORTED: Final[dict[str, str]] = {
    "GpuReading.index": "the gpu label",
    "GpuInfo.serial": "on the wire's inventory; /metrics names a GPU by UUID and PCI bus id",
    "GpuInfo.memory_total": "DCGM_FI_DEV_FB_TOTAL carries GpuReading.mem_total, the same size",
    "GpuInfo.mig_enabled": "MIG is not modelled on /metrics (no per-instance series)",
    "GpuInfo.persistence_mode": "a configuration fact on the wire's inventory; nothing read "
    "from Prometheus shows it",
    "GpuInfo.ecc_enabled": "a configuration fact on the wire's inventory; nothing read from "
    "Prometheus shows it",
    "GpuInfo.pcie_max_gen": "on the wire's inventory; nothing read from Prometheus shows it",
    "GpuInfo.sm_clock_max_mhz": "on the wire's inventory; nothing read from Prometheus shows it",
    "HostReading.cpu_per_core": "one series per core would multiply a node's series by its cores",
    "HostReading.boot_id": "a string that changes on reboot; uptime says the same as a number",
    "NodeState.deadline": "the agent's own drain bookkeeping, not shown from Prometheus",
    "NodeState.resume_after_boot": "the agent's own restart bookkeeping",
}
