"""The real GPU backend: NVML through nvidia-ml-py (``pynvml``).

What the H100 capture taught us (design.md §2) shapes this module:

- Many queries raise ``NotSupported`` on perfectly healthy cards (an SXM board has no fan), so
  every query goes through ``_attempt``, the one place where NVML errors become "no value" (None,
  never 0) or a lost GPU. No other code here catches NVML errors from a read.
- A GPU is lost when NVML says the card is gone or needs a reset (``_LOST_ERRORS``), or when
  every core reading (temperature, power, memory) fails with an error in one read: a card that
  answers only errors is not healthy. ``_read_core`` is the one place that rule lives, for the
  first probe, every tick and every re-probe alike. One failing query is only "no value" (n/a),
  logged once per GPU and query until it answers again. A GPU is back only when a re-probe gets
  real answers, not just a handle.
- The cheap queries cost microseconds and run on every tick (``read``); energy, HBM temperature
  (field values, ~3 ms) and PCIe throughput (~21 ms, it blocks for its sample window) would
  stall the tick, so they live in ``read_slow``, which the sampler runs on its own thread.
- ``nvmlInit`` costs ~14 ms: it runs once, and device handles are kept.
- XID events need a blocking wait, so they get a daemon thread of their own. Its event set is
  rebuilt whenever a GPU is lost or comes back: a set holding a lost GPU fails every wait, and
  a GPU missing from the set never reports an XID.

The backend never decides what an operator is told about a GPU that vanished or returned; it
only reports ``lost`` per reading and the sampler turns flag transitions into events.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Literal

import msgspec

from agents.gpu.base import BackendUnavailable, GpuInventory, XidEvent
from agents.gpu.clocks import decode_clock_reasons
from agents.gpu.procinfo import ProcessTable
from agents.protocol import GpuInfo, GpuProcess, GpuReading

log = logging.getLogger(f"gpufleet.{__name__}")

#: NVML errors that mean the card is gone or unusable until a reset: the GPU is lost.
_LOST_ERRORS: Final = (
    "NVMLError_GpuIsLost",
    "NVMLError_ResetRequired",
    "NVMLError_GpuNotFound",
)

#: Errors that mean "this card, driver or pynvml cannot do that query" rather than "it failed":
#: they switch a versioned query to its older form and never count towards a failing card.
#: (``NVMLLibraryMismatchError``, pynvml's own exception for a missing ``_v3`` symbol, and a
#: function missing from pynvml itself are treated the same way.)
_UNSUPPORTED_ERRORS: Final = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_ArgumentVersionMismatch",
)

#: Errors common on healthy nodes (56 queries were NotSupported on the captured H100): logging
#: them would be noise. ``Unknown`` is not here: drivers use it for quirks of single queries,
#: but also when a card is failing, so it gives "no value" and is logged once per query.
_QUIET_ERRORS: Final = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_InvalidArgument",
    "NVMLError_NoPermission",
)

#: The energy counter is read at most this often. On the lent H100 (driver 580.159.04) one
#: nvmlDeviceGetTotalEnergyConsumption cost 4.2 ms of CPU (the driver spins), 1,000 times a
#: temperature read and more than the whole fast tick of a GPU; a counter read a minute apart
#: is what Prometheus' rate() needs, and power itself is read on every tick.
ENERGY_EVERY_S: Final = 60.0

#: How long one ``nvmlEventSetWait_v2`` blocks: the longest ``close`` waits for the thread.
EVENT_WAIT_MS: Final = 500

#: After a failed event wait the set is rebuilt, first after this pause, then after twice the
#: previous one up to ``EVENT_RETRY_MAX_S``, so a driver that keeps failing is not spun on.
EVENT_RETRY_S: Final = 0.5
EVENT_RETRY_MAX_S: Final = 30.0

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

#: Why a query gave no value: the card or library cannot do it, or it failed.
_Failure = Literal["unsupported", "error"] | None
#: What ``_attempt`` hands back: ``(value, None)`` or ``(None, why not)``.
_Answer = tuple[Any, _Failure]
_UNSUPPORTED: Final[_Answer] = (None, "unsupported")

_Memory = tuple[int | None, int | None, int | None]  # used, total, reserved
_NO_MEMORY: Final[_Memory] = (None, None, None)


class _GpuLost(Exception):
    """The GPU is gone: unwinds the reads of that one GPU to where it is marked lost."""


@dataclass(slots=True)
class _Gpu:
    """Our mutable view of one device; transitions of ``lost`` happen under the backend lock."""

    index: int
    handle: Any
    info: GpuInfo
    lost: bool = False
    next_probe: float = 0.0
    #: Bumped on every lost/back transition, so a slow read that started before a re-probe
    #: (and failed on the old handle) cannot mark the GPU lost again.
    generation: int = 0
    memory_v2: bool = True  # until the driver shows it has no v2 memory query
    temperature_v: bool = True  # until the driver shows it has no nvmlDeviceGetTemperatureV
    energy_mj: int | None = None  # the last energy counter read, and when (backend clock)
    energy_at: float = -math.inf


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
        self._timeout_error: type[Exception] = nvml.NVMLError_Timeout
        mismatch = _classes(nvml, ["NVMLLibraryMismatchError"])  # not an NVMLError subclass
        self._lost_errors = _classes(nvml, _LOST_ERRORS)
        self._unsupported_errors = _classes(nvml, _UNSUPPORTED_ERRORS) + mismatch
        self._quiet_errors = _classes(nvml, _QUIET_ERRORS)
        self._no_value_errors = (self._nvml_error, *mismatch)
        # A wait failing like this means a GPU in the set fell off the bus: rebuild the set.
        self._stale_set_errors = self._lost_errors + _classes(nvml, ["NVMLError_Unknown"])
        self._value_members: dict[int, str] = {
            getattr(nvml, const): member
            for const, member in _FIELD_VALUE_MEMBERS.items()
            if hasattr(nvml, const)
        }
        # Newer names first; older nvidia-ml-py lacks them (and CUDA 14 drops the old ones).
        self._has_temperature_v = _present(nvml, "nvmlDeviceGetTemperatureV")
        self._clock_reasons_query = (
            "nvmlDeviceGetCurrentClocksEventReasons"
            if _present(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
            else "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        self._warned: set[tuple[str, str]] = set()
        #: (GPU, query) -> the error kinds logged for it while it fails; cleared when it answers.
        self._failing: dict[tuple[int, str], set[str]] = {}
        self._lock = threading.Lock()
        self._events: deque[XidEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self._event_thread: threading.Thread | None = None
        self._event_set: Any = None
        self._rebuild_events = threading.Event()
        self._rebuild_why = ""
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
            with self._lock:
                lost, handle, generation = gpu.lost, gpu.handle, gpu.generation
            if lost:
                continue
            try:
                out[gpu.index] = self._sample_slow(gpu, handle)
            except _GpuLost as exc:
                self._mark_lost(gpu, str(exc), generation)
            except Exception as exc:
                # A bug or a pynvml surprise must not stop the slow thread for every GPU.
                self._warn_unexpected(gpu.index, "slow read", exc)
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
            self._free_event_set(self._event_set)
            self._event_set = None
        self._shutdown()

    # -----------------------------------------------------------------------------------------
    # XID events

    def start_events(self) -> None:
        """Watch for XIDs on a daemon thread, because the only way to get them is to block."""
        if self._event_thread is not None or self._closed or not self._gpus:
            return
        self._rebuild_events.clear()
        if not self._replace_event_set("start"):
            return
        self._event_thread = threading.Thread(
            target=self._watch_events, name="gpufleet-nvml-xid", daemon=True
        )
        self._event_thread.start()

    def _request_event_rebuild(self, why: str) -> None:
        """Ask the event thread for a new event set (it alone touches the set once running)."""
        self._rebuild_why = why
        self._rebuild_events.set()

    def _replace_event_set(self, why: str) -> bool:
        """Free the event set and register every GPU that is not lost in a new one.

        NVML cannot drop one device from a set, a set holding a GPU that fell off the bus fails
        every wait, and a GPU that came back has a new handle to register: so every lost/back
        transition rebuilds the whole set (rare, and cheap). False if no set could be created.
        """
        nvml = self._nvml
        old, self._event_set = self._event_set, None
        if old is not None:
            self._free_event_set(old)
        try:
            event_set = nvml.nvmlEventSetCreate()
        except self._nvml_error as exc:
            log.warning("XID events unavailable: nvmlEventSetCreate: %s", _error_text(exc))
            return False
        with self._lock:
            targets = [(gpu.index, gpu.handle) for gpu in self._gpus if not gpu.lost]
        watched: list[int] = []
        for index, handle in targets:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, event_set)
            except self._nvml_error as exc:
                log.warning(
                    "GPU %d: XID events unavailable (%s); not watching it",
                    index,
                    _error_text(exc),
                )
                continue
            watched.append(index)
        self._event_set = event_set
        log.info(
            "XID events (%s): watching %d of %d GPUs %s",
            why,
            len(watched),
            len(self._gpus),
            watched,
        )
        return True

    def _free_event_set(self, event_set: Any) -> None:
        try:
            self._nvml.nvmlEventSetFree(event_set)
        except self._nvml_error as exc:
            log.warning("nvmlEventSetFree failed: %s", _error_text(exc))

    def _watch_events(self) -> None:
        nvml = self._nvml
        xid_mask = int(nvml.nvmlEventTypeXidCriticalError)
        pause = EVENT_RETRY_S
        while not self._stop.is_set():
            if self._rebuild_events.is_set():
                self._rebuild_events.clear()
                self._replace_event_set(self._rebuild_why)
            event_set = self._event_set
            if event_set is None:  # creating a set failed: try again, more slowly each time
                self._request_event_rebuild("retry")
                self._stop.wait(pause)
                pause = min(2 * pause, EVENT_RETRY_MAX_S)
                continue
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, EVENT_WAIT_MS)
            except self._timeout_error:
                pause = EVENT_RETRY_S
                continue  # nothing happened in this window: the normal case
            except self._stale_set_errors as exc:
                self._request_event_rebuild(f"wait raised {type(exc).__name__}")
                self._stop.wait(pause)
                pause = min(2 * pause, EVENT_RETRY_MAX_S)
                continue
            except self._nvml_error as exc:
                self._warn_once("nvmlEventSetWait_v2", type(exc).__name__, _error_text(exc))
                self._stop.wait(1.0)  # do not spin if the driver keeps failing
                continue
            pause = EVENT_RETRY_S
            if int(getattr(data, "eventType", 0)) & xid_mask:
                self._record_xid(data)

    def _record_xid(self, data: Any) -> None:
        xid = int(data.eventData)
        try:
            index = _int(self._call("nvmlDeviceGetIndex", data.device))
        except _GpuLost:
            index = None
        if index is None:
            # XidEvent needs a GPU index; an XID we cannot place is still worth a log line.
            log.warning("XID %d on a GPU NVML could not identify; not reported", xid)
            return
        log.warning("GPU %d: XID %d", index, xid)
        with self._events_lock:
            self._events.append(XidEvent(gpu=index, xid=xid, ts=self._clock()))

    # -----------------------------------------------------------------------------------------
    # The one NVML error mapping

    def _attempt(
        self, fn: str | Callable[..., Any], *args: Any, gpu: int | None = None, **kwargs: Any
    ) -> _Answer:
        """Run one NVML query: ``(value, None)``, ``(None, why)``, or raise ``_GpuLost``.

        ``why`` is "unsupported" (the card, driver or pynvml cannot do it: see
        ``_UNSUPPORTED_ERRORS``) or "error" (it failed). ``fn`` is a pynvml function name,
        looked up late so that a pynvml without it reads as "unsupported" (logged once), or a
        callable that itself calls NVML. ``gpu`` names the GPU a device query is about, so
        that its failures are logged once per GPU and query, and again after it recovers.
        """
        if isinstance(fn, str):
            name, func = fn, getattr(self._nvml, fn, None)
            if func is None:
                self._warn_once(name, "missing", "not in this nvidia-ml-py; reads as no value")
                return _UNSUPPORTED
        else:
            name, func = getattr(fn, "__name__", repr(fn)), fn
        try:
            value = func(*args, **kwargs)
        except self._lost_errors as exc:
            raise _GpuLost(f"{name} raised {type(exc).__name__}") from None
        except self._no_value_errors as exc:
            if not isinstance(exc, self._quiet_errors):
                self._warn_failing(gpu, name, type(exc).__name__, _error_text(exc))
            return (None, "unsupported" if isinstance(exc, self._unsupported_errors) else "error")
        # The tick and the slow thread may both get here: pop, so only one says it.
        if self._failing and gpu is not None:
            kinds: set[str] | None = self._failing.pop((gpu, name), None)
            if kinds is not None:
                log.info("GPU %d: %s answers again", gpu, name)
        return (value, None)

    def _call(
        self, fn: str | Callable[..., Any], *args: Any, gpu: int | None = None, **kwargs: Any
    ) -> Any:
        """``_attempt`` for callers that only need the value (None for "no value")."""
        return self._attempt(fn, *args, gpu=gpu, **kwargs)[0]

    def _warn_failing(self, gpu: int | None, name: str, kind: str, detail: str) -> None:
        """A failing query of one GPU is logged once while it fails, not once per tick; once
        it answers again, a new failure is news and is logged again."""
        if gpu is None:
            self._warn_once(name, kind, detail)
            return
        kinds = self._failing.setdefault((gpu, name), set())
        if kind in kinds:
            return
        kinds.add(kind)
        log.warning(
            "GPU %d: %s: %s (reads as no value; not logged again until it answers)",
            gpu,
            name,
            detail,
        )

    def _query(self, gpu: int) -> Callable[..., Any]:
        """``_call`` bound to one GPU's failures."""
        return functools.partial(self._call, gpu=gpu)

    def _warn_once(
        self, name: str, kind: str, detail: str, exc_info: BaseException | None = None
    ) -> None:
        """A problem per query and kind is logged once, not once per tick."""
        key = (name, kind)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "%s: %s (further errors of this kind not logged)", name, detail, exc_info=exc_info
        )

    def _warn_unexpected(self, index: int, where: str, exc: Exception) -> None:
        """Not an NVML error: a bug here or a pynvml surprise. Logged once, with traceback."""
        detail = f"GPU {index}: unexpected {type(exc).__name__}; its values read as None"
        self._warn_once(where, type(exc).__name__, detail, exc_info=exc)

    def _system(self, fn: str) -> Any:
        try:
            return self._call(fn)
        except _GpuLost:
            return None

    # -----------------------------------------------------------------------------------------
    # Per GPU

    def _open_gpu(self, index: int, now: float) -> _Gpu:
        gpu = _Gpu(index=index, handle=None, info=GpuInfo(index=index, uuid=None, name=None))
        try:
            gpu.handle, gpu.info = self._probe(gpu)
        except _GpuLost as exc:
            log.warning("GPU %d: unreadable at start (%s); will re-probe", index, exc)
            gpu.lost = True
            gpu.next_probe = now + self._reprobe_interval
        return gpu

    def _probe(self, gpu: _Gpu) -> tuple[Any, GpuInfo]:
        """A handle and the static facts of a GPU that really answers, else ``_GpuLost``.

        A handle alone proves little: NVML can hand one out for a card that then fails every
        query. So the card must also pass the rule every tick applies (``_read_core``): one of
        its core readings answers. A single failing query (a UUID, a temperature) is no value,
        not a lost GPU.
        """
        handle = self._call("nvmlDeviceGetHandleByIndex", gpu.index, gpu=gpu.index)
        if handle is None:
            raise _GpuLost("nvmlDeviceGetHandleByIndex gave no handle")
        self._read_core(gpu, handle)
        uuid = _text(self._call("nvmlDeviceGetUUID", handle, gpu=gpu.index))
        return handle, self._read_info(gpu.index, handle, uuid)

    def _read_info(self, index: int, handle: Any, uuid: str | None) -> GpuInfo:
        nvml, q = self._nvml, self._query(index)
        pci = q("nvmlDeviceGetPciInfo", handle)
        memory = q("nvmlDeviceGetMemoryInfo", handle)
        return GpuInfo(
            index=index,
            uuid=uuid,
            name=_text(q("nvmlDeviceGetName", handle)),
            serial=_text(q("nvmlDeviceGetSerial", handle)),
            pci_bus_id=_text(getattr(pci, "busId", None)),
            memory_total=_int(getattr(memory, "total", None)),
            power_limit_mw=_int(q("nvmlDeviceGetEnforcedPowerLimit", handle)),
            temp_slowdown_c=self._threshold(q, handle, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            temp_shutdown_c=self._threshold(q, handle, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            temp_mem_max_c=self._threshold(q, handle, "NVML_TEMPERATURE_THRESHOLD_MEM_MAX"),
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

    def _threshold(self, q: Callable[..., Any], handle: Any, which: str) -> int | None:
        return _int(q("nvmlDeviceGetTemperatureThreshold", handle, getattr(self._nvml, which)))

    def _read_gpu(self, gpu: _Gpu, now: float, live: set[int]) -> GpuReading:
        generation = gpu.generation
        try:
            if gpu.lost:
                if not self._reprobe(gpu, now):
                    return GpuReading(index=gpu.index, lost=True)
                generation = gpu.generation
            return self._sample(gpu, live)
        except _GpuLost as exc:
            self._mark_lost(gpu, str(exc), generation)
            return GpuReading(index=gpu.index, lost=True)
        except Exception as exc:
            # One GPU's surprise (a bug, an odd pynvml value) must not cost the others their tick.
            self._warn_unexpected(gpu.index, "read", exc)
            return GpuReading(index=gpu.index, lost=gpu.lost)

    def _read_core(self, gpu: _Gpu, handle: Any) -> tuple[Any, Any, _Memory]:
        """Temperature, power and memory: ``_GpuLost`` when every one of them fails with an
        error. This is the one place a GPU that NVML has not called lost is judged lost; a
        core reading the card does not support never counts towards it."""
        temp, temp_failed = self._temperature(gpu, handle)
        power, power_failed = self._attempt("nvmlDeviceGetPowerUsage", handle, gpu=gpu.index)
        memory, mem_failed = self._memory(gpu, handle)
        if temp_failed == power_failed == mem_failed == "error":
            raise _GpuLost("temperature, power and memory reads all failed")
        return temp, power, memory

    def _sample(self, gpu: _Gpu, live: set[int]) -> GpuReading:
        nvml, q, handle = self._nvml, self._query(gpu.index), gpu.handle
        temp, power, (mem_used, mem_total, mem_reserved) = self._read_core(gpu, handle)
        util = q("nvmlDeviceGetUtilizationRates", handle)
        reasons = _int(q(self._clock_reasons_query, handle))
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
            temp_c=_int(temp),
            power_mw=_int(power),
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
            # HBM temperature: a field value, 7 us on the H100, so on every tick.
            temp_mem_c=q(self._field_value, handle, nvml.NVML_FI_DEV_MEMORY_TEMP),
            processes=self._gpu_processes(q, handle, live),
        )

    def _temperature(self, gpu: _Gpu, handle: Any) -> _Answer:
        """GPU temperature: ``nvmlDeviceGetTemperatureV`` where pynvml and the driver have it
        (``nvmlDeviceGetTemperature`` is deprecated, due to go in CUDA 14), else the old call."""
        sensor = self._nvml.NVML_TEMPERATURE_GPU
        if gpu.temperature_v and self._has_temperature_v:
            # pynvml 13 fills a c_nvmlTemperature_v1_t for us (version defaults to v1).
            answer = self._attempt("nvmlDeviceGetTemperatureV", handle, sensor, gpu=gpu.index)
            if answer[1] != "unsupported":
                return answer
            gpu.temperature_v = False  # one failed call per GPU, not one per tick
        return self._attempt("nvmlDeviceGetTemperature", handle, sensor, gpu=gpu.index)

    def _memory(self, gpu: _Gpu, handle: Any) -> tuple[_Memory, _Failure]:
        """(used, total, reserved) and why not; v2 splits out what the driver reserves, v1
        cannot. Only a driver that lacks v2 switches the GPU to v1: a one-off error does not."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if gpu.memory_v2 and version is not None:
            mem, failed = self._attempt(
                "nvmlDeviceGetMemoryInfo", handle, version=version, gpu=gpu.index
            )
            if failed is None:
                return (_int(mem.used), _int(mem.total), _int(mem.reserved)), None
            if failed == "error":
                return _NO_MEMORY, failed
            gpu.memory_v2 = False  # one failed v2 call per GPU, not one per tick
        mem, failed = self._attempt("nvmlDeviceGetMemoryInfo", handle, gpu=gpu.index)
        if failed is not None:
            return _NO_MEMORY, failed
        return (_int(mem.used), _int(mem.total), None), None

    def _gpu_processes(
        self, q: Callable[..., Any], handle: Any, live: set[int]
    ) -> list[GpuProcess] | None:
        """Compute and graphics processes, one entry per pid (compute wins when in both).

        None (unknown) whenever the compute query failed: the compute list is the one that
        matters on a GPU node, and a partial list would read as "these are all of them". An
        empty list is not "idle" either: a workload in another PID namespace is not listed.
        """
        compute = q("nvmlDeviceGetComputeRunningProcesses", handle)
        if compute is None:
            return None
        graphics = q("nvmlDeviceGetGraphicsRunningProcesses", handle)
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

    def _sample_slow(self, gpu: _Gpu, handle: Any) -> dict[str, int | None]:
        """PCIe throughput (each call blocks ~21 ms for its sample window and cost ~0.9 ms of
        CPU on the H100), and the energy counter when ``ENERGY_EVERY_S`` has passed."""
        nvml, q = self._nvml, self._query(gpu.index)
        now = self._clock()
        if not 0 <= now - gpu.energy_at < ENERGY_EVERY_S:  # due, or the clock went back
            gpu.energy_mj = _int(q("nvmlDeviceGetTotalEnergyConsumption", handle))
            gpu.energy_at = now
        return {
            "energy_mj": gpu.energy_mj,
            "pcie_tx_kbs": _int(
                q("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
            ),
            "pcie_rx_kbs": _int(
                q("nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
            ),
        }

    def _field_value(self, handle: Any, field_id: int) -> int | None:
        """One field as an int; a per-field error code is raised so ``_attempt`` maps it too."""
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
        # A card back from a reset (or a different card in the slot) may support more or less.
        gpu.memory_v2 = gpu.temperature_v = True
        try:
            handle, info = self._probe(gpu)
        except _GpuLost:
            return False
        with self._lock:
            gpu.handle = handle
            gpu.info = _keep_known(gpu.info, info)
            gpu.lost = False
            gpu.generation += 1
            self._inventory = self._build_inventory()
        self._request_event_rebuild(f"GPU {gpu.index} back")
        log.info("GPU %d: readable again (%s)", gpu.index, info.uuid)
        return True

    def _mark_lost(self, gpu: _Gpu, why: str, generation: int) -> None:
        """Mark ``gpu`` lost, unless ``generation`` is stale: a read that began before a
        re-probe (on the slow thread) and failed on the old handle must not undo it."""
        with self._lock:
            if gpu.lost or gpu.generation != generation:
                return
            gpu.lost = True
            gpu.generation += 1
            gpu.next_probe = self._clock() + self._reprobe_interval
        self._request_event_rebuild(f"GPU {gpu.index} lost")
        log.warning(
            "GPU %d: lost (%s); re-probing every %gs", gpu.index, why, self._reprobe_interval
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
# Small helpers (NVML hands back ints, bytes or str depending on the query and version)


def _classes(nvml: ModuleType, names: Iterable[str]) -> tuple[type[Exception], ...]:
    """The exception classes of ``names`` this pynvml has (older ones lack some)."""
    return tuple(getattr(nvml, name) for name in names if hasattr(nvml, name))


def _present(nvml: ModuleType, name: str) -> bool:
    return getattr(nvml, name, None) is not None


def _keep_known(old: GpuInfo, new: GpuInfo) -> GpuInfo:
    """``new``, with each fact it could not read (None) kept from ``old``.

    A card just back from a reset may not answer every static query yet, and None would erase
    what we knew; a different card in the slot (new UUID) shares nothing with the old one. A
    UUID that could not be read is unknown, not a different card.
    """
    if old.uuid is not None and new.uuid is not None and old.uuid != new.uuid:
        return new
    kept = {
        f.name: getattr(old, f.name)
        for f in msgspec.structs.fields(new)
        if getattr(new, f.name) is None and getattr(old, f.name) is not None
    }
    return msgspec.structs.replace(new, **kept) if kept else new


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
