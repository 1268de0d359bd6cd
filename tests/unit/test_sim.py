"""The simulator must read like the captured H100 and replay exactly under a seed.

Demos, console tests and the sampler's event logic all lean on it, so these tests pin what the
capture in tests/fixtures/h100 shows (units, idle values, capped clocks, empty process lists
under load) and that faults appear in the readings the way a real card would show them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import pytest

from agents.gpu.base import SLOW_FIELDS, GpuBackend, XidEvent
from agents.gpu.clocks import THERMAL_REASONS
from agents.gpu.sim import DEMO_SPELLS, FAULTS, SimBackend
from agents.protocol import GpuReading, SimInjectArgs

CAP_MW = 700_000
MEM_TOTAL = 85_520_809_984
UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BUS_RE = re.compile(r"^[0-9A-F]{8}:[0-9A-F]{2}:00\.0$")


def run(backend: SimBackend, reads: int) -> list[list[GpuReading]]:
    return [backend.read() for _ in range(reads)]


def flat(ticks: list[list[GpuReading]]) -> Iterator[GpuReading]:
    for tick in ticks:
        yield from tick


def no_clock() -> float:
    raise AssertionError("the simulator consulted the wall clock outside an XID")


def first_idle_gpu(backend: SimBackend) -> int:
    """Index of a GPU that is idle in the first reading of a fresh twin of ``backend``."""
    for r in backend.read():
        if r.util_gpu == 0:
            return r.index
    raise AssertionError("no idle GPU in the first reading")


# ---------------------------------------------------------------------------------------------
# Determinism


def test_conforms_to_backend_protocol() -> None:
    backend: GpuBackend = SimBackend()
    assert backend.name == "sim"
    assert backend.inventory().backend == "sim"


def test_same_seed_gives_identical_sequences() -> None:
    a = run(SimBackend(8, seed=7, node="n1"), 600)
    b = run(SimBackend(8, seed=7, node="n1"), 600)
    assert a == b


def test_different_seed_or_node_differs() -> None:
    base = run(SimBackend(8, seed=7, node="n1"), 600)
    assert run(SimBackend(8, seed=8, node="n1"), 600) != base
    assert run(SimBackend(8, seed=7, node="n2"), 600) != base


def test_read_slow_between_reads_does_not_disturb_sequence() -> None:
    plain = run(SimBackend(8, seed=3), 600)
    sometimes = SimBackend(8, seed=3)
    often = SimBackend(8, seed=3)
    got_sometimes, got_often = [], []
    for i in range(600):
        if i % 7 == 3:
            sometimes.read_slow()
        got_sometimes.append(sometimes.read())
        often.read_slow()
        often.read_slow()
        got_often.append(often.read())
    assert got_sometimes == plain
    assert got_often == plain


def test_read_slow_on_another_thread_does_not_disturb_sequence() -> None:
    plain = run(SimBackend(8, seed=4), 600)
    backend = SimBackend(8, seed=4)
    stop = threading.Event()
    slow_calls = 0

    def slow_loop() -> None:
        nonlocal slow_calls
        while not stop.is_set():
            backend.read_slow()
            slow_calls += 1

    thread = threading.Thread(target=slow_loop)
    thread.start()
    try:
        got = run(backend, 600)
    finally:
        stop.set()
        thread.join()
    assert got == plain
    assert slow_calls > 0


def test_same_injections_replay_identically() -> None:
    def scripted() -> list[list[GpuReading]]:
        backend = SimBackend(4, seed=9)
        out = []
        for i in range(300):
            if i == 10:
                backend.inject("busy", 1)
            if i == 50:
                backend.inject("overheat", 2)
            if i == 120:
                backend.inject("clear", 2)
            out.append(backend.read())
        return out

    assert scripted() == scripted()


def test_fault_on_one_gpu_leaves_the_others_untouched() -> None:
    twin = SimBackend(8, seed=5)
    faulty = SimBackend(8, seed=5)
    faulty.inject("busy", 3)
    faulty.inject("overheat", 5)
    for _ in range(200):
        want, got = twin.read(), faulty.read()
        assert [r for r in got if r.index not in (3, 5)] == [
            r for r in want if r.index not in (3, 5)
        ]


def test_time_is_simulated_not_wall_clock() -> None:
    backend = SimBackend(8, seed=1, clock=no_clock)
    run(backend, 100)
    backend.read_slow()
    backend.inject("busy", 0)
    backend.inject("lost", 1)
    backend.inject("clear", 1)


# ---------------------------------------------------------------------------------------------
# Static facts


def test_inventory_matches_capture() -> None:
    inv = SimBackend(8, seed=0).inventory()
    assert inv.backend == "sim"
    assert inv.driver_version == "580.159.04"
    assert inv.cuda_version == "13.0"
    assert [g.index for g in inv.gpus] == list(range(8))
    for g in inv.gpus:
        assert g.name == "NVIDIA H100 80GB HBM3"
        assert g.memory_total == MEM_TOTAL
        assert g.power_limit_mw == CAP_MW
        assert (g.temp_slowdown_c, g.temp_shutdown_c, g.temp_mem_max_c) == (89, 95, 95)
        assert g.ecc_enabled is True
        assert g.persistence_mode is True
        assert g.mig_enabled is False
        assert (g.pcie_max_gen, g.pcie_max_width) == (5, 16)
        assert g.sm_clock_max_mhz == 1980
        assert g.uuid is not None
        assert UUID_RE.match(g.uuid)
        assert g.pci_bus_id is not None
        assert BUS_RE.match(g.pci_bus_id)
        assert g.serial is not None
        assert g.serial.isdigit()
        assert len(g.serial) == 13
    assert inv.gpus[0].pci_bus_id == "00000000:18:00.0"
    assert len({g.pci_bus_id for g in inv.gpus}) == 8


def test_uuids_distinct_across_gpus_and_nodes() -> None:
    uuids: set[str | None] = set()
    serials: set[str | None] = set()
    for node in ("gpu01", "gpu02", "gpu03"):
        for g in SimBackend(8, seed=0, node=node).inventory().gpus:
            uuids.add(g.uuid)
            serials.add(g.serial)
    assert len(uuids) == 24
    assert len(serials) == 24
    assert SimBackend(8, seed=0, node="gpu01").inventory() == (
        SimBackend(8, seed=0, node="gpu01").inventory()
    )


def test_many_gpus_get_distinct_bus_ids() -> None:
    gpus = SimBackend(300).inventory().gpus
    ids = [g.pci_bus_id for g in gpus]
    assert len(set(ids)) == 300
    assert all(i is not None and BUS_RE.match(i) for i in ids)


# ---------------------------------------------------------------------------------------------
# Behaviour


def test_idle_matches_capture() -> None:
    backend = SimBackend(8, seed=0)
    first = backend.read()
    idle_first = [r for r in first if r.util_gpu == 0]
    assert idle_first, "seed 0 should start with some GPUs idle"
    for r in idle_first:
        assert r.temp_c is not None
        assert 32 <= r.temp_c <= 39
    ticks = [first, *run(backend, 599)]
    idle = [r for r in flat(ticks) if r.util_gpu == 0]
    assert len(idle) > 100
    for r in idle:
        assert r.lost is False
        assert r.util_mem == 0
        assert r.power_mw is not None
        assert 73_000 <= r.power_mw <= 78_000
        assert r.sm_clock_mhz == 345
        assert r.mem_clock_mhz == 2619
        assert r.mem_used == 0
        assert r.mem_total == MEM_TOTAL
        assert r.mem_reserved == 503_316_480
        assert r.pstate == 0
        assert r.clock_reasons == ["gpu_idle"]  # "Idle: Active" in the capture's nvidia-smi -q
        assert r.processes == []
        assert r.ecc_uncorrected_volatile == 0
        assert r.remap_pending is False
        assert r.pcie_width == 16
        assert r.temp_c is not None
        assert 32 <= r.temp_c <= 75
        # Slow fields come from read_slow, never from the tick.
        assert (r.energy_mj, r.pcie_tx_kbs, r.pcie_rx_kbs, r.temp_mem_c) == (None,) * 4


def test_busy_capped_and_uncapped() -> None:
    readings = list(flat(run(SimBackend(8, seed=0), 600)))
    busy = [r for r in readings if r.util_gpu is not None and r.util_gpu > 0]
    assert busy, "no GPU became busy in 600 simulated seconds"
    capped = [r for r in busy if r.clock_reasons == ["sw_power_cap"]]
    uncapped = [r for r in busy if r.clock_reasons == []]
    assert capped
    assert uncapped
    for r in busy:
        assert r.util_gpu is not None
        assert 90 <= r.util_gpu <= 100
        assert r.util_mem is not None
        assert r.util_mem > 0
        assert r.mem_used is not None
        assert 10 * 2**30 <= r.mem_used <= MEM_TOTAL - 503_316_480
        assert r.power_mw is not None
        assert r.power_mw <= CAP_MW
        assert r.temp_c is not None
        assert r.temp_c <= 75
    for r in capped:
        assert r.sm_clock_mhz is not None
        assert 1275 <= r.sm_clock_mhz <= 1440
        assert r.power_mw is not None
        assert r.power_mw >= 690_000
    for r in uncapped:
        assert r.sm_clock_mhz == 1980
        assert r.power_mw is not None
        assert r.power_mw < CAP_MW
    assert max(r.temp_c or 0 for r in busy) >= 60


def test_busy_spells_start_and_stop() -> None:
    backend = SimBackend(4, seed=2)
    states = [[r.util_gpu != 0 for r in tick] for tick in run(backend, 1800)]
    for gpu in range(4):
        changes = sum(states[t][gpu] != states[t - 1][gpu] for t in range(1, len(states)))
        assert changes >= 2, f"gpu {gpu} never alternated idle and busy"


def test_busy_workloads_hide_in_containers_or_show_a_process() -> None:
    busy = [r for r in flat(run(SimBackend(16, seed=0), 600)) if (r.util_gpu or 0) >= 90]
    assert any(r.processes == [] for r in busy), "an empty list at 100 % is the common case"
    shown = [r for r in busy if r.processes]
    assert shown
    for r in shown:
        assert r.processes is not None
        (proc,) = r.processes
        assert proc.pid >= 4_000_000
        assert proc.user
        assert proc.command
        assert proc.used_memory == r.mem_used


def test_temperature_lags_load() -> None:
    backend = SimBackend(8, seed=0)
    gpu = first_idle_gpu(SimBackend(8, seed=0))
    backend.inject("busy", gpu)
    temps = [tick[gpu].temp_c or 0 for tick in run(backend, 20)]
    assert temps == sorted(temps), "temperature should climb steadily, not jump"
    assert temps[0] <= 39
    assert temps[-1] - temps[0] >= 5


def test_read_slow_fields() -> None:
    backend = SimBackend(8, seed=0)
    ticks = run(backend, 1)
    slow = backend.read_slow()
    assert set(slow) == set(range(8))
    for r in ticks[0]:
        fields = slow[r.index]
        assert set(fields) == set(SLOW_FIELDS)
        energy = fields["energy_mj"]
        assert energy is not None
        assert 8_845_614 <= energy <= 8_845_614 + 1_000_000
        tx, rx, hbm = fields["pcie_tx_kbs"], fields["pcie_rx_kbs"], fields["temp_mem_c"]
        assert tx is not None
        assert rx is not None
        assert hbm is not None
        assert r.temp_c is not None
        assert r.temp_c <= hbm <= r.temp_c + 6
        if r.util_gpu == 0:
            assert 1_000 <= tx <= 2_000
            assert 300 <= rx <= 600
        else:
            assert tx >= 10_000
            assert rx >= 10_000


@pytest.mark.parametrize("interval", [1.0, 2.5])
def test_energy_integrates_power_over_simulated_time(interval: float) -> None:
    backend = SimBackend(8, seed=6, interval=interval)
    before = backend.read_slow()
    previous = {i: f["energy_mj"] or 0 for i, f in before.items()}
    for _ in range(600):
        tick = backend.read()
        now = backend.read_slow()
        for r in tick:
            energy = now[r.index]["energy_mj"]
            assert energy is not None
            assert r.power_mw is not None
            assert energy > previous[r.index]
            # mW over seconds is mJ: the counter moves by what the tick drew.
            assert abs(energy - previous[r.index] - r.power_mw * interval) <= 1
            previous[r.index] = energy


# ---------------------------------------------------------------------------------------------
# Faults


def test_every_protocol_fault_is_accepted() -> None:
    assert set(FAULTS) == {
        "overheat",
        "xid79",
        "ecc",
        "lost",
        "clear",
        "busy",
        "idle",
    }
    backend = SimBackend(2)
    for fault in FAULTS:
        args = SimInjectArgs(fault=fault, gpu=1)  # type: ignore[arg-type]
        message = backend.inject(args.fault, args.gpu)
        assert message
        assert "\n" not in message
        backend.read()


@pytest.mark.parametrize("workload", ["busy", "idle"])
def test_overheat_throttles_until_cleared(workload: str) -> None:
    backend = SimBackend(8, seed=0)
    backend.inject(workload, 2)
    backend.inject("overheat", 2)
    readings = [tick[2] for tick in run(backend, 60)]
    hot_at = next(i for i, r in enumerate(readings) if (r.temp_c or 0) > 89)
    assert hot_at < 6, "overheat should pass the slowdown threshold within a few ticks"
    for r in readings[hot_at:]:
        assert r.temp_c is not None
        assert 89 < r.temp_c <= 94
        assert r.clock_reasons is not None
        # Past T.Limit (87 C) software slowdown; past the slowdown threshold (89 C) hardware.
        assert {"sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown"} <= set(r.clock_reasons)
        assert "gpu_idle" not in r.clock_reasons
        assert r.sm_clock_mhz is not None
        if r.util_gpu:
            assert r.sm_clock_mhz <= 1350
            assert r.power_mw is not None
            assert r.power_mw < CAP_MW
        else:
            assert r.sm_clock_mhz == 345
    for r in readings[:hot_at]:
        if (r.temp_c or 0) <= 87:
            assert not THERMAL_REASONS & set(r.clock_reasons or [])

    backend.inject("clear", 2)
    after = backend.read()[2]
    assert after.temp_c is not None
    assert 32 <= after.temp_c <= 39
    assert after.clock_reasons == ["gpu_idle"]
    assert after.util_gpu == 0


def test_xid79_is_drained_once_and_gpu_falls_off_the_bus() -> None:
    backend = SimBackend(8, seed=0, clock=lambda: 1234.5)
    backend.read()
    assert backend.drain_events() == []
    message = backend.inject("xid79", 4)
    assert "79" in message
    assert backend.drain_events() == [XidEvent(gpu=4, xid=79, ts=1234.5)]
    assert backend.drain_events() == []
    for _ in range(5):
        tick = backend.read()
        assert tick[4] == GpuReading(index=4, lost=True)
        assert all(not r.lost for r in tick if r.index != 4)
    assert backend.drain_events() == []
    assert backend.read_slow()[4] == dict.fromkeys(SLOW_FIELDS, None)
    backend.inject("clear", 4)
    assert backend.read()[4].lost is False
    assert backend.drain_events() == []


def test_ecc_counts_and_remap_pending_until_reset() -> None:
    backend = SimBackend(8, seed=0)
    backend.inject("ecc", 1)
    r = backend.read()[1]
    assert (r.ecc_uncorrected_volatile, r.remapped_uncorrectable, r.remap_pending) == (1, 1, True)
    backend.inject("ecc", 1)
    r = backend.read()[1]
    assert (r.ecc_uncorrected_volatile, r.remapped_uncorrectable, r.remap_pending) == (2, 2, True)
    assert r.remap_failure is False
    assert backend.drain_events() == [], "ECC events are the sampler's to derive"
    backend.inject("clear", 1)
    r = backend.read()[1]
    assert (r.ecc_uncorrected_volatile, r.remapped_uncorrectable, r.remap_pending) == (0, 2, False)
    assert backend.read()[0].ecc_uncorrected_volatile == 0


def test_lost_and_clear_round_trip() -> None:
    backend = SimBackend(8, seed=0)
    backend.inject("lost", 6)
    for _ in range(10):
        assert backend.read()[6] == GpuReading(index=6, lost=True)
    assert backend.drain_events() == []
    backend.inject("clear", 6)
    r = backend.read()[6]
    assert r.lost is False
    assert r.temp_c is not None
    assert r.power_mw is not None
    assert r.util_gpu == 0


def test_busy_and_idle_override_schedule() -> None:
    backend = SimBackend(8, seed=0)
    for gpu in range(8):
        backend.inject("busy", gpu)
    for r in backend.read():
        assert r.util_gpu is not None
        assert r.util_gpu >= 90
        assert r.mem_used is not None
        assert r.mem_used >= 10 * 2**30
        assert r.power_mw is not None
        assert r.power_mw > 300_000
    for gpu in range(8):
        backend.inject("idle", gpu)
    for r in backend.read():
        assert r.util_gpu == 0
        assert r.mem_used == 0
        assert r.processes == []
        assert r.sm_clock_mhz == 345
        assert r.power_mw is not None
        assert 73_000 <= r.power_mw <= 78_000


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b.inject("melt", 0), "unknown fault 'melt'"),
        (lambda b: b.inject("lost", 8), "no GPU 8"),
        (lambda b: b.inject("lost", -1), "no GPU -1"),
        (lambda b: SimBackend(0).inject("lost", 0), "no GPU 0"),
    ],
)
def test_bad_injection_raises_value_error(call: Callable[[SimBackend], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(SimBackend(8))


def test_bad_construction_raises_value_error() -> None:
    with pytest.raises(ValueError, match="gpus"):
        SimBackend(-1)
    with pytest.raises(ValueError, match="interval"):
        SimBackend(interval=0)


def test_no_gpus_and_close_are_harmless() -> None:
    empty = SimBackend(0)
    assert empty.read() == []
    assert empty.read_slow() == {}
    assert empty.inventory().gpus == []
    backend = SimBackend(2)
    backend.close()
    backend.close()
    assert len(backend.read()) == 2


# ---------------------------------------------------------------------------------------------
# A drained node takes no new work


def drained_after(backend: SimBackend, limit: int) -> int | None:
    """Simulated seconds (reads at 1 s) until no GPU of a held node works, or None."""
    backend.hold_work(True)
    for t in range(1, limit + 1):
        if all(r.util_gpu == 0 for r in backend.read()):
            return t
    return None


def test_a_held_node_starts_no_work_and_its_running_work_ends_in_its_own_time() -> None:
    backend = SimBackend(8, seed=3, node="demo04", spells=DEMO_SPELLS)
    backend.inject("busy", 0)  # work that must end by itself, not be cut short
    first = backend.read()[0]
    assert first.util_gpu is not None and first.util_gpu >= 90
    took = drained_after(backend, 120)
    assert took is not None and took > 1, "running work ends in its own time"
    idle = run(backend, 1800)
    assert all(r.util_gpu == 0 and not r.processes for r in flat(idle)), "no new work"
    backend.hold_work(False)
    later = run(backend, 600)
    assert any((r.util_gpu or 0) >= 90 for r in flat(later)), "resumed: work comes back"


def test_demo_nodes_drain_within_about_two_minutes() -> None:
    """The demo's 16 nodes x 8 GPUs, drained five minutes in with about two-thirds of their
    GPUs at work: every one is idle within 120 simulated seconds."""
    took, busy = [], 0
    for i in range(16):
        backend = SimBackend(8, seed=i, node=f"demo{i + 1:02d}", spells=DEMO_SPELLS)
        busy += sum((r.util_gpu or 0) > 0 for r in run(backend, 300)[-1])
        took.append(drained_after(backend, 120))
    assert busy >= 16 * 8 // 2, "drained while working, or the test proves nothing"
    assert None not in took, took
