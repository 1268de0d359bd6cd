"""A node's recent readings for sparklines, kept as fixed-size rings of numbers.

Why not a deque of ``Sample`` frames: a decoded sample of 8 GPUs is about 5.5 kB of Python
objects, so 300 samples for each of 500 nodes would hold 800 MB to draw a few sparklines. The
screen needs a handful of numbers per GPU per tick; stored as float32 rings that is about 45 kB a
node, 22 MB for 500 nodes, whatever the samples carry.

A missing reading (``None`` on the wire) is NaN here and ``None`` again when read back, so a gap
draws as a gap and never as zero.
"""

from __future__ import annotations

import math
from array import array
from typing import Final, Literal

from agents.protocol import Sample

Metric = Literal["util", "mem", "temp", "power"]
METRICS: Final[tuple[Metric, ...]] = ("util", "mem", "temp", "power")
_NAN: Final = math.nan


#: Each metric and the GpuReading field it comes from.
_FIELDS: Final[tuple[tuple[Metric, str], ...]] = (
    ("util", "util_gpu"), ("mem", "mem_used"), ("temp", "temp_c"), ("power", "power_mw")
)  # fmt: skip


class History:
    """The last ``capacity`` samples of one node: per GPU util %, memory used (bytes),
    temperature (°C) and power (mW); host CPU %; and each sample's seq, ts and replay flag."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("history capacity must be at least 1")
        self.capacity = capacity
        self._head = 0  # where the next sample goes
        self._count = 0
        self._seq = array("q", bytes(8 * capacity))
        self._ts = array("d", bytes(8 * capacity))
        self._replay = array("b", bytes(capacity))
        self._cpu = array("f", [_NAN]) * capacity
        self._gpus: dict[int, dict[Metric, array[float]]] = {}

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self._head = self._count = 0
        self._gpus.clear()

    def drop_since(self, ts: float) -> None:
        """Forget the newest samples taken at or after ``ts`` (by the agent's clock): what an
        agent's replay, starting at ``ts``, is about to tell again."""
        while self._count and self._ts[(self._head - 1) % self.capacity] >= ts:
            self._head = (self._head - 1) % self.capacity
            self._count -= 1

    def keep_gpus(self, same: dict[int, int]) -> None:
        """Keep the readings of the GPUs in ``same`` (old index to new index), under their
        new index, and forget every other GPU's: an agent's re-read inventory must not wipe
        the sparklines of GPUs that did not change, nor give a new card an old one's past."""
        old = self._gpus
        self._gpus = {new: old[was] for was, new in same.items() if was in old}

    def append(self, sample: Sample) -> None:
        i = self._head
        self._seq[i], self._ts[i], self._replay[i] = sample.seq, sample.ts, sample.replay
        cpu = sample.host.cpu_percent
        self._cpu[i] = _NAN if cpu is None else cpu
        seen = set()
        for r in sample.gpus:
            seen.add(r.index)
            rings = self._gpus.get(r.index)
            if rings is None:  # a GPU first seen now: nothing before it
                rings = {m: array("f", [_NAN]) * self.capacity for m in METRICS}
                self._gpus[r.index] = rings
            for metric, name in _FIELDS:
                value = getattr(r, name)
                rings[metric][i] = _NAN if value is None else value
        for index, rings in self._gpus.items():
            if index not in seen:  # a GPU gone from this sample is a gap, not its old value
                for ring in rings.values():
                    ring[i] = _NAN
        self._head = (i + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def _order(self) -> range | list[int]:
        if self._count < self.capacity:
            return range(self._count)
        return [(self._head + k) % self.capacity for k in range(self.capacity)]

    def gpu(self, index: int, metric: Metric) -> list[float | None]:
        """One GPU's metric, oldest first; None where it was not read."""
        rings = self._gpus.get(index)
        if rings is None:
            return [None] * self._count
        ring = rings[metric]
        return [None if math.isnan(ring[k]) else ring[k] for k in self._order()]

    def host_cpu(self) -> list[float | None]:
        return [None if math.isnan(self._cpu[k]) else self._cpu[k] for k in self._order()]

    def seqs(self) -> list[int]:
        return [self._seq[k] for k in self._order()]

    def timestamps(self) -> list[float]:
        return [self._ts[k] for k in self._order()]

    def replayed(self) -> list[bool]:
        return [bool(self._replay[k]) for k in self._order()]
