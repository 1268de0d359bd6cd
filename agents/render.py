"""Plain-text views of frames for the agent's own commands (``once``, ``watch``, ``demo``).

A missing reading prints as ``n/a``, never as 0: on an SXM H100 "no fan" is not "fan at 0 %".
"""

from __future__ import annotations

from agents.protocol import (
    Error,
    Event,
    Frame,
    GpuInfo,
    GpuReading,
    Hello,
    HostReading,
    Inventory,
    Response,
    Sample,
    clock_reason_words,
    computing,
)

NA = "n/a"
GIB = 1 << 30


def _num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return NA if value is None else fmt.format(value) + unit


def _gib(value: int | None) -> str:
    return NA if value is None else f"{value / GIB:.1f}"


def _rate(bps: float | None) -> str:
    if bps is None:
        return NA
    for unit in ("B", "kB", "MB", "GB"):
        if bps < 1000:
            return f"{bps:.0f} {unit}/s"
        bps /= 1000
    return f"{bps:.0f} TB/s"


def _reasons(r: GpuReading) -> str:
    if r.clock_reasons is None:
        return NA
    return clock_reason_words(r.clock_reasons) or "-"


def _remap(r: GpuReading) -> str:
    if r.remap_pending is None:
        return NA
    rows = (r.remapped_correctable or 0) + (r.remapped_uncorrectable or 0)
    return f"{rows}{' PENDING' if r.remap_pending else ''}"


def gpu_table(gpus: list[GpuReading], infos: list[GpuInfo]) -> list[str]:
    by_index = {g.index: g for g in infos}
    rows = [
        f"{'GPU':<4}{'NAME':<24}{'UTIL':>5}{'MEM GiB':>14}{'TEMP':>6}{'HBM':>5}"
        f"{'POWER W':>12}{'SM MHz':>8}  {'CLOCK REASONS':<20}{'ECC':>5}{'REMAP':>10}{'PROCS':>6}"
    ]
    for r in gpus:
        info = by_index.get(r.index)
        name = (info.name if info and info.name else NA)[:23]
        if r.lost:
            rows.append(f"{r.index:<4}{name:<24}  GPU LOST: not answering the driver")
            continue
        limit = info.power_limit_mw if info else None
        power = f"{_num(r.power_mw and r.power_mw / 1000)}/{_num(limit and limit / 1000)}"
        procs = NA if r.processes is None else str(len(r.processes))
        rows.append(
            f"{r.index:<4}{name:<24}{_num(r.util_gpu, unit='%'):>5}"
            f"{_gib(r.mem_used) + '/' + _gib(r.mem_total):>14}{_num(r.temp_c, unit='C'):>6}"
            f"{_num(r.temp_mem_c, unit='C'):>5}{power:>12}{_num(r.sm_clock_mhz):>8}  "
            f"{_reasons(r):<20}{_num(r.ecc_uncorrected_volatile):>5}{_remap(r):>10}{procs:>6}"
        )
    return rows


def host_line(h: HostReading) -> str:
    load = NA if h.load is None else " ".join(f"{x:.2f}" for x in h.load)
    return (
        f"host: cpu {_num(h.cpu_percent, '{:.1f}', '%')}  load {load}  "
        f"mem {_gib(h.mem_used)}/{_gib(h.mem_total)} GiB  swap {_gib(h.swap_used)} GiB  "
        f"disk r {_rate(h.disk_read_bps)} w {_rate(h.disk_write_bps)}  "
        f"net rx {_rate(h.net_rx_bps)} tx {_rate(h.net_tx_bps)}  up {h.uptime_s / 3600:.1f} h"
    )


def inventory_header(inv: Inventory) -> str:
    versions = f"driver {inv.driver_version or NA}  CUDA {inv.cuda_version or NA}"
    note = f"  ({inv.backend_note})" if inv.backend_note else ""
    if inv.state is None:
        state = NA
    else:
        state = inv.state.state + (f" ({inv.state.reason})" if inv.state.reason else "")
    return (
        f"node {inv.node}  backend {inv.backend}  {versions}  "
        f"{len(inv.gpus)} GPU{'' if len(inv.gpus) == 1 else 's'}  state {state}{note}"
    )


def sample_report(inv: Inventory, sample: Sample) -> str:
    """The ``once`` table."""
    return "\n".join(
        [inventory_header(inv), *gpu_table(sample.gpus, inv.gpus), host_line(sample.host)]
    )


def frame_line(frame: Frame) -> str:
    """One line per frame for ``watch``: enough to see the stream is alive and what it says."""
    if isinstance(frame, Sample):
        busy = sum(1 for g in frame.gpus if computing(g))
        lost = sum(1 for g in frame.gpus if g.lost)
        power = sum(g.power_mw or 0 for g in frame.gpus) / 1000
        hottest = max((g.temp_c for g in frame.gpus if g.temp_c is not None), default=None)
        tag = "history" if frame.replay else "sample"
        return (
            f"{tag:<8} #{frame.seq:<6} gpus busy {busy}/{len(frame.gpus)}"
            f"{f' LOST {lost}' if lost else ''}  power {power:.0f} W  "
            f"hottest {_num(hottest, unit='C')}  cpu {_num(frame.host.cpu_percent, '{:.1f}', '%')}"
        )
    if isinstance(frame, Event):
        return f"event    #{frame.seq:<6} {frame.kind}: {frame.message}"
    if isinstance(frame, Inventory):
        return f"inventory {inventory_header(frame)}"
    if isinstance(frame, Hello):
        return f"hello    {frame.software} protocol {frame.proto} node {frame.node}"
    if isinstance(frame, Response):
        body = frame.result if frame.ok else f"{frame.code}: {frame.error}"
        return f"response #{frame.id} {'ok' if frame.ok else 'refused'} {body}"
    if isinstance(frame, Error):
        return f"error    {frame.code}: {frame.message}"
    return type(frame).__name__.lower()
