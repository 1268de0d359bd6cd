"""The one interface every GPU backend implements, and what it hands the sampler.

A backend only reads. It never raises for a per-GPU fault: a GPU it cannot read comes back as
``GpuReading(lost=True)``, a value the card does not support as ``None``. The sampler (which
is backend-agnostic) turns transitions between readings into events, so "GPU lost", "GPU back",
"ECC counter rose" and "thermal slowdown began" are decided in one place for NVML and the
simulator alike. Only what a backend alone can see (XID events from the driver) arrives through
``drain_events``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from agents.protocol import GpufleetError, GpuInfo, GpuReading


class BackendUnavailable(GpufleetError):
    """The backend cannot start here (no driver, no library). The message says why."""


@dataclass(frozen=True, slots=True)
class GpuInventory:
    """Static facts, read once when the backend opens (and again after a GPU comes back)."""

    backend: Literal["nvml", "sim", "none"]
    gpus: list[GpuInfo]
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    note: str | None = None  # e.g. why a host has no GPUs


@dataclass(frozen=True, slots=True)
class XidEvent:
    """An XID the driver reported: the one GPU fault the readings alone would not show.

    ECC, remapping, thermal and lost/back events are derived by the sampler from consecutive
    readings instead, so NVML and the simulator cannot disagree on them.
    """

    gpu: int
    xid: int
    ts: float  # unix time the backend saw it


class GpuBackend(Protocol):
    """What the sampler needs from a source of GPU readings.

    ``read`` runs on every tick and must stay in the tens of microseconds per GPU; ``read_slow``
    holds the reads that block (energy, PCIe throughput, HBM temperature) and runs on its own
    thread at its own cadence; the sampler merges its latest values into each tick's readings.
    """

    @property
    def name(self) -> Literal["nvml", "sim", "none"]: ...

    def inventory(self) -> GpuInventory: ...

    def read(self) -> list[GpuReading]: ...

    def read_slow(self) -> dict[int, dict[str, int | None]]:
        """Per GPU index: field name of ``GpuReading`` -> value, for the slow fields only."""
        ...

    def start_events(self) -> None:
        """Start watching for driver events (XIDs), on the backend's own thread if it needs
        one; called once, when the agent starts serving."""
        ...

    def drain_events(self) -> list[XidEvent]:
        """Events seen since the last call (thread-safe; never blocks)."""
        ...

    def close(self) -> None: ...


class NoGpus:
    """The backend of a host without a usable GPU driver: a host-only agent."""

    name: Literal["none"] = "none"

    def __init__(self, note: str) -> None:
        self._note = note

    def inventory(self) -> GpuInventory:
        return GpuInventory(backend="none", gpus=[], note=self._note)

    def read(self) -> list[GpuReading]:
        return []

    def read_slow(self) -> dict[int, dict[str, int | None]]:
        return {}

    def start_events(self) -> None:
        return None

    def drain_events(self) -> list[XidEvent]:
        return []

    def close(self) -> None:
        return None


#: Fields of GpuReading that may come from ``read_slow`` rather than the tick: a backend's
#: ``read_slow`` returns those it reads slowly (NVML reads HBM temperature on the tick).
SLOW_FIELDS: tuple[str, ...] = ("energy_mj", "pcie_tx_kbs", "pcie_rx_kbs", "temp_mem_c")
