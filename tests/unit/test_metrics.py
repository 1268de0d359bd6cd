"""``/metrics`` as the agent computes it: names, labels, units and absences, from samples made
here (the simulator's, and readings written out by hand where a value must be exact), and the
proof that scrapes cost NVML nothing (counted in tests/fakes/fake_pynvml.py, the stand-in for a
GPU this machine does not have)."""

from __future__ import annotations

import pytest

from agents.export.metrics import MetricsCollector, render
from agents.gpu.base import GpuInventory
from agents.gpu.clocks import encode_clock_reasons
from agents.gpu.nvml import NvmlBackend
from agents.gpu.sim import SimBackend
from agents.host import HostSampler
from agents.protocol import (
    GPU_LABELS,
    METRIC_SPECS,
    MIB,
    Event,
    GpuInfo,
    GpuProcess,
    GpuReading,
    HostReading,
    NodeState,
    Sample,
)
from agents.sampler import Sampler
from tests.fakes.fake_pynvml import make
from tests.support.exposition import Series, parse

NOW = 1_800_000_000.0


def values(series: Series, name: str, **match: str) -> list[float]:
    return [v for (n, labels), v in series.items() if n == name and set(match.items()) <= labels]


def one(series: Series, name: str, **match: str) -> float:
    found = values(series, name, **match)
    assert len(found) == 1, (name, match, found)
    return found[0]


def host_reading() -> HostReading:
    return HostReading(
        cpu_percent=12.5, cpu_per_core=[12.5], load=(1.5, 1.0, 0.5), mem_total=64 << 30,
        mem_used=10 << 30, mem_available=50 << 30, swap_total=0, swap_used=0,
        disk_read_bps=None, disk_write_bps=None, net_rx_bps=1000.0, net_tx_bps=2000.0,
        uptime_s=3600.0, boot_id="b",
    )  # fmt: skip


INFOS = [
    GpuInfo(index=0, uuid="GPU-aaa", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0",
            memory_total=85520809984, power_limit_mw=700000, temp_slowdown_c=87,
            temp_shutdown_c=92, temp_mem_max_c=95, pcie_max_width=16),
    GpuInfo(index=1, uuid="GPU-bbb", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:2A:00.0"),
]  # fmt: skip

BUSY = GpuReading(
    index=0, util_gpu=100, util_mem=37, mem_used=81559 * MIB, mem_total=81559 * MIB + 1536 * MIB,
    mem_reserved=512 * MIB, temp_c=71, temp_mem_c=None, power_mw=699_512, energy_mj=123456789,
    sm_clock_mhz=1410, mem_clock_mhz=2619, clock_reasons=["sw_power_cap", "hw_thermal_slowdown"],
    pstate=0, ecc_uncorrected_volatile=0, remapped_correctable=0, remapped_uncorrectable=2,
    remap_pending=True, remap_failure=False, pcie_tx_kbs=None, pcie_rx_kbs=100, pcie_width=16,
    processes=[GpuProcess(pid=1, used_memory=None)],
)  # fmt: skip
LOST = GpuReading(index=1, lost=True)
DRAINED = NodeState(state="drained", pool="train", reason='fans "A"\nreplaced', who="alice",
                    since=NOW - 60)  # fmt: skip


def collector(
    sample: Sample | None,
    *,
    state: NodeState | None = DRAINED,
    now: float = NOW,
    infos: list[GpuInfo] = INFOS,
) -> MetricsCollector:
    inv = GpuInventory(backend="nvml", gpus=infos, driver_version="580.159.04")
    return MetricsCollector(
        node="gpu01", latest=lambda: sample, gpus=lambda: inv, state=lambda: state,
        interval=1.0, scheduler="slurm", clock=lambda: now,
    )  # fmt: skip


def scrape(c: MetricsCollector) -> tuple[Series, dict[str, str], list[list[str]]]:
    return parse(render(c.collect()).decode())


def sample(*gpus: GpuReading, ts: float = NOW - 0.5) -> Sample:
    return Sample(seq=1, ts=ts, host=host_reading(), gpus=list(gpus))


def test_values_in_dcgm_units() -> None:
    series, types, _ = scrape(collector(sample(BUSY, LOST)))
    g0 = {"gpu": "0"}
    assert one(series, "DCGM_FI_DEV_POWER_USAGE", **g0) == pytest.approx(699.512)  # W, not mW
    assert one(series, "DCGM_FI_DEV_FB_USED", **g0) == 81559  # MiB, not bytes
    assert one(series, "DCGM_FI_DEV_FB_TOTAL", **g0) == 81559 + 1536
    assert one(series, "DCGM_FI_DEV_FB_RESERVED", **g0) == 512
    assert one(series, "DCGM_FI_DEV_FB_FREE", **g0) == 1536 - 512  # total - used - reserved
    assert one(series, "DCGM_FI_DEV_GPU_UTIL", **g0) == 100
    assert one(series, "DCGM_FI_DEV_MEM_COPY_UTIL", **g0) == 37
    assert one(series, "DCGM_FI_DEV_GPU_TEMP", **g0) == 71
    assert one(series, "DCGM_FI_DEV_SM_CLOCK", **g0) == 1410
    assert one(series, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", **g0) == 123456789  # mJ
    assert one(series, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", **g0) == 2
    assert one(series, "DCGM_FI_DEV_ROW_REMAP_PENDING", **g0) == 1
    assert one(series, "DCGM_FI_DEV_ROW_REMAP_FAILURE", **g0) == 0
    assert one(series, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", **g0) == 0  # a real zero stays
    assert one(series, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", **g0) == 0x004 | 0x040
    assert one(series, "gpufleet_gpu_pcie_rx_bytes_per_second", **g0) == 100 * 1024
    assert one(series, "gpufleet_gpu_power_limit_watts", **g0) == 700
    assert one(series, "gpufleet_gpu_temperature_slowdown_celsius", **g0) == 87
    assert one(series, "gpufleet_gpu_processes", **g0) == 1
    active = {dict(k[1])["reason"] for k in series if k[0] == "gpufleet_gpu_clock_event_active"}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    # dcgm's counters keep their names: TYPE says counter, no _total anywhere
    assert types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert not any(name.endswith("_total") for name in types if name.startswith("DCGM_"))
    assert set(types) <= set(METRIC_SPECS)
    for name, kind in types.items():
        assert METRIC_SPECS[name].kind == kind


def test_not_supported_is_absent_not_zero() -> None:
    series, _, _ = scrape(collector(sample(BUSY, LOST)))
    for name in ("DCGM_FI_DEV_MEMORY_TEMP", "gpufleet_gpu_pcie_tx_bytes_per_second"):
        assert values(series, name, gpu="0") == [], name  # None in the reading
    assert values(series, "gpufleet_host_disk_read_bytes_per_second") == []
    assert values(series, "gpufleet_gpu_power_limit_watts", gpu="1") == []  # not in its info


def test_lost_gpu_has_lost_and_no_readings() -> None:
    series, _, _ = scrape(collector(sample(BUSY, LOST)))
    assert one(series, "gpufleet_gpu_lost", gpu="1") == 1
    assert one(series, "gpufleet_gpu_lost", gpu="0") == 0
    g1 = {name for (name, labels) in series if ("gpu", "1") in labels}
    assert g1 == {"gpufleet_gpu_lost", "DCGM_FI_DEV_XID_ERRORS"}  # XID: from events, not it


def test_labels_are_dcgm_exporters_then_pool_and_state() -> None:
    series, _, orders = scrape(collector(sample(BUSY, LOST)))
    labels = dict(next(k[1] for k in series if k[0] == "DCGM_FI_DEV_GPU_UTIL"))
    assert labels == {
        "gpu": "0", "UUID": "GPU-aaa", "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu01", "pool": "train",
        "state": "drained",
    }  # fmt: skip
    gpu_orders = [o for o in orders if o and o[0] == "gpu"]
    assert all(o[: len(GPU_LABELS)] == list(GPU_LABELS) for o in gpu_orders)
    info = next(dict(k[1]) for k in series if k[0] == "gpufleet_node_state_info")
    assert info["reason"] == 'fans "A"\nreplaced' and info["who"] == "alice"  # escaped, intact
    assert info["state"] == "drained" and info["Hostname"] == "gpu01"


def test_node_and_agent_metrics() -> None:
    series, _, _ = scrape(collector(sample(BUSY, LOST)))
    assert one(series, "gpufleet_sample_timestamp_seconds") == NOW - 0.5
    assert one(series, "gpufleet_sample_fresh") == 1
    assert one(series, "gpufleet_node_gpus") == 2
    assert one(series, "gpufleet_node_state_since_timestamp_seconds") == NOW - 60
    assert one(series, "gpufleet_host_load1") == 1.5
    assert one(series, "gpufleet_host_memory_used_bytes") == 10 << 30
    info = next(dict(k[1]) for k in series if k[0] == "gpufleet_agent_info")
    assert info["backend"] == "nvml" and info["driver_version"] == "580.159.04"
    assert info["scheduler"] == "slurm" and info["protocol"]


def test_xid_is_the_newest_per_gpu_and_zero_before_any() -> None:
    c = collector(sample(BUSY, LOST))
    assert one(scrape(c)[0], "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0
    for xid, ts in ((48, NOW - 10), (79, NOW - 5)):
        c.saw_event(Event(seq=1, ts=ts, kind="xid", gpu=0, xid=xid, message="x"))
    c.saw_event(Event(seq=2, ts=NOW, kind="ecc", gpu=0, count=3, message="ecc"))
    series = scrape(c)[0]
    assert one(series, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79
    assert one(series, "gpufleet_gpu_last_xid_timestamp_seconds", gpu="0") == NOW - 5
    assert one(series, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 0


def test_a_stale_sample_is_not_served_as_live() -> None:
    """Sampling stalled for more than 3 intervals: the readings go, the facts stay."""
    series, _, _ = scrape(collector(sample(BUSY, LOST, ts=NOW - 3.5)))
    assert one(series, "gpufleet_sample_fresh") == 0
    assert one(series, "gpufleet_sample_timestamp_seconds") == NOW - 3.5
    for name in ("DCGM_FI_DEV_GPU_UTIL", "gpufleet_gpu_lost", "gpufleet_host_load1"):
        assert values(series, name) == [], name
    assert one(series, "gpufleet_gpu_temperature_slowdown_celsius", gpu="0") == 87
    assert values(series, "gpufleet_node_state_info")
    none_yet, _, _ = scrape(collector(None))
    assert one(none_yet, "gpufleet_sample_fresh") == 0
    assert values(none_yet, "gpufleet_sample_timestamp_seconds") == []


def test_no_state_no_pool() -> None:
    series, _, _ = scrape(collector(sample(BUSY), state=NodeState()))
    labels = dict(next(k[1] for k in series if k[0] == "DCGM_FI_DEV_GPU_UTIL"))
    assert labels["pool"] == "" and labels["state"] == "schedulable"


def test_clock_reason_mask_round_trips_unknown_bits() -> None:
    assert encode_clock_reasons(["gpu_idle", "bit_0x200"]) == 0x201
    assert encode_clock_reasons([]) == 0


def test_simulated_node_through_the_sampler() -> None:
    """The simulator's sample, through the real Sampler, as the agent serves it."""
    backend = SimBackend(4, seed=3, node="sim01")
    sampler = Sampler(backend, HostSampler(), history_len=10)
    sampler.host.prime()
    s, _ = sampler.tick()
    inv = backend.inventory()
    c = MetricsCollector(
        node="sim01", latest=lambda: s, gpus=backend.inventory,
        state=lambda: NodeState(pool="p"), interval=1.0, scheduler="none",
        clock=lambda: s.ts,
    )  # fmt: skip
    series, _, _ = scrape(c)
    for r, info in zip(s.gpus, inv.gpus, strict=True):
        labels = {"gpu": str(r.index), "UUID": info.uuid or "", "device": f"nvidia{r.index}"}
        assert one(series, "DCGM_FI_DEV_GPU_UTIL", **labels) == r.util_gpu
        assert r.power_mw is not None and r.mem_used is not None
        assert one(series, "DCGM_FI_DEV_POWER_USAGE", **labels) == r.power_mw / 1000
        assert one(series, "DCGM_FI_DEV_FB_USED", **labels) == r.mem_used / MIB
        assert one(series, "DCGM_FI_DEV_GPU_TEMP", **labels) == r.temp_c
    backend.close()


def test_scrapes_cost_no_nvml_reads() -> None:
    """The NVML backend on the fake (no GPU here): one tick's reads, then 1,000 scrapes
    (collected and rendered) must not add a single NVML call."""
    fake = make(8)
    backend = NvmlBackend(fake)
    try:
        sampler = Sampler(backend, HostSampler(), history_len=10)
        sampler.host.prime()
        s, _ = sampler.tick()
        assert len(s.gpus) == 8 and not any(r.lost for r in s.gpus)
        c = MetricsCollector(
            node="n", latest=lambda: s, gpus=backend.inventory,
            state=lambda: NodeState(), interval=1.0, scheduler="none", clock=lambda: s.ts,
        )  # fmt: skip
        before = fake.calls.copy()
        for _ in range(1000):
            page = render(c.collect())
        assert fake.calls == before
        assert b"DCGM_FI_DEV_GPU_UTIL{" in page
        sampler.tick()  # and a tick still reads, so the counter does count
        assert sum(fake.calls.values()) > sum(before.values())
    finally:
        backend.close()


@pytest.mark.parametrize("reason", ["back\\slash", 'a "quoted" word', "two\nlines", "ü ✓"])
def test_label_values_escaped(reason: str) -> None:
    """Reasons are kept literally (protocol): they come back from the text format intact."""
    page = render(
        collector(sample(BUSY), state=NodeState(state="draining", reason=reason)).collect()
    )
    assert "\n" not in page.decode().split("gpufleet_node_state_info{", 1)[1].split("} ")[0]
    series, _, _ = parse(page.decode())
    info = next(dict(k[1]) for k in series if k[0] == "gpufleet_node_state_info")
    assert info["reason"] == reason


def test_agent_info_names_the_restart_targets_and_the_inventory_has_a_time() -> None:
    """The console's Prometheus source offers the restart targets the agent allows, and reads
    the static facts again only when the inventory's time moves: at start, and when the
    backend hands back another inventory (a GPU came back), never on a scrape alone."""
    clock = [NOW]
    inv = [GpuInventory(backend="nvml", gpus=INFOS, driver_version="580.159.04")]
    c = MetricsCollector(
        node="gpu01", latest=lambda: sample(BUSY), gpus=lambda: inv[0], state=lambda: DRAINED,
        interval=1.0, scheduler="slurm", restart_targets=["agent", "gpu0", "slurmd.service"],
        clock=lambda: clock[0],
    )  # fmt: skip
    series, _, _ = scrape(c)
    info = next(dict(k[1]) for k in series if k[0] == "gpufleet_agent_info")
    assert info["restart_targets"] == "agent,gpu0,slurmd.service"
    assert one(series, "gpufleet_inventory_timestamp_seconds") == NOW
    clock[0] += 30
    inv[0] = GpuInventory(backend="nvml", gpus=list(INFOS), driver_version="580.159.04")
    assert one(scrape(c)[0], "gpufleet_inventory_timestamp_seconds") == NOW, "equal: same time"
    clock[0] += 30
    inv[0] = GpuInventory(backend="nvml", gpus=INFOS[:1], driver_version="580.159.04")
    assert one(scrape(c)[0], "gpufleet_inventory_timestamp_seconds") == NOW + 60
    none = scrape(collector(sample(BUSY)))[0]
    assert next(dict(k[1]) for k in none if k[0] == "gpufleet_agent_info")["restart_targets"] == ""
