"""The real GPU backend: NVML through nvidia-ml-py (``pynvml``).

What the H100 capture taught us (design.md §2) shapes this module:

- Many queries raise ``NotSupported`` on perfectly healthy cards (an SXM board has no fan), so
  every query goes through ``_call``, the one place where NVML errors become "no value" (None,
  never 0) or a lost GPU. No other code here catches NVML errors from a read.
- The cheap queries cost microseconds and run on every tick (``read``); energy, HBM temperature
  (field values, ~3 ms) and PCIe throughput (~21 ms, it blocks for its sample window) would
  stall the tick, so they live in ``read_slow``, which the sampler runs on its own thread.
- ``nvmlInit`` costs ~14 ms: it runs once, and device handles are kept.
- XID events need a blocking wait, so they get a daemon thread of their own.

The backend never decides what an operator is told about a GPU that vanished or returned; it
only reports ``lost`` per reading and the sampler turns flag transitions into events.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Literal

from agents.gpu.base import BackendUnavailable, GpuInventory, XidEvent
from agents.gpu.clocks import decode_clock_reasons
from agents.gpu.procinfo import ProcessTable
from agents.protocol import GpuInfo, GpuProcess, GpuReading

log = logging.getLogger("gpufleet.agent.nvml")

#: NVML errors that mean "this card or driver cannot give that value": a missing value, not a
#: fault. ``Unknown`` is here because drivers use it for quirks of single queries (nvitop does
#: the same); a card that is really gone says ``GpuIsLost``.
_NO_VALUE_ERRORS: Final = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_InvalidArgument",
    "NVMLError_NoPermission",
    "NVMLError_Unknown",
)

#: How long one ``nvmlEventSetWait_v2`` blocks: the longest ``close`` waits for the thread.
EVENT_WAIT_MS: Final = 500

#: Bound on undrained XIDs, so a sampler that stopped draining cannot make us grow forever; a
#: storm beyond this keeps the newest.
MAX_QUEUED_EVENTS: Final = 1024

#: Value-type code of ``nvmlFieldValue_t`` -> member of its value union (nvml.h order).
_FIELD_VALUE_MEMBERS: Final[dict[str, str]] = {
    "NVML_VALUE_TYPE_DOUBLE": "dVal",
    "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
    "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
}

ProcessKind = Literal["compute", "graphics"]


class _GpuLost(Exception):
    """NVML said GpuIsLost: unwinds the reads of that one GPU to where it is marked lost."""


@dataclass(slots=True)
class _Gpu:
    """Our mutable view of one device; transitions of ``lost`` happen under the backend lock."""

    index: int
    handle: Any
    info: GpuInfo
    lost: bool = False
    next_probe: float = 0.0
    memory_v2: bool = True  # until the driver shows it has no v2 memory query


class NvmlBackend:
    """GPU readings from NVML; see the module docstring for what runs where and why."""

    name: Literal["nvml"] = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        *,
        clock: Callable[[], float] = time.time,
        reprobe_interval: float = 5.0,
    ) -> None:
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError:
                raise BackendUnavailable("nvidia-ml-py (pynvml) is not installed") from None
        self._nvml = nvml
        self._clock = clock
        self._reprobe_interval = reprobe_interval
        self._nvml_error: type[Exception] = nvml.NVMLError
        self._lost_error: type[Exception] = nvml.NVMLError_GpuIsLost
        self._timeout_error: type[Exception] = nvml.NVMLError_Timeout
        self._no_value_errors: tuple[type[Exception], ...] = tuple(
            getattr(nvml, name) for name in _NO_VALUE_ERRORS if hasattr(nvml, name)
        )
        self._value_members: dict[int, str] = {
            getattr(nvml, const): member
            for const, member in _FIELD_VALUE_MEMBERS.items()
            if hasattr(nvml, const)
        }
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._events: deque[XidEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self._event_thread: threading.Thread | None = None
        self._event_set: Any = None
        self._processes = ProcessTable()
        self._closed = False

        try:
            nvml.nvmlInit()
        except self._nvml_error as exc:
            raise BackendUnavailable(_init_failure(nvml, exc)) from None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except self._nvml_error as exc:
            self._shutdown()
            raise BackendUnavailable(f"NVML could not count GPUs: {_error_text(exc)}") from None

        self._driver_version = _text(self._system("nvmlSystemGetDriverVersion"))
        self._nvml_version = _text(self._system("nvmlSystemGetNVMLVersion"))
        cuda = self._system("nvmlSystemGetCudaDriverVersion_v2")
        if cuda is None:
            cuda = self._system("nvmlSystemGetCudaDriverVersion")
        self._cuda_version = _cuda_text(cuda)

        now = self._clock()
        self._gpus = [self._open_gpu(index, now) for index in range(count)]
        self._inventory = self._build_inventory()

    # -----------------------------------------------------------------------------------------
    # GpuBackend

    def inventory(self) -> GpuInventory:
        """The cached facts; an entry is re-read only when its GPU comes back from lost."""
        return self._inventory

    def read(self) -> list[GpuReading]:
        now = self._clock()
        live: set[int] = set()
        readings = [self._read_gpu(gpu, now, live) for gpu in self._gpus]
        self._processes.prune(live)
        return readings

    def read_slow(self) -> dict[int, dict[str, int | None]]:
        out: dict[int, dict[str, int | None]] = {}
        for gpu in self._gpus:
            if gpu.lost:
                continue
            try:
                out[gpu.index] = self._sample_slow(gpu.handle)
            except _GpuLost as exc:
                self._mark_lost(gpu, str(exc))
        return out

    def drain_events(self) -> list[XidEvent]:
        with self._events_lock:
            events = list(self._events)
            self._events.clear()
        return events

    def close(self) -> None:
        """Stop the event thread, free the event set, shut NVML down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._event_thread
        thread_done = True
        if thread is not None:
            thread.join(timeout=4 * EVENT_WAIT_MS / 1000)
            thread_done = not thread.is_alive()
            if not thread_done:
                log.warning("XID event thread did not stop; leaving its event set allocated")
        if self._event_set is not None and thread_done:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except self._nvml_error as exc:
                log.warning("nvmlEventSetFree failed: %s", _error_text(exc))
            self._event_set = None
        self._shutdown()

    # -----------------------------------------------------------------------------------------
    # XID events

    def start_events(self) -> None:
        """Watch for XIDs on a daemon thread, because the only way to get them is to block."""
        if self._event_thread is not None or self._closed:
            return
        nvml = self._nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except self._nvml_error as exc:
            log.warning("XID events unavailable: nvmlEventSetCreate: %s", _error_text(exc))
            return
        registered = 0
        for gpu in self._gpus:
            if gpu.lost:
                log.warning("GPU %d: lost at start, not watching it for XID events", gpu.index)
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(
                    gpu.handle, nvml.nvmlEventTypeXidCriticalError, event_set
                )
            except self._nvml_error as exc:
                log.warning(
                    "GPU %d: XID events unavailable (%s); not watching it",
                    gpu.index,
                    _error_text(exc),
                )
                continue
            registered += 1
        if registered == 0:
            try:
                nvml.nvmlEventSetFree(event_set)
            except self._nvml_error as exc:
                log.warning("nvmlEventSetFree failed: %s", _error_text(exc))
            return
        self._event_set = event_set
        self._event_thread = threading.Thread(
            target=self._watch_events, args=(event_set,), name="gpufleet-nvml-xid", daemon=True
        )
        self._event_thread.start()

    def _watch_events(self, event_set: Any) -> None:
        nvml = self._nvml
        xid_mask = int(nvml.nvmlEventTypeXidCriticalError)
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, EVENT_WAIT_MS)
            except self._timeout_error:
                continue  # nothing happened in this window: the normal case
            except self._nvml_error as exc:
                self._warn_once("nvmlEventSetWait_v2", exc)
                self._stop.wait(1.0)  # do not spin if the driver keeps failing
                continue
            if not int(getattr(data, "eventType", 0)) & xid_mask:
                continue
            xid = int(data.eventData)
            try:
                index = _int(self._call("nvmlDeviceGetIndex", data.device))
            except _GpuLost:
                index = None
            if index is None:
                # XidEvent needs a GPU index; an XID we cannot place is still worth a log line.
                log.warning("XID %d on a GPU NVML could not identify; not reported", xid)
                continue
            log.warning("GPU %d: XID %d", index, xid)
            with self._events_lock:
                self._events.append(XidEvent(gpu=index, xid=xid, ts=self._clock()))

    # -----------------------------------------------------------------------------------------
    # The one NVML error mapping

    def _call(self, fn: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one NVML query: its value, None for "no value", or ``_GpuLost``.

        ``fn`` is a pynvml function name (looked up late, so a pynvml that lacks it reads as
        "no value" like a driver without the symbol) or a callable that itself calls NVML.
        """
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
        func = getattr(self._nvml, fn, None) if isinstance(fn, str) else fn
        if func is None:
            return None
        try:
            return func(*args, **kwargs)
        except self._lost_error:
            raise _GpuLost(name) from None
        except self._no_value_errors:
            return None
        except self._nvml_error as exc:
            self._warn_once(name, exc)
            return None

    def _warn_once(self, name: str, exc: BaseException) -> None:
        """An unexpected NVML error per query and kind is logged once, not once per tick."""
        key = (name, type(exc).__name__)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("%s: %s (further errors of this kind not logged)", name, _error_text(exc))

    def _system(self, fn: str) -> Any:
        try:
            return self._call(fn)
        except _GpuLost:
            return None

    # -----------------------------------------------------------------------------------------
    # Per GPU

    def _open_gpu(self, index: int, now: float) -> _Gpu:
        blank = GpuInfo(index=index, uuid=None, name=None)
        try:
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                raise _GpuLost("nvmlDeviceGetHandleByIndex")
            info = self._read_info(index, handle)
        except _GpuLost as exc:
            log.warning("GPU %d: unreadable at start (%s); will re-probe", index, exc)
            return _Gpu(
                index=index,
                handle=None,
                info=blank,
                lost=True,
                next_probe=now + self._reprobe_interval,
            )
        return _Gpu(index=index, handle=handle, info=info)

    def _read_info(self, index: int, handle: Any) -> GpuInfo:
        nvml, q = self._nvml, self._call
        pci = q("nvmlDeviceGetPciInfo", handle)
        memory = q("nvmlDeviceGetMemoryInfo", handle)
        return GpuInfo(
            index=index,
            uuid=_text(q("nvmlDeviceGetUUID", handle)),
            name=_text(q("nvmlDeviceGetName", handle)),
            serial=_text(q("nvmlDeviceGetSerial", handle)),
            pci_bus_id=_text(getattr(pci, "busId", None)),
            memory_total=_int(getattr(memory, "total", None)),
            power_limit_mw=_int(q("nvmlDeviceGetEnforcedPowerLimit", handle)),
            temp_slowdown_c=self._threshold(handle, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            temp_shutdown_c=self._threshold(handle, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            temp_mem_max_c=self._threshold(handle, "NVML_TEMPERATURE_THRESHOLD_MEM_MAX"),
            mig_enabled=_flag(
                _first(q("nvmlDeviceGetMigMode", handle)), nvml.NVML_DEVICE_MIG_ENABLE
            ),
            persistence_mode=_flag(
                q("nvmlDeviceGetPersistenceMode", handle), nvml.NVML_FEATURE_ENABLED
            ),
            ecc_enabled=_flag(_first(q("nvmlDeviceGetEccMode", handle)), nvml.NVML_FEATURE_ENABLED),
            pcie_max_width=_int(q("nvmlDeviceGetMaxPcieLinkWidth", handle)),
            pcie_max_gen=_int(q("nvmlDeviceGetMaxPcieLinkGeneration", handle)),
            sm_clock_max_mhz=_int(q("nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_SM)),
        )

    def _threshold(self, handle: Any, which: str) -> int | None:
        return _int(
            self._call("nvmlDeviceGetTemperatureThreshold", handle, getattr(self._nvml, which))
        )

    def _read_gpu(self, gpu: _Gpu, now: float, live: set[int]) -> GpuReading:
        if gpu.lost and not self._reprobe(gpu, now):
            return GpuReading(index=gpu.index, lost=True)
        try:
            return self._sample(gpu, live)
        except _GpuLost as exc:
            self._mark_lost(gpu, str(exc))
            return GpuReading(index=gpu.index, lost=True)

    def _sample(self, gpu: _Gpu, live: set[int]) -> GpuReading:
        nvml, q, handle = self._nvml, self._call, gpu.handle
        util = q("nvmlDeviceGetUtilizationRates", handle)
        mem_used, mem_total, mem_reserved = self._memory(gpu)
        reasons = _int(q("nvmlDeviceGetCurrentClocksEventReasons", handle))
        pstate = _int(q("nvmlDeviceGetPerformanceState", handle))
        if pstate == getattr(nvml, "NVML_PSTATE_UNKNOWN", 32):
            pstate = None
        ecc = None
        if gpu.info.ecc_enabled:
            ecc = _int(
                q(
                    "nvmlDeviceGetTotalEccErrors",
                    handle,
                    nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    nvml.NVML_VOLATILE_ECC,
                )
            )
        remap = q("nvmlDeviceGetRemappedRows", handle)
        corr, uncorr, pending, failure = (None, None, None, None) if remap is None else remap
        return GpuReading(
            index=gpu.index,
            util_gpu=_int(getattr(util, "gpu", None)),
            util_mem=_int(getattr(util, "memory", None)),
            mem_used=mem_used,
            mem_total=mem_total,
            mem_reserved=mem_reserved,
            temp_c=_int(q("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)),
            power_mw=_int(q("nvmlDeviceGetPowerUsage", handle)),
            sm_clock_mhz=_int(q("nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM)),
            mem_clock_mhz=_int(q("nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_MEM)),
            clock_reasons=None if reasons is None else decode_clock_reasons(reasons),
            pstate=pstate,
            ecc_uncorrected_volatile=ecc,
            remapped_correctable=_int(corr),
            remapped_uncorrectable=_int(uncorr),
            remap_pending=None if pending is None else bool(pending),
            remap_failure=None if failure is None else bool(failure),
            pcie_width=_int(q("nvmlDeviceGetCurrPcieLinkWidth", handle)),
            processes=self._gpu_processes(handle, live),
        )

    def _memory(self, gpu: _Gpu) -> tuple[int | None, int | None, int | None]:
        """(used, total, reserved); v2 splits out what the driver reserves, v1 cannot."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if gpu.memory_v2 and version is not None:
            mem = self._call("nvmlDeviceGetMemoryInfo", gpu.handle, version=version)
            if mem is not None:
                return (
                    _int(getattr(mem, "used", None)),
                    _int(getattr(mem, "total", None)),
                    _int(getattr(mem, "reserved", None)),
                )
            gpu.memory_v2 = False  # one failed v2 call per GPU, not one per tick
        mem = self._call("nvmlDeviceGetMemoryInfo", gpu.handle)
        if mem is None:
            return (None, None, None)
        return (_int(getattr(mem, "used", None)), _int(getattr(mem, "total", None)), None)

    def _gpu_processes(self, handle: Any, live: set[int]) -> list[GpuProcess] | None:
        """Compute and graphics processes, one entry per pid (compute wins when in both).

        An empty list is not "idle": a workload in another PID namespace may be invisible.
        """
        compute = self._call("nvmlDeviceGetComputeRunningProcesses", handle)
        graphics = self._call("nvmlDeviceGetGraphicsRunningProcesses", handle)
        if compute is None and graphics is None:
            return None
        found: dict[int, GpuProcess] = {}
        lists: tuple[tuple[ProcessKind, Any], ...] = (("compute", compute), ("graphics", graphics))
        for kind, procs in lists:
            for proc in procs or ():
                pid = int(proc.pid)
                if pid in found:
                    continue
                live.add(pid)
                user, command = self._processes.lookup(pid)
                found[pid] = GpuProcess(
                    pid=pid,
                    used_memory=_int(getattr(proc, "usedGpuMemory", None)),
                    kind=kind,
                    user=user,
                    command=command,
                )
        return list(found.values())

    def _sample_slow(self, handle: Any) -> dict[str, int | None]:
        nvml, q = self._nvml, self._call
        return {
            "energy_mj": _int(q("nvmlDeviceGetTotalEnergyConsumption", handle)),
            "pcie_tx_kbs": _int(
                q("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
            ),
            "pcie_rx_kbs": _int(
                q("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
            ),
            "temp_mem_c": q(self._field_value, handle, nvml.NVML_FI_DEV_MEMORY_TEMP),
        }

    def _field_value(self, handle: Any, field_id: int) -> int | None:
        """One field as an int; a per-field error code is raised so ``_call`` maps it too."""
        nvml = self._nvml
        values = nvml.nvmlDeviceGetFieldValues(handle, [field_id])
        if not values:
            return None
        field = values[0]
        status = int(getattr(field, "nvmlReturn", nvml.NVML_SUCCESS))
        if status != nvml.NVML_SUCCESS:
            raise nvml.NVMLError(status)
        member = self._value_members.get(int(field.valueType))
        if member is None:
            return None
        raw = getattr(field.value, member)
        return round(raw) if isinstance(raw, float) else int(raw)

    # -----------------------------------------------------------------------------------------
    # Lost and back

    def _reprobe(self, gpu: _Gpu, now: float) -> bool:
        """Try a lost GPU again, at most once per ``reprobe_interval``; True if it is back."""
        if now < gpu.next_probe:
            return False
        gpu.next_probe = now + self._reprobe_interval
        try:
            handle = self._call("nvmlDeviceGetHandleByIndex", gpu.index)
            if handle is None:
                return False
            # The cheapest read there is, then the static facts: a card that came back after a
            # reset (or a different card in the slot) may differ from what we knew.
            self._call("nvmlDeviceGetTemperature", handle, self._nvml.NVML_TEMPERATURE_GPU)
            info = self._read_info(gpu.index, handle)
        except _GpuLost:
            return False
        with self._lock:
            gpu.handle = handle
            gpu.info = info
            gpu.memory_v2 = True
            gpu.lost = False
            self._inventory = self._build_inventory()
        log.info("GPU %d: readable again (%s)", gpu.index, info.uuid)
        return True

    def _mark_lost(self, gpu: _Gpu, where: str) -> None:
        with self._lock:
            if gpu.lost:
                return
            gpu.lost = True
            gpu.next_probe = self._clock() + self._reprobe_interval
        log.warning(
            "GPU %d: lost (%s raised GpuIsLost); re-probing every %gs",
            gpu.index,
            where,
            self._reprobe_interval,
        )

    def _build_inventory(self) -> GpuInventory:
        return GpuInventory(
            backend="nvml",
            gpus=[gpu.info for gpu in self._gpus],
            driver_version=self._driver_version,
            cuda_version=self._cuda_version,
            nvml_version=self._nvml_version,
            note=None if self._gpus else "NVML reports no GPUs on this host",
        )

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml_error as exc:
            log.warning("nvmlShutdown failed: %s", _error_text(exc))


# ---------------------------------------------------------------------------------------------
# Small conversions (NVML hands back ints, bytes or str depending on the query and version)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    return int(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = str(value).strip()
    return text or None


def _first(value: Any) -> Any:
    """The current half of NVML's ``[current, pending]`` pairs."""
    if value is None:
        return None
    return value[0]


def _flag(value: Any, on: int) -> bool | None:
    if value is None:
        return None
    return int(value) == on


def _cuda_text(version: Any) -> str | None:
    """13000 -> "13.0", 12040 -> "12.4": NVML encodes major*1000 + minor*10."""
    if version is None:
        return None
    number = int(version)
    return f"{number // 1000}.{number % 1000 // 10}"


def _error_text(exc: BaseException) -> str:
    """One line for an NVMLError; its ``__str__`` may itself need the library, so guard it."""
    try:
        text = str(exc)
    except Exception:
        text = f"NVML error {getattr(exc, 'value', '?')}"
    return " ".join(text.split()) or type(exc).__name__


def _init_failure(nvml: ModuleType, exc: BaseException) -> str:
    """Why nvmlInit failed, in words an operator can act on."""
    code = getattr(exc, "value", None)
    reasons: dict[Any, str] = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()): (
            "NVML library not found (no NVIDIA driver on this host)"
        ),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()): (
            "NVIDIA kernel driver not loaded (nvmlInit: Driver Not Loaded)"
        ),
        getattr(nvml, "NVML_ERROR_NO_PERMISSION", object()): (
            "no permission to open the NVIDIA devices (nvmlInit: Insufficient Permissions)"
        ),
        getattr(nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", object()): (
            "NVML library and kernel driver versions differ (reload the driver or reboot)"
        ),
    }
    return reasons.get(code, f"NVML init failed: {_error_text(exc)}")
