"""The NVML backend against a fake pynvml that replays a real H100's answers.

There is no GPU on dev or CI machines, so these tests use ``tests.fakes.fake_pynvml``; the
values asserted here are the ones the real card returned (tests/fixtures/h100).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest

from agents.gpu.base import SLOW_FIELDS, BackendUnavailable, XidEvent
from agents.gpu.nvml import NvmlBackend
from agents.gpu.procinfo import MAX_COMMAND_CHARS, ProcessTable
from agents.protocol import GpuReading
from tests.conftest import wait_for
from tests.fakes.fake_pynvml import FakeNvml, make

UUID0 = "GPU-a1c8b3f1-1bea-079e-4e2e-01b112c74d03"
#: Too slow for the tick, measured on the lent H100: energy 4.2 ms of CPU, PCIe throughput
#: ~0.9 ms of CPU and 21 ms of wall time each (the HBM temperature field takes 7 us: on the tick).
SLOW_CALLS = (
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPcieThroughput",
)
#: What the NVML backend reads on the slow cadence (the rest of SLOW_FIELDS, HBM temperature,
#: it reads on the tick).
NVML_SLOW_FIELDS = ("energy_mj", "pcie_tx_kbs", "pcie_rx_kbs")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_backend(clock: FakeClock) -> Iterator[Callable[..., tuple[NvmlBackend, FakeNvml]]]:
    opened: list[NvmlBackend] = []

    def _open(gpus: int = 1, **kwargs: Any) -> tuple[NvmlBackend, FakeNvml]:
        fake = make(gpus)
        backend = NvmlBackend(fake, clock=clock, **kwargs)
        opened.append(backend)
        return backend, fake

    yield _open
    for backend in opened:
        backend.close()


def collect_events(backend: NvmlBackend, count: int = 1) -> list[XidEvent]:
    """Drain until ``count`` events arrived (the event thread delivers them asynchronously)."""
    events: list[XidEvent] = []

    def arrived() -> bool:
        events.extend(backend.drain_events())
        return len(events) >= count

    wait_for(arrived, f"{count} XID event(s)", 5)
    return events


def nonexistent_pid() -> int:
    # pid_max itself is never handed out.
    try:
        pid = int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        pid = 4_194_304
    while psutil.pid_exists(pid):
        pid += 1
    return pid


# ---------------------------------------------------------------------------------------------
# Inventory


def test_inventory_maps_the_captured_h100(open_backend: Any) -> None:
    backend, _ = open_backend()
    inv = backend.inventory()
    assert inv.backend == "nvml"
    assert inv.driver_version == "580.159.04"
    assert inv.cuda_version == "13.0"
    assert inv.nvml_version == "13.580.159.04"
    assert inv.note is None
    [gpu] = inv.gpus
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid == UUID0
    assert gpu.serial == "1752624018850"
    assert gpu.pci_bus_id == "00000000:00:06.0"
    assert gpu.memory_total == 85520809984
    assert gpu.power_limit_mw == 700000
    assert gpu.temp_slowdown_c == 89
    assert gpu.temp_shutdown_c == 95
    assert gpu.temp_mem_max_c == 95
    assert gpu.ecc_enabled is True
    assert gpu.mig_enabled is False
    assert gpu.persistence_mode is True
    assert gpu.pcie_max_width == 16
    assert gpu.pcie_max_gen == 5
    assert gpu.sm_clock_max_mhz == 1980


def test_inventory_is_read_once(open_backend: Any) -> None:
    backend, fake = open_backend()
    before = fake.calls["nvmlDeviceGetName"]
    assert backend.inventory() is backend.inventory()
    backend.read()
    assert fake.calls["nvmlDeviceGetName"] == before == 1


def test_gpus_get_distinct_identities(open_backend: Any) -> None:
    backend, _ = open_backend(gpus=3)
    gpus = backend.inventory().gpus
    assert [g.index for g in gpus] == [0, 1, 2]
    assert len({g.uuid for g in gpus}) == 3
    assert len({g.pci_bus_id for g in gpus}) == 3


def test_unsupported_static_facts_are_none(clock: FakeClock) -> None:
    fake = make()
    fake.set_error("nvmlDeviceGetSerial", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetEnforcedPowerLimit", pynvml.NVMLError_NoPermission)
    backend = NvmlBackend(fake, clock=clock)
    try:
        gpu = backend.inventory().gpus[0]
        assert gpu.serial is None
        assert gpu.power_limit_mw is None
        assert gpu.name == "NVIDIA H100 80GB HBM3"
    finally:
        backend.close()


def test_mig_enabled_gpu_reads_without_utilization(clock: FakeClock) -> None:
    fake = make()
    fake.set_value("nvmlDeviceGetMigMode", [1, 1])
    fake.set_error("nvmlDeviceGetUtilizationRates", pynvml.NVMLError_NotSupported)
    backend = NvmlBackend(fake, clock=clock)
    try:
        assert backend.inventory().gpus[0].mig_enabled is True
        for _ in range(2):
            [r] = backend.read()
            assert (r.util_gpu, r.util_mem) == (None, None)
            assert r.lost is False
            assert r.temp_c == 39
            assert r.power_mw == 129212
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------
# The tick


def test_read_gives_captured_values_in_nvml_units(open_backend: Any) -> None:
    backend, _ = open_backend()
    [r] = backend.read()
    assert r.index == 0
    assert r.lost is False
    assert r.power_mw == 129212
    assert r.sm_clock_mhz == 1980
    assert r.mem_clock_mhz == 2619
    assert r.temp_c == 39
    assert r.util_gpu == 0
    assert r.util_mem == 0
    assert r.pstate == 0
    assert r.clock_reasons == []
    assert r.ecc_uncorrected_volatile == 0
    assert r.remapped_correctable == 0
    assert r.remapped_uncorrectable == 0
    assert r.remap_pending is False
    assert r.remap_failure is False
    assert r.pcie_width == 16
    assert r.processes == []
    # v2 memory: the 480 MiB the driver reserves is reported apart from "used".
    assert r.mem_total == 85520809984
    assert r.mem_reserved == 480 * 1024 * 1024
    assert r.mem_used == 0


def test_read_leaves_slow_fields_alone(open_backend: Any) -> None:
    backend, fake = open_backend(gpus=2)
    readings = backend.read()
    for reading in readings:
        for name in NVML_SLOW_FIELDS:
            assert getattr(reading, name) is None
        assert reading.temp_mem_c == 39  # the captured HBM temperature, read on the tick
    for name in SLOW_CALLS:
        assert fake.calls[name] == 0, f"{name} is too slow for the tick"


def test_memory_falls_back_to_v1_once(open_backend: Any) -> None:
    backend, fake = open_backend()
    probed = fake.calls["nvmlDeviceGetMemoryInfo_v2"]  # the probe at start reads memory too
    fake.set_error("nvmlDeviceGetMemoryInfo_v2", pynvml.NVMLError_FunctionNotFound)
    [r] = backend.read()
    assert r.mem_total == 85520809984
    assert r.mem_used == 503316480  # v1 counts the reserved part as used
    assert r.mem_reserved is None
    backend.read()
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == probed + 1


def test_not_supported_reads_none_not_zero(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_error("nvmlDeviceGetPowerUsage", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetUtilizationRates", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetRemappedRows", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetCurrentClocksEventReasons", pynvml.NVMLError_Unknown)
    [r] = backend.read()
    assert r.power_mw is None
    assert r.util_gpu is None
    assert r.util_mem is None
    assert r.remapped_correctable is None
    assert r.remap_pending is None
    assert r.clock_reasons is None
    assert r.lost is False
    assert r.temp_c == 39  # the rest of the GPU still reads


@pytest.mark.parametrize(
    ("function", "error", "field"),
    [
        ("nvmlDeviceGetTemperature", pynvml.NVMLError_NotReady, "temp_c"),
        ("nvmlDeviceGetCurrentClocksEventReasons", pynvml.NVMLError_Unknown, "clock_reasons"),
    ],
)
def test_unexpected_nvml_error_is_none_and_logged_once(
    open_backend: Any,
    caplog: pytest.LogCaptureFixture,
    function: str,
    error: type[Exception],
    field: str,
) -> None:
    backend, fake = open_backend()
    fake.set_error(function, error)
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        for _ in range(3):
            [r] = backend.read()
            assert getattr(r, field) is None
            assert r.lost is False
    lines = [rec for rec in caplog.records if function in rec.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None


def test_missing_pynvml_function_is_none_and_logged_once(
    open_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend, fake = open_backend()
    fake.remove("nvmlDeviceGetPowerUsage")
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        for _ in range(3):
            [r] = backend.read()
            assert r.power_mw is None
            assert r.temp_c == 39
    lines = [rec for rec in caplog.records if "nvmlDeviceGetPowerUsage" in rec.getMessage()]
    assert len(lines) == 1


def test_unexpected_exception_reading_one_gpu_stays_in_that_gpu(
    open_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend, fake = open_backend(gpus=2)
    fake.set_value("nvmlDeviceGetPowerUsage", "not a number", gpu=0)
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        for _ in range(3):
            odd, fine = backend.read()
            assert odd == GpuReading(index=0)
            assert fine.power_mw == 129212
    lines = [rec for rec in caplog.records if "ValueError" in rec.getMessage()]
    assert len(lines) == 1


@pytest.mark.parametrize(
    "error",
    [
        pynvml.NVMLError_NotSupported,
        pynvml.NVMLError_FunctionNotFound,
        pynvml.NVMLError_ArgumentVersionMismatch,
    ],
)
def test_memory_switches_to_v1_when_the_driver_lacks_v2(
    open_backend: Any, error: type[Exception]
) -> None:
    backend, fake = open_backend()
    probed = fake.calls["nvmlDeviceGetMemoryInfo_v2"]  # the probe at start reads memory too
    fake.set_error("nvmlDeviceGetMemoryInfo_v2", error)
    assert backend.read()[0].mem_used == 503316480
    fake.clear()
    assert backend.read()[0].mem_reserved is None  # stays on v1
    assert fake.calls["nvmlDeviceGetMemoryInfo_v2"] == probed + 1


def test_memory_stays_v2_after_a_transient_error(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_error("nvmlDeviceGetMemoryInfo_v2", pynvml.NVMLError_Unknown)
    [r] = backend.read()
    assert (r.mem_used, r.mem_total, r.mem_reserved) == (None, None, None)
    assert r.lost is False
    fake.clear()
    [r] = backend.read()
    assert r.mem_reserved == 480 * 1024 * 1024


def test_temperature_prefers_the_versioned_query(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_value("nvmlDeviceGetTemperatureV", 45)
    assert backend.read()[0].temp_c == 45
    assert fake.calls["nvmlDeviceGetTemperatureV"] >= 1


def test_temperature_falls_back_when_the_driver_lacks_v(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_error("nvmlDeviceGetTemperatureV", pynvml.NVMLError_FunctionNotFound)
    before = fake.calls["nvmlDeviceGetTemperatureV"]
    assert [backend.read()[0].temp_c for _ in range(3)] == [39, 39, 39]
    assert fake.calls["nvmlDeviceGetTemperatureV"] == before + 1


def test_temperature_and_clock_reasons_fall_back_in_an_older_pynvml(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make()
    fake.remove("nvmlDeviceGetTemperatureV")
    fake.remove("nvmlDeviceGetCurrentClocksEventReasons")
    fake.set_value("nvmlDeviceGetCurrentClocksThrottleReasons", 4)
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        backend = NvmlBackend(fake, clock=clock)
        try:
            [r] = backend.read()
        finally:
            backend.close()
    assert r.temp_c == 39
    assert r.clock_reasons == ["sw_power_cap"]
    assert caplog.records == []  # a known older name is no surprise


def test_clock_reasons_decode(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_value("nvmlDeviceGetCurrentClocksEventReasons", 4)
    assert backend.read()[0].clock_reasons == ["sw_power_cap"]
    fake.set_value("nvmlDeviceGetCurrentClocksEventReasons", 0x44)
    assert backend.read()[0].clock_reasons == ["sw_power_cap", "hw_thermal_slowdown"]


def test_unknown_pstate_is_none(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_value("nvmlDeviceGetPerformanceState", pynvml.NVML_PSTATE_UNKNOWN)
    assert backend.read()[0].pstate is None


def test_ecc_count_only_when_ecc_is_on(clock: FakeClock) -> None:
    fake = make(2)
    fake.set_value("nvmlDeviceGetEccMode", [0, 0], gpu=1)
    backend = NvmlBackend(fake, clock=clock)
    try:
        assert [g.ecc_enabled for g in backend.inventory().gpus] == [True, False]
        on, off = backend.read()
        assert on.ecc_uncorrected_volatile == 0
        assert off.ecc_uncorrected_volatile is None
    finally:
        backend.close()


def test_remapped_rows_pending_and_failure(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_value("nvmlDeviceGetRemappedRows", [2, 1, 1, 0])
    [r] = backend.read()
    assert (r.remapped_correctable, r.remapped_uncorrectable) == (2, 1)
    assert r.remap_pending is True
    assert r.remap_failure is False


# ---------------------------------------------------------------------------------------------
# Processes


def test_processes_joined_with_user_and_command(open_backend: Any) -> None:
    backend, fake = open_backend()
    me = os.getpid()
    ghost = nonexistent_pid()
    fake.set_processes(0, compute=[(me, 1 << 30), (ghost, None)], graphics=[(me, 1 << 30)])
    [r] = backend.read()
    assert r.processes is not None
    by_pid = {p.pid: p for p in r.processes}
    assert sorted(by_pid) == sorted([me, ghost])  # our pid once, though in both lists
    mine = by_pid[me]
    own = psutil.Process(me)
    assert mine.kind == "compute"
    assert mine.used_memory == 1 << 30
    assert mine.user == own.username()
    expected = " ".join(own.cmdline())
    if len(expected) > MAX_COMMAND_CHARS:
        expected = expected[: MAX_COMMAND_CHARS - 1] + "…"
    assert mine.command == expected
    other = by_pid[ghost]
    assert (other.user, other.command) == (None, None)
    assert other.used_memory is None  # NVML could not say; not 0


def test_graphics_only_process_is_kept(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_processes(0, graphics=[(os.getpid(), 4096)])
    [r] = backend.read()
    assert r.processes is not None
    assert [(p.kind, p.used_memory) for p in r.processes] == [("graphics", 4096)]


def test_process_lists_unsupported_is_none(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_error("nvmlDeviceGetComputeRunningProcesses", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetGraphicsRunningProcesses", pynvml.NVMLError_NotSupported)
    assert backend.read()[0].processes is None


@pytest.mark.parametrize("error", [pynvml.NVMLError_NotSupported, pynvml.NVMLError_Unknown])
def test_failed_compute_query_gives_unknown_processes(
    open_backend: Any, error: type[Exception]
) -> None:
    backend, fake = open_backend()
    fake.set_processes(0, graphics=[(os.getpid(), 4096)])
    fake.set_error("nvmlDeviceGetComputeRunningProcesses", error)
    assert backend.read()[0].processes is None  # not [] nor the graphics list alone


def test_process_query_library_mismatch_is_none_and_logged_once(
    open_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend, fake = open_backend()
    # A driver without the _v3 symbol: pynvml's throwOnVersionMismatch turns FunctionNotFound
    # into NVMLLibraryMismatchError, which is not an NVMLError.
    fake.set_error("nvmlDeviceGetComputeRunningProcesses", pynvml.NVMLError_FunctionNotFound)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        fake.nvmlDeviceGetComputeRunningProcesses(fake.nvmlDeviceGetHandleByIndex(0))
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        for _ in range(3):
            [r] = backend.read()
            assert r.processes is None
            assert r.lost is False
            assert r.temp_c == 39
    lines = [rec for rec in caplog.records if "RunningProcesses" in rec.getMessage()]
    assert len(lines) == 1


def test_process_table_caches_by_create_time(monkeypatch: pytest.MonkeyPatch) -> None:
    table = ProcessTable()
    calls = 0
    real_cmdline = psutil.Process.cmdline

    def counting_cmdline(self: psutil.Process) -> list[str]:
        nonlocal calls
        calls += 1
        result: list[str] = real_cmdline(self)
        return result

    monkeypatch.setattr(psutil.Process, "cmdline", counting_cmdline)
    first = table.lookup(os.getpid())
    second = table.lookup(os.getpid())
    assert first == second
    assert first[0] is not None
    assert calls == 1
    table.prune([])
    assert len(table) == 0
    table.lookup(os.getpid())
    assert calls == 2


def test_process_table_truncates_and_falls_back_to_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil.Process, "cmdline", lambda self: ["python", "x" * 500])
    _, command = ProcessTable().lookup(os.getpid())
    assert command is not None
    assert len(command) == MAX_COMMAND_CHARS
    assert command.startswith("python xxx")

    monkeypatch.setattr(psutil.Process, "cmdline", lambda self: [])
    _, command = ProcessTable().lookup(os.getpid())
    assert command == psutil.Process().name()


def test_process_table_unknown_pid() -> None:
    assert ProcessTable().lookup(nonexistent_pid()) == (None, None)


# ---------------------------------------------------------------------------------------------
# Lost and back


def test_gpu_lost_mid_sample_and_back_after_reprobe(open_backend: Any, clock: FakeClock) -> None:
    backend, fake = open_backend(gpus=3, reprobe_interval=5.0)
    assert all(not r.lost for r in backend.read())

    fake.set_error("nvmlDeviceGetTemperature", pynvml.NVMLError_GpuIsLost, gpu=1)
    readings = backend.read()
    assert readings[1] == GpuReading(index=1, lost=True)
    assert [r.index for r in readings] == [0, 1, 2]
    for other in (readings[0], readings[2]):
        assert other.lost is False
        assert other.temp_c == 39

    # While lost, nothing asks the lost GPU again before the re-probe interval.
    probes = fake.calls["nvmlDeviceGetTemperature"]
    clock.advance(4.9)
    assert backend.read()[1].lost
    assert fake.calls["nvmlDeviceGetTemperature"] == probes + 2  # GPUs 0 and 2 only

    # A re-probe while still broken keeps it lost and waits another interval.
    clock.advance(0.2)
    assert backend.read()[1].lost

    # The card comes back (after a reset, with a new power limit): re-probe, fresh inventory.
    fake.heal(1)
    fake.set_value("nvmlDeviceGetEnforcedPowerLimit", 600000, gpu=1)
    clock.advance(4.0)
    assert backend.read()[1].lost  # interval since the last probe not yet passed
    clock.advance(1.1)
    back = backend.read()[1]
    assert back.lost is False
    assert back.temp_c == 39
    assert back.power_mw == 129212
    assert backend.inventory().gpus[1].power_limit_mw == 600000
    assert backend.inventory().gpus[0].power_limit_mw == 700000


@pytest.mark.parametrize(
    "error",
    [pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_ResetRequired, pynvml.NVMLError_GpuNotFound],
)
def test_lost_like_errors_mark_the_gpu_lost(open_backend: Any, error: type[Exception]) -> None:
    backend, fake = open_backend(gpus=2)
    fake.set_error("nvmlDeviceGetClockInfo", error, gpu=0)
    lost, fine = backend.read()
    assert lost == GpuReading(index=0, lost=True)
    assert fine.lost is False


def test_gpu_answering_only_errors_is_lost(open_backend: Any) -> None:
    backend, fake = open_backend(gpus=2)
    for query in ("nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetMemoryInfo"):
        fake.set_error(query, pynvml.NVMLError_Unknown, gpu=0)
    lost, fine = backend.read()
    assert lost == GpuReading(index=0, lost=True)
    assert fine.lost is False


def test_core_reads_not_supported_is_not_lost(open_backend: Any) -> None:
    backend, fake = open_backend()
    fake.set_error("nvmlDeviceGetTemperature", pynvml.NVMLError_Unknown)
    fake.set_error("nvmlDeviceGetPowerUsage", pynvml.NVMLError_NotSupported)
    fake.set_error("nvmlDeviceGetMemoryInfo", pynvml.NVMLError_Unknown)
    [r] = backend.read()
    assert r.lost is False
    assert (r.temp_c, r.power_mw, r.mem_total) == (None, None, None)
    assert r.sm_clock_mhz == 1980


def test_reprobe_needs_real_answers_not_just_a_handle(clock: FakeClock) -> None:
    fake = make(2)
    fake.lose(1)
    backend = NvmlBackend(fake, clock=clock)
    try:
        assert backend.read()[1].lost
        fake.heal(1)
        fake.fail_queries(1, pynvml.NVMLError_Unknown)  # a handle, then nothing but errors
        clock.advance(5.0)
        assert backend.read()[1].lost
        fake.fail_queries(1, pynvml.NVMLError_ResetRequired)
        clock.advance(5.0)
        assert backend.read()[1].lost
        assert backend.inventory().gpus[1].uuid is None
        fake.heal(1)
        clock.advance(5.0)
        assert backend.read()[1].lost is False
        assert backend.inventory().gpus[1].name == "NVIDIA H100 80GB HBM3"
    finally:
        backend.close()


def test_inventory_after_back_keeps_facts_the_new_read_lacks(
    open_backend: Any, clock: FakeClock
) -> None:
    backend, fake = open_backend()
    serial = backend.inventory().gpus[0].serial
    assert serial is not None
    fake.lose(0)
    assert backend.read()[0].lost
    fake.heal(0)
    fake.set_error("nvmlDeviceGetSerial", pynvml.NVMLError_Unknown)
    fake.set_value("nvmlDeviceGetEnforcedPowerLimit", 600000)
    clock.advance(5.0)
    assert backend.read()[0].lost is False
    info = backend.inventory().gpus[0]
    assert info.serial == serial  # kept: the new read gave None
    assert info.power_limit_mw == 600000  # a new value still wins


def test_wholly_lost_gpu_reads_lost_and_skips_slow(open_backend: Any, clock: FakeClock) -> None:
    backend, fake = open_backend(gpus=2)
    fake.lose(0)
    lost, fine = backend.read()
    assert lost == GpuReading(index=0, lost=True)
    assert fine.lost is False
    assert fine.temp_c == 39
    slow = backend.read_slow()
    assert list(slow) == [1]
    fake.heal(0)
    clock.advance(5.0)
    assert backend.read()[0].lost is False
    assert sorted(backend.read_slow()) == [0, 1]


def test_gpu_lost_in_slow_read_marks_it_lost(open_backend: Any) -> None:
    backend, fake = open_backend(gpus=2)
    fake.set_error("nvmlDeviceGetPcieThroughput", pynvml.NVMLError_GpuIsLost, gpu=1)
    assert list(backend.read_slow()) == [0]
    assert backend.read()[1] == GpuReading(index=1, lost=True)


def test_slow_read_from_before_a_reprobe_cannot_mark_the_gpu_lost(
    open_backend: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, fake = open_backend(gpus=2)
    energy = fake.nvmlDeviceGetTotalEnergyConsumption
    raced: list[bool] = []

    def racing(handle: Any) -> int:
        if handle.index != 1 or raced:
            return int(energy(handle))
        raced.append(True)
        # While this slow read is in flight, the tick loses GPU 1 and re-probes it back ...
        fake.lose(1)
        assert backend.read()[1].lost
        fake.heal(1)
        clock.advance(5.0)
        assert backend.read()[1].lost is False
        # ... and then the slow read fails on the handle from before.
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(fake, "nvmlDeviceGetTotalEnergyConsumption", racing, raising=False)
    assert sorted(backend.read_slow()) == [0]
    assert raced
    assert backend.read()[1].lost is False


def test_gpu_lost_at_start_is_probed_later(clock: FakeClock) -> None:
    fake = make(2)
    fake.lose(1)
    backend = NvmlBackend(fake, clock=clock)
    try:
        info = backend.inventory().gpus[1]
        assert (info.index, info.uuid, info.name) == (1, None, None)
        assert backend.read()[1].lost
        fake.heal(1)
        clock.advance(5.0)
        assert backend.read()[1].lost is False
        assert backend.inventory().gpus[1].name == "NVIDIA H100 80GB HBM3"
    finally:
        backend.close()


def test_one_failed_temperature_read_at_start_is_no_value_not_a_lost_gpu(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A mock GPU (the fake replays the captured H100): the driver answers "Unknown" to the
    first temperature read only. The GPU is not lost (no lost event, no critical alert): its
    temperature is n/a for that read, with one warning naming the GPU and the query."""
    fake = make(2)
    fake.set_error("nvmlDeviceGetTemperatureV", pynvml.NVMLError_Unknown, gpu=1)
    with caplog.at_level(logging.INFO, logger="gpufleet.agents.gpu.nvml"):
        backend = NvmlBackend(fake, clock=clock)
        try:
            assert backend.inventory().gpus[1].uuid is not None
            first = backend.read()[1]
            assert first.lost is False and first.temp_c is None
            assert first.power_mw is not None and first.mem_total == 85520809984
            fake.clear("nvmlDeviceGetTemperatureV", gpu=1)
            assert backend.read()[1].temp_c == 39
        finally:
            backend.close()
    said = [r.getMessage() for r in caplog.records if "nvmlDeviceGetTemperatureV" in r.getMessage()]
    assert len(said) == 2, said  # the failure once (start and first tick), then its recovery
    assert said[0].startswith("GPU 1: nvmlDeviceGetTemperatureV:")
    assert said[1] == "GPU 1: nvmlDeviceGetTemperatureV answers again"
    assert not [r for r in caplog.records if "lost" in r.getMessage()]


def test_a_gpu_whose_every_core_reading_fails_at_start_is_lost(clock: FakeClock) -> None:
    fake = make(2)
    for query in (
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetMemoryInfo",
    ):
        fake.set_error(query, pynvml.NVMLError_Unknown, gpu=0)
    fake.set_error("nvmlDeviceGetMemoryInfo_v2", pynvml.NVMLError_Unknown, gpu=0)
    backend = NvmlBackend(fake, clock=clock)
    try:
        assert backend.read()[0] == GpuReading(index=0, lost=True)
        assert backend.read()[1].lost is False
        fake.clear()
        clock.advance(5.0)
        assert backend.read()[0].lost is False
    finally:
        backend.close()


def test_a_uuid_that_fails_at_start_is_unknown_not_a_lost_gpu(clock: FakeClock) -> None:
    fake = make(1)
    fake.set_error("nvmlDeviceGetUUID", pynvml.NVMLError_Unknown)
    backend = NvmlBackend(fake, clock=clock)
    try:
        info = backend.inventory().gpus[0]
        assert info.uuid is None and info.name == "NVIDIA H100 80GB HBM3"
        assert backend.read()[0].lost is False
    finally:
        backend.close()


def test_a_failing_query_is_logged_once_per_gpu_and_again_after_it_recovers(
    open_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend, fake = open_backend(gpus=2)
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        fake.set_error("nvmlDeviceGetPowerUsage", pynvml.NVMLError_Unknown)
        for _ in range(3):
            assert [r.power_mw for r in backend.read()] == [None, None]
        fake.clear("nvmlDeviceGetPowerUsage")
        assert None not in [r.power_mw for r in backend.read()]
        fake.set_error("nvmlDeviceGetPowerUsage", pynvml.NVMLError_Unknown, gpu=0)
        backend.read()
    said = [r.getMessage() for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.getMessage()]
    assert [m.split(":")[0] for m in said] == ["GPU 0", "GPU 1", "GPU 0"], said


# ---------------------------------------------------------------------------------------------
# Slow reads


def test_read_slow_gives_captured_values(open_backend: Any) -> None:
    backend, _ = open_backend()
    slow = backend.read_slow()
    assert slow == {0: {"energy_mj": 8845614, "pcie_tx_kbs": 1332, "pcie_rx_kbs": 427}}
    assert set(slow[0]) == set(NVML_SLOW_FIELDS) < set(SLOW_FIELDS)


def test_energy_is_read_at_most_once_a_minute(open_backend: Any, clock: FakeClock) -> None:
    """Its 4.2 ms of CPU per call (the driver spins) is paid once a minute, not every slow
    tick; between reads the last value stands, and a clock gone back reads it again."""
    backend, fake = open_backend()
    backend.read_slow()
    for _ in range(11):  # a minute of 5 s slow ticks
        clock.advance(5.0)
        assert backend.read_slow()[0]["energy_mj"] == 8845614
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 2 * 12
    clock.advance(5.0)
    backend.read_slow()
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2
    clock.advance(-3600.0)
    backend.read_slow()
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 3


def test_hbm_temperature_field_errors_and_types(open_backend: Any) -> None:
    backend, fake = open_backend(gpus=3)
    fake.set_field(0, "NVML_FI_DEV_MEMORY_TEMP", ret=pynvml.NVML_ERROR_NOT_SUPPORTED)
    fake.set_field(1, "NVML_FI_DEV_MEMORY_TEMP", 41.6)
    fake.set_field(2, "NVML_FI_DEV_MEMORY_TEMP", ret=pynvml.NVML_ERROR_GPU_IS_LOST)
    r0, r1, r2 = backend.read()
    assert r0.temp_mem_c is None
    assert r0.temp_c is not None
    assert r1.temp_mem_c == 42
    assert r2.lost and r2.temp_mem_c is None  # GpuIsLost from the field: the GPU is lost


# ---------------------------------------------------------------------------------------------
# XID events


def test_xid_reaches_drain_events(open_backend: Any, clock: FakeClock) -> None:
    backend, fake = open_backend(gpus=3)
    assert backend.drain_events() == []
    backend.start_events()
    wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] >= 2, "two waits timing out (no event)", 5)
    fake.inject_xid(2, 79)
    events = collect_events(backend)
    assert events == [XidEvent(gpu=2, xid=79, ts=clock.now)]
    assert backend.drain_events() == []


def test_device_refusing_events_is_skipped(
    open_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend, fake = open_backend(gpus=2)
    fake.set_error("nvmlDeviceRegisterEvents", pynvml.NVMLError_NotSupported, gpu=0)
    with caplog.at_level(logging.WARNING, logger="gpufleet.agents.gpu.nvml"):
        backend.start_events()
    refusals = [r for r in caplog.records if "GPU 0" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].exc_info is None
    fake.inject_xid(1, 48)
    events = collect_events(backend)
    assert [(e.gpu, e.xid) for e in events] == [(1, 48)]


def test_xid_on_a_gpu_lost_at_start_arrives_once_it_is_back(clock: FakeClock) -> None:
    fake = make(2)
    fake.lose(1)
    backend = NvmlBackend(fake, clock=clock)
    try:
        backend.start_events()
        wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] >= 1, "the event thread waiting", 5)
        fake.heal(1)
        clock.advance(5.0)
        assert backend.read()[1].lost is False
        fake.inject_xid(1, 79)
        assert [(e.gpu, e.xid) for e in collect_events(backend)] == [(1, 79)]
    finally:
        backend.close()


def test_xids_keep_arriving_after_a_watched_gpu_is_lost(
    open_backend: Any, clock: FakeClock
) -> None:
    backend, fake = open_backend(gpus=2)
    backend.start_events()
    wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] >= 1, "the event thread waiting", 5)
    fake.lose(0)  # every wait on a set holding GPU 0 now raises GpuIsLost
    fake.inject_xid(1, 48)
    assert [(e.gpu, e.xid) for e in collect_events(backend)] == [(1, 48)]

    assert backend.read()[0].lost
    fake.heal(0)
    clock.advance(5.0)
    assert backend.read()[0].lost is False
    fake.inject_xid(0, 79)  # GPU 0 is watched again, through its new handle
    assert [(e.gpu, e.xid) for e in collect_events(backend)] == [(0, 79)]
    assert all(s.freed for s in fake.event_sets[:-1])


def test_close_stops_the_event_thread_and_shuts_down(clock: FakeClock) -> None:
    fake = make(1)
    backend = NvmlBackend(fake, clock=clock)
    backend.start_events()
    wait_for(lambda: fake.calls["nvmlEventSetWait_v2"] >= 1, "the event thread waiting", 5)
    threads_before = {t.name for t in threading.enumerate()}
    assert "gpufleet-nvml-xid" in threads_before
    backend.close()
    assert "gpufleet-nvml-xid" not in {t.name for t in threading.enumerate()}
    assert fake.event_sets[0].freed
    assert fake.shutdown_calls == 1
    assert not fake.initialized
    backend.close()
    assert fake.shutdown_calls == 1


# ---------------------------------------------------------------------------------------------
# Start-up


def test_init_failure_is_backend_unavailable() -> None:
    fake = make(init_error=pynvml.NVMLError_LibraryNotFound)
    with pytest.raises(BackendUnavailable) as info:
        NvmlBackend(fake)
    message = str(info.value)
    assert message == "NVML library not found (no NVIDIA driver on this host)"
    assert "\n" not in message


def test_other_init_failures_say_why() -> None:
    fake = make(init_error=pynvml.NVMLError_DriverNotLoaded)
    with pytest.raises(BackendUnavailable, match="driver not loaded"):
        NvmlBackend(fake)


def test_real_pynvml_without_driver_is_unavailable_or_works() -> None:
    """On dev machines the real library is absent; on a GPU node the backend opens."""
    outcome: NvmlBackend | BackendUnavailable
    try:
        outcome = NvmlBackend()
    except BackendUnavailable as exc:
        outcome = exc
    if isinstance(outcome, BackendUnavailable):
        message = str(outcome)
        assert message
        assert "\n" not in message
        return
    try:
        assert outcome.inventory().backend == "nvml"
        assert len(outcome.read()) == len(outcome.inventory().gpus)
    finally:
        outcome.close()
