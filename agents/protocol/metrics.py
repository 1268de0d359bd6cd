"""Prometheus exposition (issue 7)."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

# What an agent with ``[metrics] listen`` set serves on ``/metrics``, and what the console's
# Prometheus source reads back: one table, so the two sides cannot drift. Readings dcgm-exporter
# also exports keep its names, units and labels (``DCGM_FI_DEV_*``), so that Grafana dashboards
# and alert rules written for it work unchanged; ours, and any of ours whose meaning differs from
# DCGM's (PCIe throughput: a rate here, a cumulative KB counter there), are ``gpufleet_*``.
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


class MetricSpec(msgspec.Struct, kw_only=True, frozen=True):
    """One exported metric: its name and type as Prometheus sees them, the unit of its value,
    and the reading it is computed from (so a reader of the table knows what a value means)."""

    name: str
    kind: MetricKind
    help: str
    unit: str  # MHz, C, W, mJ, %, MiB, bytes, bytes/s, s, count, bool (0 or 1), bitmask
    source: str  # the protocol field(s) it comes from, and any conversion
    scope: MetricScope
    #: Labels beyond ``GPU_LABELS`` / ``NODE_LABELS`` (an info metric's fields).
    extra_labels: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return (GPU_LABELS if self.scope == "gpu" else NODE_LABELS) + self.extra_labels

    @property
    def dcgm(self) -> bool:
        """Named as dcgm-exporter names the same reading."""
        return self.name.startswith("DCGM_FI_")


def _gpu(name: str, kind: MetricKind, unit: str, source: str, help: str) -> MetricSpec:
    return MetricSpec(name=name, kind=kind, help=help, unit=unit, source=source, scope="gpu")


def _node(
    name: str, kind: MetricKind, unit: str, source: str, help: str, extra: tuple[str, ...] = ()
) -> MetricSpec:
    return MetricSpec(
        name=name, kind=kind, help=help, unit=unit, source=source, scope="node", extra_labels=extra
    )


METRICS: Final[tuple[MetricSpec, ...]] = (
    # -- per GPU, dcgm-exporter's names (etc/default-counters.csv and DCGM's field list) --------
    _gpu("DCGM_FI_DEV_SM_CLOCK", "gauge", "MHz", "GpuReading.sm_clock_mhz",
         "SM clock frequency (in MHz)."),
    _gpu("DCGM_FI_DEV_MEM_CLOCK", "gauge", "MHz", "GpuReading.mem_clock_mhz",
         "Memory clock frequency (in MHz)."),
    _gpu("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "C", "GpuReading.temp_mem_c",
         "Memory temperature (in C)."),
    _gpu("DCGM_FI_DEV_GPU_TEMP", "gauge", "C", "GpuReading.temp_c", "GPU temperature (in C)."),
    _gpu("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", "GpuReading.power_mw / 1000",
         "Power draw (in W)."),
    _gpu("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "mJ", "GpuReading.energy_mj",
         "Total energy consumption since boot (in mJ)."),
    _gpu("DCGM_FI_DEV_GPU_UTIL", "gauge", "%", "GpuReading.util_gpu", "GPU utilization (in %)."),
    _gpu("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "%", "GpuReading.util_mem",
         "Memory utilization (in %)."),
    _gpu("DCGM_FI_DEV_XID_ERRORS", "gauge", "count", "Event(kind='xid').xid, newest per GPU",
         "Value of the last XID error encountered (0: none since the agent started)."),
    _gpu("DCGM_FI_DEV_FB_FREE", "gauge", "MiB",
         "(GpuReading.mem_total - mem_used - mem_reserved) / 2**20",
         "Framebuffer memory free (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_USED", "gauge", "MiB", "GpuReading.mem_used / 2**20",
         "Framebuffer memory used (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_TOTAL", "gauge", "MiB", "GpuReading.mem_total / 2**20",
         "Total framebuffer memory (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_RESERVED", "gauge", "MiB", "GpuReading.mem_reserved / 2**20",
         "Framebuffer memory reserved by the driver (in MiB)."),
    _gpu("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "count",
         "GpuReading.ecc_uncorrected_volatile",
         "Total number of double-bit volatile ECC errors."),
    _gpu("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "count",
         "GpuReading.remapped_uncorrectable",
         "Number of remapped rows for uncorrectable errors"),
    _gpu("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "count",
         "GpuReading.remapped_correctable", "Number of remapped rows for correctable errors"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "bool", "GpuReading.remap_failure",
         "Whether remapping of rows has failed"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "bool", "GpuReading.remap_pending",
         "Whether remapping of rows is pending (the GPU needs a reset)"),
    _gpu("DCGM_FI_DEV_PSTATE", "gauge", "count", "GpuReading.pstate",
         "Performance state (P-State) 0-15. 0=highest"),
    _gpu("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "bitmask",
         "GpuReading.clock_reasons, encoded as NVML's nvmlClocksEventReason* bit mask",
         "Current clocks event reasons (bit mask of NVML's nvmlClocksEventReason* values)."),
    # -- per GPU, ours ----------------------------------------------------------------------------
    _gpu("gpufleet_gpu_lost", "gauge", "bool", "GpuReading.lost",
         "1 when the GPU stopped answering the driver (GpuIsLost); its readings are then absent."),
    MetricSpec(
        name="gpufleet_gpu_clock_event_active", kind="gauge", unit="bool", scope="gpu",
        source="GpuReading.clock_reasons, one series per reason present",
        help="1 for each clocks event reason holding the GPU's clocks back, by name "
        "(sw_power_cap is normal under load; the thermal ones and hw_slowdown are alarms).",
        extra_labels=("reason",),
    ),
    _gpu("gpufleet_gpu_last_xid_timestamp_seconds", "gauge", "s", "Event(kind='xid').ts",
         "Unix time (agent's clock) of the XID in DCGM_FI_DEV_XID_ERRORS; absent if none."),
    _gpu("gpufleet_gpu_processes", "gauge", "count", "len(GpuReading.processes)",
         "Processes the driver lists on the GPU (0 does not mean idle: containers hide theirs)."),
    _gpu("gpufleet_gpu_pcie_link_width", "gauge", "count", "GpuReading.pcie_width",
         "Current PCIe link width (lanes)."),
    _gpu("gpufleet_gpu_pcie_link_width_max", "gauge", "count", "GpuInfo.pcie_max_width",
         "Maximum PCIe link width of the GPU (lanes)."),
    _gpu("gpufleet_gpu_pcie_tx_bytes_per_second", "gauge", "bytes/s",
         "GpuReading.pcie_tx_kbs * 1024 (NVML's KB/s)",
         "PCIe transmit throughput over NVML's last sample window (bytes per second)."),
    _gpu("gpufleet_gpu_pcie_rx_bytes_per_second", "gauge", "bytes/s",
         "GpuReading.pcie_rx_kbs * 1024 (NVML's KB/s)",
         "PCIe receive throughput over NVML's last sample window (bytes per second)."),
    _gpu("gpufleet_gpu_temperature_slowdown_celsius", "gauge", "C", "GpuInfo.temp_slowdown_c",
         "Temperature at which the GPU slows its clocks down (in C)."),
    _gpu("gpufleet_gpu_temperature_shutdown_celsius", "gauge", "C", "GpuInfo.temp_shutdown_c",
         "Temperature at which the GPU shuts down (in C)."),
    _gpu("gpufleet_gpu_memory_temperature_max_celsius", "gauge", "C", "GpuInfo.temp_mem_max_c",
         "Maximum operating temperature of the GPU's memory (in C)."),
    _gpu("gpufleet_gpu_power_limit_watts", "gauge", "W", "GpuInfo.power_limit_mw / 1000",
         "Enforced power limit (in W)."),
    # -- per node ---------------------------------------------------------------------------------
    _node("gpufleet_node_state_info", "gauge", "bool", "NodeState: state, pool, reason, who",
          "Always 1: the node's ops state (schedulable, draining, drained) in its labels, with "
          "the reason and who set it.", ("reason", "who")),
    _node("gpufleet_node_state_since_timestamp_seconds", "gauge", "s", "NodeState.since",
          "Unix time (agent's clock) the ops state last changed."),
    _node("gpufleet_node_gpus", "gauge", "count", "len(Inventory.gpus)",
          "GPUs the agent found on the node."),
    _node("gpufleet_sample_timestamp_seconds", "gauge", "s", "Sample.ts",
          "Unix time (agent's clock) of the newest sample: its age is the data's age."),
    _node("gpufleet_sample_interval_seconds", "gauge", "s", "Hello.interval_s",
          "Seconds between the agent's samples."),
    _node("gpufleet_sample_fresh", "gauge", "bool", "Sample.ts within STALE_INTERVALS intervals",
          "1 while the newest sample is current; 0 when sampling stalled (readings withheld)."),
    _node("gpufleet_agent_info", "gauge", "bool",
          "Hello.software, Inventory (restart_targets comma-joined)",
          "Always 1: the agent's version, protocol, GPU backend, driver and scheduler, and the "
          "restart targets it allows (comma-separated).",
          ("version", "protocol", "backend", "driver_version", "cuda_version", "scheduler",
           "restart_targets")),
    _node("gpufleet_inventory_timestamp_seconds", "gauge", "s",
          "when the agent started or its GPU inventory last changed (a GPU came back)",
          "Unix time (agent's clock) of the static facts served (GPU identities and limits, "
          "agent info): a new value means they may have changed."),
    _node("gpufleet_host_cpu_utilization_percent", "gauge", "%", "HostReading.cpu_percent",
          "Host CPU utilization over the last interval, all cores (in %)."),
    _node("gpufleet_host_load1", "gauge", "count", "HostReading.load[0]", "1-minute load average."),
    _node("gpufleet_host_load5", "gauge", "count", "HostReading.load[1]", "5-minute load average."),
    _node("gpufleet_host_load15", "gauge", "count", "HostReading.load[2]",
          "15-minute load average."),
    _node("gpufleet_host_memory_total_bytes", "gauge", "bytes", "HostReading.mem_total",
          "Host memory (bytes)."),
    _node("gpufleet_host_memory_used_bytes", "gauge", "bytes", "HostReading.mem_used",
          "Host memory used (bytes)."),
    _node("gpufleet_host_memory_available_bytes", "gauge", "bytes", "HostReading.mem_available",
          "Host memory available to start new work (bytes)."),
    _node("gpufleet_host_swap_total_bytes", "gauge", "bytes", "HostReading.swap_total",
          "Swap space (bytes)."),
    _node("gpufleet_host_swap_used_bytes", "gauge", "bytes", "HostReading.swap_used",
          "Swap space used (bytes)."),
    _node("gpufleet_host_disk_read_bytes_per_second", "gauge", "bytes/s",
          "HostReading.disk_read_bps", "Disk read rate over the last slow interval."),
    _node("gpufleet_host_disk_write_bytes_per_second", "gauge", "bytes/s",
          "HostReading.disk_write_bps", "Disk write rate over the last slow interval."),
    _node("gpufleet_host_network_receive_bytes_per_second", "gauge", "bytes/s",
          "HostReading.net_rx_bps", "Network receive rate over the last slow interval."),
    _node("gpufleet_host_network_transmit_bytes_per_second", "gauge", "bytes/s",
          "HostReading.net_tx_bps", "Network transmit rate over the last slow interval."),
    _node("gpufleet_host_uptime_seconds", "gauge", "s", "HostReading.uptime_s",
          "Seconds since the host booted."),
)  # fmt: skip

#: The table by metric name.
METRIC_SPECS: Final[dict[str, MetricSpec]] = {m.name: m for m in METRICS}
