"""The Prometheus exposition table in agents.protocol: the contract the agent's exporter and the
console's Prometheus source both follow, checked on its own so a bad edit fails here first."""

from __future__ import annotations

import re

from agents.protocol import (
    GPU_LABELS,
    METRIC_SPECS,
    METRICS,
    NODE_LABELS,
    GpuInfo,
    GpuReading,
    HostReading,
    NodeState,
)

# Prometheus' data model: metric names and label names (labels starting "__" are reserved).
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# What dcgm-exporter exports by default (its etc/default-counters.csv) and we can read: these must
# keep dcgm's names so existing dashboards work.
DCGM_DEFAULTS = {
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "MHz"),
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", "MHz"),
    "DCGM_FI_DEV_MEMORY_TEMP": ("gauge", "C"),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "C"),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "W"),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "mJ"),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "%"),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", "%"),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "count"),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "MiB"),
    "DCGM_FI_DEV_FB_USED": ("gauge", "MiB"),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("counter", "count"),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("counter", "count"),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", "bool"),
}


def test_names_are_valid_and_unique() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names)) == len(METRIC_SPECS)
    for name in names:
        assert METRIC_NAME.fullmatch(name), name
        assert name.startswith(("DCGM_FI_DEV_", "gpufleet_")), name


def test_labels_are_valid_and_unique_per_metric() -> None:
    for m in METRICS:
        assert len(m.labels) == len(set(m.labels)), m.name
        for label in m.labels:
            assert LABEL_NAME.fullmatch(label) and not label.startswith("__"), (m.name, label)


def test_dcgm_labels_in_dcgm_exporters_spelling() -> None:
    """dcgm-exporter's GPU template: gpu, UUID, pci_bus_id, device, modelName, Hostname."""
    assert GPU_LABELS[:6] == ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")
    assert {"pool", "state"} <= set(GPU_LABELS)
    assert {"Hostname", "pool", "state"} == set(NODE_LABELS)


def test_dcgm_defaults_kept_with_their_type_and_unit() -> None:
    for name, (kind, unit) in DCGM_DEFAULTS.items():
        spec = METRIC_SPECS[name]
        assert (spec.kind, spec.unit, spec.scope) == (kind, unit, "gpu"), name
        assert spec.dcgm


def test_rates_are_not_dressed_as_dcgms_counters() -> None:
    """dcgm's PCIe TX/RX are cumulative KB counters; ours are rates, so not under its name."""
    assert "DCGM_FI_DEV_PCIE_TX_THROUGHPUT" not in METRIC_SPECS
    assert "DCGM_FI_DEV_PCIE_RX_THROUGHPUT" not in METRIC_SPECS
    assert METRIC_SPECS["gpufleet_gpu_pcie_tx_bytes_per_second"].kind == "gauge"


def test_counters_of_ours_end_in_total_or_are_dcgms() -> None:
    """Our own counters follow Prometheus' naming; dcgm's keep theirs (no _total)."""
    for m in METRICS:
        if m.kind == "counter" and not m.dcgm:
            assert m.name.endswith("_total"), m.name


def test_every_source_names_a_protocol_field() -> None:
    """The table says where each value comes from; a renamed field must not leave it lying."""
    fields = {
        "GpuReading": set(GpuReading.__struct_fields__),
        "GpuInfo": set(GpuInfo.__struct_fields__),
        "HostReading": set(HostReading.__struct_fields__),
        "NodeState": set(NodeState.__struct_fields__),
    }
    for m in METRICS:
        for struct, field in re.findall(
            r"\b(GpuReading|GpuInfo|HostReading|NodeState)\.(\w+)", m.source
        ):
            assert field in fields[struct], (m.name, f"{struct}.{field}")
