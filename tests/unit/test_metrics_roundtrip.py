"""Every field of the metric table, there and back: the agent's exporter renders a sample as
``/metrics`` text, a small PromQL evaluator answers each of the console's queries
(``console.sources.prometheus.view.QUERIES``) over that text as Prometheus would after one scrape,
and the console's decoding (``nodes_from``) must give back the very values the agent held: in the
field's own unit and type, a 0 as 0 and an absent value as absent.

Both sides derive their conversions from ``agents.protocol.metrics.METRICS``; this is what
shows the derivations agree, for every field, including those no other test reads back. The
exported numbers themselves are checked against units written out here by hand, so that a wrong
scale cannot hide behind being wrong on both sides alike.
"""

from __future__ import annotations

import re
from typing import Any, Final, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.export.metrics import MetricsCollector, render
from agents.gpu.base import GpuInventory
from agents.protocol import (
    MIB,
    Event,
    GpuInfo,
    GpuProcess,
    GpuReading,
    HostReading,
    NodeState,
    Sample,
)
from agents.protocol.metrics import LABEL_FIELDS, METRICS, STRUCTS, FieldRef, FieldStruct
from console.sources.prometheus.client import Vector
from console.sources.prometheus.view import QUERIES, PromNode, nodes_from

NOW: Final = 1_800_000_000.0
SCRAPED: Final = NOW + 0.25  # Prometheus' clock when it scraped the page
NODE: Final = "gpu01"

# -- the page as Prometheus stores it, and the console's queries answered over it -------------

_LINE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_QUERY = re.compile(r"max by \(([\w, ]+)\) \((timestamp\()?(\w+)\)?\)( > 0)?")

Stored = list[tuple[str, dict[str, str], float]]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def scrape(text: str) -> Stored:
    """The page's series; a label with an empty value is no label, as in Prometheus."""
    out: Stored = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = _LINE.fullmatch(line)
            assert m, line
            labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group(2)) if v}
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def evaluate(expr: str, stored: Stored) -> Vector:
    """The shapes of query the console asks, evaluated as Prometheus does: ``max by (L)
    (metric)``, optionally ``> 0``, and ``timestamp(metric)`` (the scrape's time). Any other
    shape fails, so that a new kind of query cannot pass here unevaluated."""
    m = _QUERY.fullmatch(expr)
    assert m, f"a query this evaluator does not know: {expr}"
    by, stamp, name, positive = m.group(1).split(", "), m.group(2), m.group(3), m.group(4)
    groups: dict[tuple[tuple[str, str], ...], float] = {}
    for metric, labels, value in stored:
        if metric != name:
            continue
        key = tuple((k, labels[k]) for k in by if k in labels)
        v = SCRAPED if stamp else value
        groups[key] = max(groups.get(key, v), v)
    series = [(dict(k), v) for k, v in groups.items() if not positive or v > 0]
    return Vector(at=SCRAPED, series=series)


def round_trip(
    sample: Sample, infos: list[GpuInfo], state: NodeState, events: tuple[Event, ...] = ()
) -> tuple[PromNode, Stored]:
    inv = GpuInventory(backend="nvml", gpus=infos, driver_version="580.159.04")
    collector = MetricsCollector(
        node=NODE, latest=lambda: sample, gpus=lambda: inv, state=lambda: state,
        interval=2.0, scheduler="slurm", restart_targets=("node", "gpu"), clock=lambda: NOW,
    )  # fmt: skip
    for event in events:
        collector.saw_event(event)
    stored = scrape(render(collector.collect()).decode())
    nodes = nodes_from({q.key: evaluate(q.expr, stored) for q in QUERIES})
    assert list(nodes) == [NODE]
    return nodes[NODE], stored


def exported(stored: Stored, metric: str, **match: str) -> float | None:
    found = [v for n, labels, v in stored if n == metric and match.items() <= labels.items()]
    assert len(found) <= 1, (metric, match, found)
    return found[0] if found else None


# -- what the agent holds --------------------------------------------------------------------

#: Every GpuReading field the table exports, none a multiple of its unit's step, so that a
#: scale applied one way and not undone the other shows.
FULL = GpuReading(
    index=0, util_gpu=97, util_mem=41, mem_used=81_559 * MIB + 12_345,
    mem_total=97_871 * MIB + 7, mem_reserved=512 * MIB + 3, temp_c=71, temp_mem_c=64,
    power_mw=699_512, energy_mj=123_456_789_012, sm_clock_mhz=1980, mem_clock_mhz=2619,
    clock_reasons=["sw_power_cap", "hw_thermal_slowdown"], pstate=2,
    ecc_uncorrected_volatile=3, remapped_correctable=5, remapped_uncorrectable=7,
    remap_pending=True, remap_failure=True, pcie_tx_kbs=123_457, pcie_rx_kbs=98_765,
    pcie_width=16, processes=[GpuProcess(pid=1, used_memory=None)],
)  # fmt: skip
#: Zeros and False are readings too: they must come back as 0, not as absent.
ZERO = GpuReading(
    index=1, util_gpu=0, util_mem=0, mem_used=0, mem_total=0, mem_reserved=0, temp_c=0,
    temp_mem_c=0, power_mw=0, energy_mj=0, sm_clock_mhz=0, mem_clock_mhz=0, clock_reasons=[],
    pstate=0, ecc_uncorrected_volatile=0, remapped_correctable=0, remapped_uncorrectable=0,
    remap_pending=False, remap_failure=False, pcie_tx_kbs=0, pcie_rx_kbs=0, pcie_width=0,
)  # fmt: skip
#: What the hardware did not give: absent there, absent here (never 0).
NOTHING = GpuReading(index=2)
LOST = GpuReading(index=3, lost=True)
INFOS = [
    GpuInfo(index=0, uuid="GPU-aaa", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0",
            power_limit_mw=699_999, temp_slowdown_c=87, temp_shutdown_c=92, temp_mem_max_c=95,
            pcie_max_width=16),
    GpuInfo(index=1, uuid="GPU-bbb", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:2A:00.0",
            power_limit_mw=0, temp_slowdown_c=0, temp_shutdown_c=0, temp_mem_max_c=0,
            pcie_max_width=0),
    GpuInfo(index=2, uuid=None, name=None),
    GpuInfo(index=3, uuid="GPU-ddd", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:AB:00.0",
            temp_slowdown_c=88),
]  # fmt: skip
HOST = HostReading(
    cpu_percent=12.345, cpu_per_core=[12.345], load=(1.5, 1.25, 0.75), mem_total=(64 << 30) + 1,
    mem_used=(10 << 30) + 3, mem_available=(50 << 30) + 5, swap_total=(8 << 30) + 7,
    swap_used=4097, disk_read_bps=1234.5, disk_write_bps=0.0, net_rx_bps=1e9 / 3,
    net_tx_bps=2048.0, uptime_s=3600.125, boot_id="b",
)  # fmt: skip
STATE = NodeState(state="drained", pool="train", reason='fans "A"\nreplaced', who="alice",
                  since=NOW - 60.5)  # fmt: skip
XID = Event(seq=1, ts=NOW - 5.5, kind="xid", gpu=1, xid=79, message="GPU 1: XID 79")

#: What the page must say for FULL, INFOS[0], HOST and STATE, in each metric's own unit,
#: written out by hand rather than from the table: W not mW, MiB not bytes, bytes/s not KB/s.
EXPORTED: Final[dict[str, float]] = {
    "DCGM_FI_DEV_SM_CLOCK": 1980,
    "DCGM_FI_DEV_MEM_CLOCK": 2619,
    "DCGM_FI_DEV_MEMORY_TEMP": 64,
    "DCGM_FI_DEV_GPU_TEMP": 71,
    "DCGM_FI_DEV_POWER_USAGE": 699.512,
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 123_456_789_012,
    "DCGM_FI_DEV_GPU_UTIL": 97,
    "DCGM_FI_DEV_MEM_COPY_UTIL": 41,
    "DCGM_FI_DEV_FB_USED": 81_559 + 12_345 / MIB,
    "DCGM_FI_DEV_FB_TOTAL": 97_871 + 7 / MIB,
    "DCGM_FI_DEV_FB_RESERVED": 512 + 3 / MIB,
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 3,
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 7,
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 5,
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": 1,
    "DCGM_FI_DEV_ROW_REMAP_PENDING": 1,
    "DCGM_FI_DEV_PSTATE": 2,
    "gpufleet_gpu_pcie_link_width": 16,
    "gpufleet_gpu_pcie_link_width_max": 16,
    "gpufleet_gpu_pcie_tx_bytes_per_second": 123_457 * 1024,
    "gpufleet_gpu_pcie_rx_bytes_per_second": 98_765 * 1024,
    "gpufleet_gpu_temperature_slowdown_celsius": 87,
    "gpufleet_gpu_temperature_shutdown_celsius": 92,
    "gpufleet_gpu_memory_temperature_max_celsius": 95,
    "gpufleet_gpu_power_limit_watts": 699.999,
    "gpufleet_node_state_since_timestamp_seconds": NOW - 60.5,
    "gpufleet_host_cpu_utilization_percent": 12.345,
    "gpufleet_host_load1": 1.5,
    "gpufleet_host_load5": 1.25,
    "gpufleet_host_load15": 0.75,
    "gpufleet_host_memory_total_bytes": (64 << 30) + 1,
    "gpufleet_host_memory_used_bytes": (10 << 30) + 3,
    "gpufleet_host_memory_available_bytes": (50 << 30) + 5,
    "gpufleet_host_swap_total_bytes": (8 << 30) + 7,
    "gpufleet_host_swap_used_bytes": 4097,
    "gpufleet_host_disk_read_bytes_per_second": 1234.5,
    "gpufleet_host_disk_write_bytes_per_second": 0,
    "gpufleet_host_network_receive_bytes_per_second": 1e9 / 3,
    "gpufleet_host_network_transmit_bytes_per_second": 2048,
    "gpufleet_host_uptime_seconds": 3600.125,
}

FIELD_METRICS: Final = [m for m in METRICS if m.field is not None]


def held(ref: FieldRef, gpu: int, sample: Sample, infos: list[GpuInfo], state: NodeState) -> Any:
    """The value ``ref`` names in what the agent (or the console) holds, for GPU ``gpu``."""
    obj: object
    if ref.struct == "GpuReading":
        obj = next(r for r in sample.gpus if r.index == gpu)
    elif ref.struct == "GpuInfo":
        obj = next(i for i in infos if i.index == gpu)
    elif ref.struct == "HostReading":
        obj = sample.host
    else:
        obj = state
    value = getattr(obj, ref.name)
    return value[ref.item] if value is not None and ref.item is not None else value


def assert_same(got: Any, want: Any, where: str) -> None:
    """Equal, and of the same type: True must not come back as 1, nor 3 as 3.0."""
    assert got == want, (where, got, want)
    assert type(got) is type(want), (where, type(got), type(want))


def back(node: PromNode) -> tuple[Sample, list[GpuInfo], NodeState]:
    assert node.sample is not None
    assert node.inventory.state is not None
    return node.sample, node.inventory.gpus, node.inventory.state


def test_every_field_metric_is_read_by_the_console() -> None:
    """A field exported but never read back would be checked by nothing here."""
    assert [m.name for m in FIELD_METRICS if m.read is None] == []


def test_every_field_is_exported_in_its_unit() -> None:
    sample = Sample(seq=1, ts=NOW - 0.5, host=HOST, gpus=[FULL, ZERO, NOTHING, LOST])
    _, stored = round_trip(sample, INFOS, STATE)
    assert set(EXPORTED) == {m.name for m in FIELD_METRICS}, "every field metric, by hand"
    for m in FIELD_METRICS:
        match = {"gpu": "0"} if m.scope == "gpu" else {}
        # approx: W from mW is mW * (1/1000), a last bit off 699.512 (as before the table)
        want = pytest.approx(EXPORTED[m.name], rel=1e-15)
        assert exported(stored, m.name, **match) == want, m.name


def test_every_field_comes_back_as_the_agent_held_it() -> None:
    """Set, zero and absent, on every field metric: the value and its type come back."""
    sample = Sample(seq=1, ts=NOW - 0.5, host=HOST, gpus=[FULL, ZERO, NOTHING, LOST])
    node, _ = round_trip(sample, INFOS, STATE)
    got = back(node)
    checked = set()
    for m in FIELD_METRICS:
        assert m.field is not None
        for gpu in (0, 1, 2) if m.scope == "gpu" else (0,):
            want = held(m.field, gpu, sample, INFOS, STATE)
            assert_same(held(m.field, gpu, *got), want, f"{m.name} gpu {gpu}")
            checked.add((m.field.path, want is None))
    # each per-GPU field came back both given and absent
    for m in FIELD_METRICS:
        assert m.field is not None
        if m.scope == "gpu":
            assert {(m.field.path, False), (m.field.path, True)} <= checked, m.name
    # the nine no other test read back are among them
    assert {
        "GpuReading.pcie_tx_kbs", "GpuReading.pcie_rx_kbs", "GpuReading.energy_mj",
        "GpuReading.mem_reserved", "GpuReading.temp_mem_c", "GpuReading.pstate",
        "GpuReading.remap_failure", "HostReading.disk_read_bps", "HostReading.disk_write_bps",
        "HostReading.uptime_s",
    } <= {path for path, _ in checked}  # fmt: skip


def test_the_rules_come_back_too() -> None:
    """What is not one field: the labels, a lost GPU, clocks reasons, an XID, the ops state,
    the agent's info and the sample's time."""
    sample = Sample(seq=1, ts=NOW - 0.5, host=HOST, gpus=[FULL, ZERO, NOTHING, LOST])
    node, _ = round_trip(sample, INFOS, STATE, (XID,))
    got_sample, got_infos, got_state = back(node)
    for label, path in LABEL_FIELDS.items():
        struct, name = path.split(".")
        if struct == "GpuInfo":
            for want, have in zip(INFOS, got_infos, strict=True):
                assert getattr(have, name) == getattr(want, name), label
        else:
            assert getattr(got_state, name) == getattr(STATE, name), label
    assert got_state == STATE
    assert [r.lost for r in got_sample.gpus] == [False, False, False, True]
    assert got_sample.gpus[3] == GpuReading(index=3, lost=True)
    assert got_sample.gpus[0].clock_reasons == sorted(FULL.clock_reasons or [])
    assert got_sample.gpus[1].clock_reasons == []
    assert [(e.gpu, e.xid, e.ts) for e in node.xids] == [(1, 79, XID.ts)]
    assert got_sample.ts == sample.ts
    assert node.scraped == SCRAPED
    assert node.interval == 2.0
    assert node.inventory.restart_targets == ["node", "gpu"]
    assert node.inventory.scheduler == "slurm"
    assert node.inventory.driver_version == "580.159.04"
    assert node.agent is not None and node.agent[0].startswith("gpufleet-agent ")
    # the memory size is a fact of the GPU too, and the host's of the host
    assert got_infos[0].memory_total == FULL.mem_total
    assert node.inventory.host.memory_total == HOST.mem_total


def test_a_stale_sample_comes_back_as_no_sample() -> None:
    """Withheld readings are not live readings: the console gets no sample, the limits stay."""
    sample = Sample(seq=1, ts=NOW - 60, host=HOST, gpus=[FULL])
    node, stored = round_trip(sample, INFOS[:1], STATE)
    assert node.sample is None
    assert exported(stored, "DCGM_FI_DEV_GPU_UTIL", gpu="0") is None
    assert node.inventory.gpus[0].temp_slowdown_c == INFOS[0].temp_slowdown_c


# -- any value, not only the ones above ---------------------------------------------------


def _number(kind: type) -> st.SearchStrategy[Any]:
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(min_value=0, max_value=2**44)
    return st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False)


def _field_values(struct: FieldStruct) -> st.SearchStrategy[dict[str, Any]]:
    """A value (or None, where the field allows it) for every field the table exports of
    ``struct``; a tuple field whole."""
    types = {f.name: f.type for f in msgspec.structs.fields(STRUCTS[struct])}
    out: dict[str, st.SearchStrategy[Any]] = {}
    for m in FIELD_METRICS:
        ref = m.field
        assert ref is not None
        if ref.struct != struct or ref.name in out:
            continue
        t = types[ref.name]
        optional = type(None) in get_args(t)
        base = next(a for a in get_args(t) or (t,) if a is not type(None))
        if ref.item is not None:
            value = st.tuples(*(_number(a) for a in get_args(base)))
        else:
            value = _number(base)
        out[ref.name] = st.one_of(st.none(), value) if optional else value
    return st.fixed_dictionaries(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reading=_field_values("GpuReading"),
    info=_field_values("GpuInfo"),
    host=_field_values("HostReading"),
    since=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
)
def test_any_value_comes_back(
    reading: dict[str, Any], info: dict[str, Any], host: dict[str, Any], since: float | None
) -> None:
    gpu = GpuReading(index=0, **reading)
    infos = [GpuInfo(index=0, uuid="GPU-x", name="H100", **info)]
    h = HostReading(cpu_per_core=None, boot_id=None, **host)
    state = NodeState(state="schedulable", since=since)
    sample = Sample(seq=1, ts=NOW - 0.5, host=h, gpus=[gpu])
    node, _ = round_trip(sample, infos, state)
    got = back(node)
    for m in FIELD_METRICS:
        assert m.field is not None
        want = held(m.field, 0, sample, infos, state)
        assert_same(held(m.field, 0, *got), want, m.name)
