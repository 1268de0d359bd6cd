"""The Prometheus exposition table in agents.protocol: the contract the agent's exporter and the
console's Prometheus source both follow, checked on its own so a bad edit fails here first."""

from __future__ import annotations

import re

import msgspec
import pytest

from agents.protocol import (
    GPU_LABELS,
    METRIC_SPECS,
    METRICS,
    MIB,
    NODE_LABELS,
    GpuInfo,
    GpuReading,
    HostReading,
    NodeState,
)
from agents.protocol.metrics import LABEL_FIELDS, NOT_EXPORTED, FieldRef, MetricSpec

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


STRUCT_FIELDS: dict[str, type[msgspec.Struct]] = {
    "GpuReading": GpuReading,
    "GpuInfo": GpuInfo,
    "HostReading": HostReading,
    "NodeState": NodeState,
}


def _real(path: str) -> bool:
    struct, _, name = path.partition(".")
    return struct in STRUCT_FIELDS and name in STRUCT_FIELDS[struct].__struct_fields__


def test_every_reading_field_is_exported_or_left_out_with_a_reason() -> None:
    """A field added to a reading struct must be exported (the table or a label) or named in
    NOT_EXPORTED with why; a name in any of them must be a real field."""
    as_field = {m.field.path.partition("[")[0] for m in METRICS if m.field is not None}
    by_rule = {path for m in METRICS for path in m.uses}
    as_label = set(LABEL_FIELDS.values())
    left_out = set(NOT_EXPORTED)
    for path in as_field | by_rule | as_label | left_out:
        assert _real(path), path
    assert not left_out & (as_field | by_rule | as_label), "exported and left out at once"
    assert all(NOT_EXPORTED.values()), "each left out field says why"
    every = {f"{s}.{f}" for s, cls in STRUCT_FIELDS.items() for f in cls.__struct_fields__}
    assert every - (as_field | by_rule | as_label | left_out) == set()


def test_a_metric_is_one_field_or_one_rule() -> None:
    for m in METRICS:
        assert (m.field is None) != (m.rule == ""), m.name
        assert not (m.field is not None and m.uses), m.name  # a field's use is its field
    with pytest.raises(AssertionError, match="exactly one"):
        MetricSpec(name="x", kind="gauge", help="", unit="count", scope="gpu")
    with pytest.raises(AssertionError, match="no field 'util'"):
        FieldRef(struct="GpuReading", name="util")


# Each field's unit is in its name (design.md: units named in the field) or known here; the
# scale must take it to the metric's unit. Written out, not read from the table.
#: Field name ending -> its unit; then, for a name without one, its start.
SUFFIX_UNITS = {"_mw": "mW", "_kbs": "KB/s", "_mj": "mJ", "_c": "C", "_mhz": "MHz",
                "_bps": "bytes/s", "_s": "s", "_percent": "%"}  # fmt: skip
PREFIX_UNITS = {"mem_": "bytes", "swap_": "bytes", "util_": "%"}
SCALES = {("mW", "W"): 1 / 1000, ("KB/s", "bytes/s"): 1024, ("bytes", "MiB"): 1 / MIB}


def _unit(field: str) -> str | None:
    for end, unit in SUFFIX_UNITS.items():
        if field.endswith(end):
            return unit
    return next((u for start, u in PREFIX_UNITS.items() if field.startswith(start)), None)


def test_each_scale_takes_the_fields_unit_to_the_metrics() -> None:
    for m in METRICS:
        if m.field is None:
            continue
        unit = _unit(m.field.name)
        if unit is None:  # a count, a flag, a load average, a time: no unit to convert
            assert m.field.scale == 1, m.name
        elif (unit, m.unit) in SCALES:
            assert m.field.scale == SCALES[unit, m.unit], m.name
        else:
            assert (m.field.scale, unit) == (1, m.unit), m.name


def test_sources_read_as_before() -> None:
    """``source`` is made from the field and its scale, and still reads as a person wrote it."""
    assert METRIC_SPECS["DCGM_FI_DEV_POWER_USAGE"].source == "GpuReading.power_mw / 1000"
    assert METRIC_SPECS["DCGM_FI_DEV_FB_USED"].source == "GpuReading.mem_used / 2**20"
    assert (
        METRIC_SPECS["gpufleet_gpu_pcie_tx_bytes_per_second"].source
        == "GpuReading.pcie_tx_kbs * 1024 (NVML's KB/s)"
    )
    assert METRIC_SPECS["gpufleet_host_load5"].source == "HostReading.load[1]"
    assert METRIC_SPECS["gpufleet_node_gpus"].source == "len(Inventory.gpus)"


def test_the_console_reads_what_it_shows_on_a_cadence() -> None:
    """The first poll's static reads are what the table and alerts compare against; an
    alerting read is the console's own non-zero filter, so only for what raises alerts."""
    firsts = {m.name for m in METRICS if m.first}
    assert firsts == {"DCGM_FI_DEV_FB_TOTAL", "gpufleet_gpu_temperature_slowdown_celsius"}
    assert all(METRIC_SPECS[n].read == "static" for n in firsts)
    assert {m.name for m in METRICS if m.read == "alerting"} == {
        "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ROW_REMAP_PENDING"
    }  # fmt: skip
