"""Choosing the GPU backend: ``auto`` tries NVML and falls back to a host-only agent."""

from __future__ import annotations

import logging
from typing import Literal

from agents.gpu.base import BackendUnavailable, GpuBackend, NoGpus

log = logging.getLogger(f"gpufleet.{__name__}")

BackendName = Literal["auto", "nvml", "sim"]


def open_backend(
    name: BackendName,
    *,
    gpus: int = 8,
    seed: int = 0,
    node: str = "sim",
    interval: float = 1.0,
) -> GpuBackend:
    """The backend asked for. ``nvml`` raises BackendUnavailable when the driver is missing;
    ``auto`` logs one line and carries on without GPUs, so a CPU-only node still reports."""
    if name == "sim":
        from agents.gpu.sim import SimBackend

        return SimBackend(gpus, seed=seed, node=node, interval=interval)
    from agents.gpu.nvml import NvmlBackend

    try:
        return NvmlBackend()
    except BackendUnavailable as exc:
        if name == "nvml":
            raise
        log.warning("no GPUs: %s; running host-only", exc)
        return NoGpus(str(exc))
