"""Text output: a reading the hardware did not give prints as n/a, never as 0."""

from __future__ import annotations

from typing import Any

from agents.protocol import (
    IDLE_UTIL_PERCENT,
    Event,
    GpuInfo,
    GpuProcess,
    GpuReading,
    HostInfo,
    HostReading,
    Inventory,
    NodeState,
    Sample,
)
from agents.render import NA, frame_line, gpu_table, host_line, inventory_header, sample_report

# Column widths of gpu_table, in order (the 2 is the gap before CLOCK REASONS).
WIDTHS = [4, 24, 5, 14, 6, 5, 12, 8, 2, 20, 5, 10, 6]
NAMES = [
    "GPU",
    "NAME",
    "UTIL",
    "MEM",
    "TEMP",
    "HBM",
    "POWER",
    "SM",
    "",
    "REASONS",
    "ECC",
    "REMAP",
    "PROCS",
]

INFO = GpuInfo(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", power_limit_mw=700_000)


def columns(row: str) -> dict[str, str]:
    out = {}
    pos = 0
    for name, width in zip(NAMES, WIDTHS, strict=True):
        out[name] = row[pos : pos + width].strip()
        pos += width
    assert pos == len(row), (pos, len(row), row)
    return out


def host(**kw: Any) -> HostReading:
    base: dict[str, Any] = {
        "cpu_percent": None,
        "cpu_per_core": None,
        "load": None,
        "mem_total": 64 << 30,
        "mem_used": 8 << 30,
        "mem_available": 56 << 30,
        "swap_total": 0,
        "swap_used": 0,
        "disk_read_bps": None,
        "disk_write_bps": None,
        "net_rx_bps": None,
        "net_tx_bps": None,
        "uptime_s": 7200.0,
        "boot_id": None,
    }
    base.update(kw)
    return HostReading(**base)


def test_header_and_rows_line_up() -> None:
    rows = gpu_table([GpuReading(index=0)], [INFO])
    header = columns(rows[0])
    assert header["UTIL"] == "UTIL"
    assert header["MEM"] == "MEM GiB"
    assert header["PROCS"] == "PROCS"


def test_missing_readings_print_na_not_zero() -> None:
    rows = gpu_table([GpuReading(index=0)], [GpuInfo(index=0, uuid=None, name=None)])
    assert len(rows) == 2
    cols = columns(rows[1])
    assert cols["GPU"] == "0"
    assert cols["NAME"] == NA
    assert cols["UTIL"] == NA
    assert cols["MEM"] == f"{NA}/{NA}"
    assert cols["TEMP"] == NA
    assert cols["HBM"] == NA
    assert cols["POWER"] == f"{NA}/{NA}"
    assert cols["SM"] == NA
    assert cols["REASONS"] == NA
    assert cols["ECC"] == NA
    assert cols["REMAP"] == NA
    assert cols["PROCS"] == NA
    assert "0" not in rows[1][4:]  # no zero anywhere past the index


def test_zero_readings_print_zero_not_na() -> None:
    r = GpuReading(
        index=0,
        util_gpu=0,
        mem_used=0,
        mem_total=0,
        temp_c=0,
        temp_mem_c=0,
        power_mw=0,
        sm_clock_mhz=0,
        clock_reasons=[],
        ecc_uncorrected_volatile=0,
        remapped_correctable=0,
        remapped_uncorrectable=0,
        remap_pending=False,
        processes=[],
    )
    cols = columns(gpu_table([r], [INFO])[1])
    assert cols["UTIL"] == "0%"
    assert cols["MEM"] == "0.0/0.0"
    assert cols["TEMP"] == "0C"
    assert cols["HBM"] == "0C"
    assert cols["POWER"] == "0/700"
    assert cols["SM"] == "0"
    assert cols["REASONS"] == "-"
    assert cols["ECC"] == "0"
    assert cols["REMAP"] == "0"
    assert cols["PROCS"] == "0"
    assert NA not in gpu_table([r], [INFO])[1]


def test_mixed_known_and_unknown_columns() -> None:
    r = GpuReading(
        index=1,
        util_gpu=97,
        mem_used=40 << 30,
        mem_total=None,
        temp_c=None,
        power_mw=699_000,
        sm_clock_mhz=1410,
        clock_reasons=["sw_power_cap"],
        ecc_uncorrected_volatile=None,
        remapped_uncorrectable=2,
        remap_pending=True,
        processes=[GpuProcess(pid=1, used_memory=None)],
    )
    info = GpuInfo(index=1, uuid=None, name="H100", power_limit_mw=None)
    cols = columns(gpu_table([r], [info])[1])
    assert cols["NAME"] == "H100"
    assert cols["UTIL"] == "97%"
    assert cols["MEM"] == f"40.0/{NA}"
    assert cols["TEMP"] == NA
    assert cols["POWER"] == f"699/{NA}"
    assert cols["SM"] == "1410"
    assert cols["REASONS"] == "power cap", "in the words every view uses"
    assert cols["ECC"] == NA
    assert cols["REMAP"] == "2 PENDING"
    assert cols["PROCS"] == "1"


def test_lost_gpu_prints_as_lost() -> None:
    rows = gpu_table([GpuReading(index=3, lost=True)], [GpuInfo(index=3, uuid=None, name="H100")])
    row = rows[1]
    assert row.startswith("3   H100")
    assert "LOST" in row
    assert NA not in row  # no columns of unknowns: the whole GPU is gone
    assert "%" not in row


def test_gpu_without_info_still_prints() -> None:
    rows = gpu_table([GpuReading(index=9, util_gpu=5)], [])
    cols = columns(rows[1])
    assert cols["NAME"] == NA
    assert cols["UTIL"] == "5%"


def test_host_line_missing_rates_print_na() -> None:
    line = host_line(host())
    assert f"cpu {NA}" in line
    assert f"load {NA}" in line
    assert f"disk r {NA} w {NA}" in line
    assert f"net rx {NA} tx {NA}" in line
    assert "up 2.0 h" in line


def test_host_line_zero_rates_print_zero() -> None:
    line = host_line(
        host(
            cpu_percent=0.0,
            load=(0.0, 0.0, 0.0),
            disk_read_bps=0.0,
            disk_write_bps=0.0,
            net_rx_bps=0.0,
            net_tx_bps=2_500_000.0,
        )
    )
    assert "cpu 0.0%" in line
    assert "load 0.00 0.00 0.00" in line
    assert "disk r 0 B/s w 0 B/s" in line
    assert "net rx 0 B/s tx 2 MB/s" in line
    assert NA not in line


def _inventory(state: NodeState | None) -> Inventory:
    return Inventory(
        node="n1",
        backend="sim",
        host=HostInfo(hostname="n1", kernel="6.8", cpu_count=1, memory_total=1, boot_id=None),
        gpus=[INFO],
        state=state,
    )


def test_inventory_header_unknown_versions_and_state() -> None:
    text = inventory_header(_inventory(None))
    assert f"driver {NA}" in text
    assert f"CUDA {NA}" in text
    assert f"state {NA}" in text
    text = inventory_header(_inventory(NodeState(state="drained", reason="xid")))
    assert "state drained (xid)" in text


def test_frame_line_sample_with_lost_and_unknown_temps() -> None:
    sample = Sample(
        seq=4,
        ts=1.0,
        host=host(),
        gpus=[
            GpuReading(index=0, lost=True),
            GpuReading(index=1, util_gpu=90, power_mw=None),
            GpuReading(index=2, util_gpu=20),  # computing: busy, as the screen's totals say
            GpuReading(index=3, util_gpu=IDLE_UTIL_PERCENT),  # idle, as everywhere else
        ],
    )
    line = frame_line(sample)
    assert "LOST 1" in line
    assert "busy 2/4" in line
    assert f"hottest {NA}" in line
    assert f"cpu {NA}" in line


def test_frame_line_event_and_report() -> None:
    assert "gpu_lost: GPU 0 is lost" in frame_line(
        Event(seq=2, ts=1.0, kind="gpu_lost", gpu=0, message="GPU 0 is lost")
    )
    report = sample_report(
        _inventory(NodeState()),
        Sample(seq=1, ts=1.0, host=host(), gpus=[GpuReading(index=0, lost=True)]),
    )
    assert "LOST" in report
    assert report.splitlines()[0].startswith("node n1")
