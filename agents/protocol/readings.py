"""What a node reports: the building blocks of the frames (GPU and host readings, the ops
state, audit entries) and the vocabularies shown wherever they are (clock reasons, event kinds).
Readings the hardware did not give are ``None``: never 0, never a sentinel string."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

from agents.protocol.errors import clip

OpsState = Literal["schedulable", "draining", "drained"]
Role = Literal["viewer", "operator"]
EventKind = Literal[
    "xid", "ecc", "remap_pending", "slowdown", "gpu_lost", "gpu_back", "state", "notice"
]


#: Clocks-event ("throttle") reasons, the one table of them: the name a reason has in the
#: protocol, in ``GpuReading.clock_reasons`` and in the metrics' ``reason`` label (NVML's
#: ``nvmlClocksEventReason*``, decoded by ``agents.gpu.clocks``), its NVML bit, and the words an
#: operator reads wherever it is shown (node view, alerts, events, ``status``, the agent's own
#: table): one vocabulary, so a reason reads the same in every view.
CLOCK_REASONS: Final[dict[str, tuple[int, str]]] = {
    "gpu_idle": (0x001, "idle"),
    "applications_clocks_setting": (0x002, "application clocks"),
    "sw_power_cap": (0x004, "power cap"),
    "hw_slowdown": (0x008, "HW slowdown"),
    "sync_boost": (0x010, "sync boost"),
    "sw_thermal_slowdown": (0x020, "thermal (SW)"),
    "hw_thermal_slowdown": (0x040, "thermal (HW)"),
    "hw_power_brake_slowdown": (0x080, "power brake (HW)"),
    "display_clock_setting": (0x100, "display clocks"),
}


def clock_reason_words(names: Iterable[str]) -> str:
    """Reasons as an operator says them, in NVML's bit order; a name not in the table (a newer
    driver's, ``bit_0x...``) as it came, last, so none is hidden."""
    unknown = 1 << 62
    ordered = sorted(names, key=lambda n: CLOCK_REASONS.get(n, (unknown, ""))[0])
    return ", ".join(CLOCK_REASONS[n][1] if n in CLOCK_REASONS else n for n in ordered)


#: Clocks-event reasons (``GpuReading.clock_reasons``) that mean heat or an external brake is
#: holding the GPU back, as opposed to its own power budget (``sw_power_cap``, the normal state
#: of a busy GPU): the agent raises a ``slowdown`` event for them, the console an alert.
ALARMING_REASONS: Final = frozenset(
    {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


class GpuInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What does not change while the agent runs: read once at start (and on re-probe)."""

    index: int
    uuid: str | None
    name: str | None
    serial: str | None = None
    pci_bus_id: str | None = None
    memory_total: int | None = None  # bytes
    power_limit_mw: int | None = None  # enforced limit, milliwatts
    temp_slowdown_c: int | None = None
    temp_shutdown_c: int | None = None
    temp_mem_max_c: int | None = None
    mig_enabled: bool | None = None
    persistence_mode: bool | None = None
    ecc_enabled: bool | None = None
    pcie_max_width: int | None = None
    pcie_max_gen: int | None = None
    sm_clock_max_mhz: int | None = None


class HostInfo(msgspec.Struct, kw_only=True, frozen=True):
    hostname: str
    kernel: str
    cpu_count: int
    memory_total: int  # bytes
    boot_id: str | None


class GpuProcess(msgspec.Struct, kw_only=True, frozen=True):
    """A process using a GPU, joined with the host's view of it.

    ``user`` and ``command`` are ``None`` when the PID is not visible from the agent's PID
    namespace (containers) or exited between the two reads.
    """

    pid: int
    used_memory: int | None  # bytes
    kind: Literal["compute", "graphics"] = "compute"
    user: str | None = None
    command: str | None = None


class GpuReading(msgspec.Struct, kw_only=True, frozen=True):
    """One GPU at one tick. Units are NVML's own, named in the field: mW, MHz, bytes, °C."""

    index: int
    lost: bool = False
    util_gpu: int | None = None  # percent
    util_mem: int | None = None  # percent
    mem_used: int | None = None
    mem_total: int | None = None
    mem_reserved: int | None = None
    temp_c: int | None = None
    temp_mem_c: int | None = None  # HBM, slow cadence
    power_mw: int | None = None
    energy_mj: int | None = None  # since driver load, slow cadence
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    clock_reasons: list[str] | None = None  # decoded names, see agents.gpu.clocks
    pstate: int | None = None
    ecc_uncorrected_volatile: int | None = None
    remapped_correctable: int | None = None
    remapped_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_tx_kbs: int | None = None  # slow cadence
    pcie_rx_kbs: int | None = None  # slow cadence
    pcie_width: int | None = None
    processes: list[GpuProcess] | None = None


def slowdown_reasons(r: GpuReading) -> frozenset[str]:
    """The clocks-event reasons set on the reading that are an alarm (``ALARMING_REASONS``):
    what the agent's ``slowdown`` event, the console's alert and the node view's highlight all
    go by, so none of them sees a slowdown the others do not."""
    return ALARMING_REASONS.intersection(r.clock_reasons or ())


#: The utilization (percent) an idle GPU may read: at or below it a GPU is not computing. An
#: idle card reads a few percent now and then (the driver's own work, a monitoring read), so
#: "above 0" would call it busy; a job computing reads far above (90 to 100 on the H100).
IDLE_UTIL_PERCENT: Final = 5


def computing(r: GpuReading) -> bool:
    """Whether the GPU is computing now: its utilization above what an idle card reads
    (``IDLE_UTIL_PERCENT``). This is what "busy" means where GPUs are counted by their load
    (the fleet's totals: busy or idle). It is not the same as work being on the GPU
    (``at_work``): a job that holds a GPU but waits (on data, on a peer, on a debugger) is not
    computing, yet a drain must wait for it."""
    return not r.lost and (r.util_gpu or 0) > IDLE_UTIL_PERCENT


def at_work(r: GpuReading) -> bool:
    """Whether work is still on the GPU: a process listed, or computing with none listed (work
    in another PID namespace lists no process, design.md §2). The one rule for a drain waiting
    for the GPUs and a reset refusing a busy one, on the agent, and for the console checking
    before it asks or warning that the process list it shows is short."""
    return not r.lost and (bool(r.processes) or computing(r))


class HostReading(msgspec.Struct, kw_only=True, frozen=True):
    """The host at one tick. Rates are per second since the previous tick (None on the first);
    the slow cadence's fields (per core, swap, disk, network) since the previous slow read."""

    cpu_percent: float | None
    cpu_per_core: list[float] | None  # slow cadence
    load: tuple[float, float, float] | None
    mem_total: int
    mem_used: int
    mem_available: int
    swap_total: int
    swap_used: int
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    uptime_s: float
    boot_id: str | None


class NodeState(msgspec.Struct, kw_only=True, frozen=True):
    """The node's operational state, owned and persisted by the agent."""

    state: OpsState = "schedulable"
    pool: str | None = None
    reason: str | None = None
    who: str | None = None
    since: float | None = None  # unix time of the last change
    #: draining: unix time the drain was given until; past it with work still running the
    #: node stays DRAINING (DRAINED means no work) and the agent says so once.
    deadline: float | None = None
    #: restart node: the boot id it was rebooted from; the agent resumes the node when it
    #: starts on another boot (drain, reboot, back in service: what "restart" means).
    resume_after_boot: str | None = None


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One line of the node's audit log: every action, accepted or refused."""

    ts: float
    who: str
    uid: int
    op: str
    args: dict[str, Any]
    result: Literal["ok", "refused", "failed"]
    message: str | None = None
    before: NodeState | None = None
    after: NodeState | None = None
    request_id: int | None = None

    def columns(self) -> tuple[str, str, str, str, str]:
        """When (UTC), who, what, the result, and why: the reason given, then what the agent
        said; each clipped (escaped, bounded), as text from a peer must be."""
        import datetime as dt

        at = dt.datetime.fromtimestamp(self.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = self.args.get("reason")
        why = "; ".join(str(x) for x in (reason, self.message) if x)
        return at, clip(self.who, 64), clip(self.op, 64), clip(self.result, 64), clip(why, 400)

    def line(self) -> str:
        """One line for a person (both sides print the log this way)."""
        return clip("  ".join(self.columns()).rstrip(), 400)
