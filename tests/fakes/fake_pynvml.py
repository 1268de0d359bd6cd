"""A FAKE pynvml module, replaying what NVML returned on a real H100.

This is not NVML. Dev and CI machines have no GPU and no NVIDIA driver (the real ``nvmlInit``
raises ``NVMLError_LibraryNotFound`` there), so the NVML backend is tested against this
stand-in instead. It is built from ``tests/fixtures/h100/nvml_static.json``, the capture of
every device query on a real H100 (values, and the exact error each unsupported query raised),
so the backend meets the same values, units and ``NotSupported`` holes as on a real node.

Faithfulness where it matters:

- Constants and the ``NVMLError`` class tree are the real ``pynvml``'s (that module imports
  fine without a driver), and errors are raised as ``NVMLError(code)``, which the real
  ``NVMLError.__new__`` maps to ``NVMLError_NotSupported`` etc. The backend's ``except``
  clauses therefore match exactly as they would on a real node.
- Structures (memory info, utilization, PCI info, field values) are the real ctypes structs.
- Handles are opaque; event data carries a *new* handle object, as NVML does, so the backend
  must ask ``nvmlDeviceGetIndex`` rather than compare identities.
- Calls before ``nvmlInit`` or after ``nvmlShutdown`` raise ``NVMLError_Uninitialized``.
- The process queries are wrapped by the real ``pynvml.throwOnVersionMismatch``, so a driver
  without their ``_v3`` symbol (``FunctionNotFound``) raises ``NVMLLibraryMismatchError``, which
  is not an ``NVMLError``.
- ``nvmlEventSetWait_v2`` raises ``GpuIsLost`` while a GPU registered in the set is lost, as
  NVML does when a watched card falls off the bus.
- A function taken away with ``remove`` is absent (``AttributeError``), as in an older pynvml.

Knobs for tests: ``gpus=N`` (copies of the captured card with their own index, UUID, serial and
bus id), ``set_value`` / ``set_error`` (one query, one GPU or all), ``lose`` / ``heal`` (every
query of a GPU raises ``GpuIsLost``), ``fail_queries`` (every query but the handle look-up
raises a given error), ``remove``, ``set_processes``, ``set_field``, ``inject_xid``,
``init_error``; ``calls`` counts every query by name.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pynvml

CAPTURE: Final = Path(__file__).resolve().parents[1] / "fixtures" / "h100" / "nvml_static.json"

#: Module attributes copied from the real pynvml: constants, error classes, struct types.
_COPIED_PREFIXES: Final = (
    "NVML_",
    "NVMLError",
    "nvmlEventType",
    "nvmlClocksEventReason",
    "nvmlClocksThrottleReason",
    "nvmlMemory_v",
    "nvmlTemperature_v",
    "NVMLLibraryMismatchError",
    "c_nvml",
    "nvmlPciInfo",
    "nvmlFriendlyObject",
    "nvmlExceptionClass",
)

_ALL_GPUS: Final = None
_EVERY_QUERY: Final = "*"
_EVERY_DEVICE_QUERY: Final = "*device"  # every query but nvmlDeviceGetHandleByIndex


@dataclass(frozen=True)
class FakeHandle:
    """Stands in for ``c_nvmlDevice_t``: only the fake looks inside."""

    index: int


@dataclass(eq=False)
class FakeEventSet:
    devices: set[int] = field(default_factory=set)
    freed: bool = False


@dataclass(frozen=True)
class FakeEventData:
    """The fields of ``c_nvmlEventData_t`` (a real one needs a real handle); NVML's names."""

    device: FakeHandle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: int | None = None

    def produce(self) -> Any:
        if self.error is not None:
            raise pynvml.NVMLError(self.error)
        return copy.deepcopy(self.value)


def _error_code(error: int | type[BaseException]) -> int:
    if isinstance(error, int):
        return error
    for code, cls in pynvml.NVMLError._valClassMapping.items():
        if cls is error:
            return int(code)
    raise ValueError(f"{error!r} is not an NVMLError subclass")


def _key(name: str, args: tuple[Any, ...]) -> str:
    """The capture's key for a call: ``nvmlDeviceGetClockInfo[1]`` for (handle, 1)."""
    if not args:
        return name
    return f"{name}[{', '.join(str(int(a)) for a in args)}]"


def _materialize(value: Any) -> Any:
    """JSON from the capture back into what pynvml returns (real ctypes structs where known)."""
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    if not isinstance(value, dict):
        return value
    fields = {k: v for k, v in value.items() if k != "__type__"}
    struct_type = getattr(pynvml, str(value.get("__type__")), None)
    simple = all(isinstance(v, int | float | str) for v in fields.values())
    if struct_type is not None and hasattr(struct_type, "_fields_") and simple:
        struct = struct_type()
        names = {f[0] for f in struct_type._fields_}
        for k, v in fields.items():
            if k in names:
                setattr(struct, k, v)
        return struct
    return pynvml.nvmlFriendlyObject({k: _materialize(v) for k, v in fields.items()})


class FakeNvml(ModuleType):
    """One fake NVML "library": pass an instance where the backend expects the pynvml module."""

    def __init__(
        self,
        gpus: int = 1,
        *,
        capture: Path = CAPTURE,
        init_error: int | type[BaseException] | None = None,
        event_wait_cap_s: float = 0.02,
    ) -> None:
        self._removed: set[str] = set()  # first: __getattribute__ consults it
        super().__init__("fake_pynvml", "FAKE pynvml replaying an H100 capture (no GPU here)")
        for name in dir(pynvml):
            if name.startswith(_COPIED_PREFIXES):
                setattr(self, name, getattr(pynvml, name))
        raw = json.loads(capture.read_text())
        self.gpu_count = gpus
        self.init_error = None if init_error is None else _error_code(init_error)
        self.event_wait_cap_s = event_wait_cap_s
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: Counter[str] = Counter()
        self.event_sets: list[FakeEventSet] = []
        self._system: dict[str, dict[str, Any]] = raw["system"]
        self._devices = [self._device_capture(raw["devices"][0], i) for i in range(gpus)]
        self._overrides: dict[tuple[int | None, str], _Outcome] = {}
        self._processes: dict[tuple[int, str], list[tuple[int, int | None]]] = {}
        self._xids: list[tuple[int, int]] = []
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._field_names: dict[int, list[str]] = {}
        for name in dir(pynvml):
            if name.startswith("NVML_FI_") and isinstance(getattr(pynvml, name), int):
                self._field_names.setdefault(getattr(pynvml, name), []).append(name)

    # -----------------------------------------------------------------------------------------
    # Test knobs

    def set_value(self, func: str, value: Any, *, gpu: int | None = _ALL_GPUS) -> None:
        """Make ``func`` (a name, or a capture key such as ``nvmlDeviceGetClockInfo[1]``) return
        ``value`` for one GPU or all of them."""
        with self._lock:
            self._overrides[(gpu, func)] = _Outcome(value=value)

    def set_error(
        self, func: str, error: int | type[BaseException], *, gpu: int | None = _ALL_GPUS
    ) -> None:
        """Make ``func`` raise ``NVMLError(code)`` (give the code or the NVMLError subclass)."""
        with self._lock:
            self._overrides[(gpu, func)] = _Outcome(error=_error_code(error))

    def clear(self, func: str | None = None, *, gpu: int | None = _ALL_GPUS) -> None:
        """Drop overrides: of ``func`` (for ``gpu``), or every one when ``func`` is None."""
        with self._lock:
            if func is None:
                self._overrides.clear()
            else:
                self._overrides.pop((gpu, func), None)

    def lose(self, gpu: int) -> None:
        """The GPU fell off the bus: every query about it raises ``NVMLError_GpuIsLost``, and
        so does every wait on an event set it is registered in (a blocked one at once)."""
        self.set_error(_EVERY_QUERY, pynvml.NVML_ERROR_GPU_IS_LOST, gpu=gpu)
        with self._cond:
            self._cond.notify_all()

    def fail_queries(self, gpu: int, error: int | type[BaseException]) -> None:
        """Every query about the GPU raises ``error``, yet ``nvmlDeviceGetHandleByIndex`` still
        hands out a handle: a card that enumerates but does not really answer."""
        self.set_error(_EVERY_DEVICE_QUERY, error, gpu=gpu)

    def remove(self, func: str) -> None:
        """This "pynvml" no longer has ``func`` at all, like an older nvidia-ml-py."""
        self._removed.add(func)

    def heal(self, gpu: int) -> None:
        """Undo ``lose`` and every other override for that GPU."""
        with self._lock:
            for key in [k for k in self._overrides if k[0] == gpu]:
                del self._overrides[key]

    def set_processes(
        self,
        gpu: int,
        compute: list[tuple[int, int | None]] | None = None,
        graphics: list[tuple[int, int | None]] | None = None,
    ) -> None:
        """Running processes as (pid, used bytes or None as NVML gives in containers)."""
        with self._lock:
            self._processes[(gpu, "compute")] = list(compute or [])
            self._processes[(gpu, "graphics")] = list(graphics or [])

    def set_field(
        self,
        gpu: int | None,
        field_name: str,
        value: int | float | None = None,
        *,
        ret: int | None = None,
    ) -> None:
        """A field value (``NVML_FI_...`` name) or a per-field return code (``ret``)."""
        targets = range(self.gpu_count) if gpu is None else [gpu]
        for i in targets:
            self._devices[i]["__field_values__"][field_name] = (
                f"ret={ret}" if ret is not None else value
            )

    def inject_xid(self, gpu: int, xid: int) -> None:
        """Queue an XID; a waiter on an event set that registered this GPU receives it."""
        with self._cond:
            self._xids.append((gpu, xid))
            self._cond.notify_all()

    # -----------------------------------------------------------------------------------------
    # Library lifetime and system queries

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialized = True

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self._check_init("nvmlShutdown")
        self.shutdown_calls += 1
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._system_value("nvmlSystemGetDriverVersion"))

    def nvmlSystemGetNVMLVersion(self) -> str:
        return str(self._system_value("nvmlSystemGetNVMLVersion"))

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._system_value("nvmlSystemGetCudaDriverVersion"))

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return int(self._system_value("nvmlSystemGetCudaDriverVersion_v2"))

    def nvmlDeviceGetCount(self) -> int:
        self._check_init("nvmlDeviceGetCount")
        outcome = self._override(None, "nvmlDeviceGetCount", "nvmlDeviceGetCount")
        return int(outcome.produce()) if outcome else self.gpu_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        name = "nvmlDeviceGetHandleByIndex"
        self._check_init(name)
        if not 0 <= index < self.gpu_count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        outcome = self._override(index, name, _key(name, (index,)), handle_lookup=True)
        if outcome is not None:
            outcome.produce()
        return FakeHandle(index)

    # -----------------------------------------------------------------------------------------
    # Device queries the capture cannot answer by key alone

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        return int(self._device_query("nvmlDeviceGetIndex", handle, (), lambda: handle.index))

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        if not version:
            return self._device_query("nvmlDeviceGetMemoryInfo", handle, ())

        def v2() -> Any:
            if version != pynvml.nvmlMemory_v2:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            v1 = self._device_query("nvmlDeviceGetMemoryInfo", handle, ())
            # nvidia-smi -q on the captured card: Reserved 480 MiB, which is exactly what v1
            # counts as "used" on an idle card; v2 reports it apart.
            reserved = min(480 * 1024 * 1024, v1.used)
            mem = pynvml.c_nvmlMemory_v2_t()
            mem.version = version
            mem.total = v1.total
            mem.reserved = reserved
            mem.free = v1.free
            mem.used = v1.used - reserved
            return mem

        # The real pynvml calls the nvmlDeviceGetMemoryInfo_v2 symbol here: overrides use it.
        return self._device_query("nvmlDeviceGetMemoryInfo_v2", handle, (), v2)

    def nvmlDeviceGetTemperatureV(
        self, handle: FakeHandle, sensor: int, version: int = pynvml.nvmlTemperature_v1
    ) -> int:
        """pynvml 13's versioned temperature query (it fills a ``c_nvmlTemperature_v1_t``).

        The capture called it without a sensor, so it answers what ``nvmlDeviceGetTemperature``
        answered for that sensor; both read the one sensor, so overrides and ``calls`` of the
        old name apply too, and an override of this name (e.g. ``FunctionNotFound`` for a
        driver without the symbol) applies to this one alone.
        """
        name = "nvmlDeviceGetTemperatureV"
        if version != pynvml.nvmlTemperature_v1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)

        def same_sensor() -> int:
            return int(self._device_query("nvmlDeviceGetTemperature", handle, (sensor,)))

        return int(self._device_query(name, handle, (sensor,), same_sensor))

    # pynvml wraps these two in throwOnVersionMismatch (they call the _v3 symbols), so the real
    # wrapper is applied here: FunctionNotFound becomes NVMLLibraryMismatchError.

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        running = pynvml.throwOnVersionMismatch(self._running)
        result: list[Any] = running(handle, "compute", "nvmlDeviceGetComputeRunningProcesses")
        return result

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        running = pynvml.throwOnVersionMismatch(self._running)
        result: list[Any] = running(handle, "graphics", "nvmlDeviceGetGraphicsRunningProcesses")
        return result

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, ...]:
        return tuple(self._device_query("nvmlDeviceGetRemappedRows", handle, ()))

    def nvmlDeviceGetCurrentEccMode(self, handle: FakeHandle) -> int:
        return int(self.nvmlDeviceGetEccMode(handle)[0])

    def nvmlDeviceGetPendingEccMode(self, handle: FakeHandle) -> int:
        return int(self.nvmlDeviceGetEccMode(handle)[1])

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list[int]) -> Any:
        def values() -> Any:
            captured = self._devices[handle.index]["__field_values__"]
            out = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
            for slot, field_id in zip(out, fieldIds, strict=True):
                slot.fieldId = field_id
                names = [n for n in self._field_names.get(field_id, []) if n in captured]
                value = captured[names[0]] if names else None
                if value is None:
                    slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                elif isinstance(value, str) and value.startswith("ret="):
                    slot.nvmlReturn = int(value.removeprefix("ret="))
                elif isinstance(value, float):
                    slot.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
                    slot.value.dVal = value
                elif 0 <= value < 2**32:
                    slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                    slot.value.uiVal = value
                else:
                    slot.valueType = pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG
                    slot.value.sllVal = value
            return out

        return self._device_query("nvmlDeviceGetFieldValues", handle, (), values)

    # -----------------------------------------------------------------------------------------
    # Events

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._check_init("nvmlEventSetCreate")
        event_set = FakeEventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(
        self,
        handle: FakeHandle,
        eventTypes: int,
        eventSet: FakeEventSet,
    ) -> None:
        def register() -> None:
            eventSet.devices.add(handle.index)

        self._device_query("nvmlDeviceRegisterEvents", handle, (), register)

    def nvmlEventSetWait_v2(self, eventSet: FakeEventSet, timeoutms: int) -> FakeEventData:
        """An injected XID at once, else ``NVMLError_Timeout`` after a short real wait;
        ``NVMLError_GpuIsLost`` while a GPU registered in the set is lost."""
        self._check_init("nvmlEventSetWait_v2")
        self.calls["nvmlEventSetWait_v2"] += 1
        if eventSet.freed:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

        def lost() -> bool:
            return any(self._is_lost(gpu) for gpu in eventSet.devices)

        def ready() -> bool:
            return lost() or any(gpu in eventSet.devices for gpu, _ in self._xids)

        with self._cond:
            if not self._cond.wait_for(ready, timeout=min(timeoutms / 1000, self.event_wait_cap_s)):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            if lost():
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            pos = next(i for i, (gpu, _) in enumerate(self._xids) if gpu in eventSet.devices)
            gpu, xid = self._xids.pop(pos)
        return FakeEventData(
            device=FakeHandle(gpu),
            eventType=pynvml.nvmlEventTypeXidCriticalError,
            eventData=xid,
        )

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        self._check_init("nvmlEventSetFree")
        eventSet.freed = True

    # -----------------------------------------------------------------------------------------
    # Every other captured device query, by name

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "_removed"):
            raise AttributeError(f"fake_pynvml: {name} was removed")
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        # Also reached when __getattribute__ refuses a removed name: refuse it here too.
        if not name.startswith("nvmlDevice") or name in self._removed:
            raise AttributeError(name)
        prefix = name + "["
        device = self._devices[0]
        if name not in device and not any(k.startswith(prefix) for k in device):
            raise AttributeError(f"fake_pynvml has no capture for {name}")

        def query(handle: FakeHandle, *args: Any) -> Any:
            return self._device_query(name, handle, args)

        query.__name__ = name
        return query

    # -----------------------------------------------------------------------------------------
    # Internals

    def _device_query(
        self,
        name: str,
        handle: FakeHandle,
        args: tuple[Any, ...],
        default: Any = None,
    ) -> Any:
        """Override, else ``default()``, else the captured value or error for this GPU."""
        self._check_init(name)
        self.calls[name] += 1
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < self.gpu_count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        key = _key(name, args)
        outcome = self._override(handle.index, name, key)
        if outcome is not None:
            return outcome.produce()
        if default is not None:
            return default()
        entry = self._devices[handle.index].get(key)
        if entry is None:
            raise NotImplementedError(f"fake_pynvml has no captured value for {key}")
        if not entry["ok"]:
            if entry.get("code") is None:
                raise NotImplementedError(f"the capture called {key} wrongly: {entry['msg']}")
            raise pynvml.NVMLError(entry["code"])
        return _materialize(copy.deepcopy(entry["value"]))

    def _override(
        self, gpu: int | None, name: str, key: str, *, handle_lookup: bool = False
    ) -> _Outcome | None:
        every = (_EVERY_QUERY,) if handle_lookup else (_EVERY_QUERY, _EVERY_DEVICE_QUERY)
        with self._lock:
            for candidate in (
                *((gpu, query) for query in every),
                (gpu, key),
                (gpu, name),
                (None, key),
                (None, name),
            ):
                if candidate[0] is None and candidate[1] in every:
                    continue
                outcome = self._overrides.get(candidate)
                if outcome is not None:
                    return outcome
        return None

    def _is_lost(self, gpu: int) -> bool:
        with self._lock:
            outcome = self._overrides.get((gpu, _EVERY_QUERY))
        return outcome is not None and outcome.error == pynvml.NVML_ERROR_GPU_IS_LOST

    def _running(self, handle: FakeHandle, kind: str, name: str) -> list[Any]:
        def listed() -> list[Any]:
            procs = self._processes.get((handle.index, kind), [])
            return [
                pynvml.nvmlFriendlyObject(
                    {
                        "pid": pid,
                        "usedGpuMemory": used,
                        "gpuInstanceId": 0xFFFFFFFF,
                        "computeInstanceId": 0xFFFFFFFF,
                    }
                )
                for pid, used in procs
            ]

        result: list[Any] = self._device_query(name, handle, (), listed)
        return result

    def _system_value(self, name: str) -> Any:
        self._check_init(name)
        self.calls[name] += 1
        outcome = self._override(None, name, name)
        if outcome is not None:
            return outcome.produce()
        entry = self._system[name]
        if not entry["ok"]:
            raise pynvml.NVMLError(entry["code"])
        return entry["value"]

    def _check_init(self, name: str) -> None:
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    @staticmethod
    def _device_capture(captured: dict[str, Any], index: int) -> dict[str, Any]:
        """The captured card as GPU ``index``: same readings, its own identity."""
        device = copy.deepcopy(captured)
        if index == 0:
            return device

        def put(key: str, value: Any) -> None:
            if key in device and device[key]["ok"]:
                device[key]["value"] = value

        uuid = str(device["nvmlDeviceGetUUID"]["value"])
        put("nvmlDeviceGetUUID", f"{uuid[:-4]}{index:04x}")
        put("nvmlDeviceGetSerial", str(int(device["nvmlDeviceGetSerial"]["value"]) + index))
        put("nvmlDeviceGetIndex", index)
        put("nvmlDeviceGetMinorNumber", index)
        for key in ("nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v3"):
            if key in device and device[key]["ok"]:
                pci = device[key]["value"]
                pci["bus"] = index
                pci["busId"] = f"00000000:{index:02X}:{pci['device']:02X}.0"
                pci["busIdLegacy"] = f"0000:{index:02X}:{pci['device']:02X}.0"
        return device


def make(gpus: int = 1, **kwargs: Any) -> FakeNvml:
    """A fresh fake library with ``gpus`` copies of the captured H100."""
    return FakeNvml(gpus, **kwargs)
