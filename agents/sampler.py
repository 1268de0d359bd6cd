"""One tick of the agent: read the GPUs and the host, merge the slow reads, derive events.

Backend-agnostic on purpose: NVML and the simulator only report readings (plus XIDs), and this
module alone decides what counts as an event (GPU lost or back, an ECC counter rising, a row
remap pending, a thermal or hardware slowdown starting or ending). Consecutive readings make
that decision robust to a fault being present at start: a GPU already lost when the agent
starts is reported once, as lost, just as one that is lost later.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from agents.gpu.base import SLOW_FIELDS, GpuBackend, GpuInventory
from agents.host import HostSampler
from agents.protocol import (
    Event,
    EventKind,
    GpuReading,
    HostInfo,
    HostReading,
    Inventory,
    NodeState,
    Sample,
    ecc_rose_message,
    encode,
    gpu_back_message,
    gpu_lost_message,
    remap_pending_message,
    slowdown_ended_message,
    slowdown_message,
    slowdown_reasons,
    xid_message,
)


def inventory_frame(
    node: str, gpus: GpuInventory, host: HostInfo, state: NodeState | None
) -> Inventory:
    """The Inventory frame: the backend's static facts, the host's, and the ops state."""
    return Inventory(
        node=node,
        backend=gpus.backend,
        backend_note=gpus.note,
        driver_version=gpus.driver_version,
        cuda_version=gpus.cuda_version,
        nvml_version=gpus.nvml_version,
        host=host,
        gpus=gpus.gpus,
        state=state,
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """An event before it gets a sequence number and timestamp."""

    kind: EventKind
    gpu: int | None
    message: str
    xid: int | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class RawTick:
    """What the blocking reads returned, before numbering and event derivation."""

    gpus: list[GpuReading]
    host: HostReading
    xids: list[Finding]


_HEALTHY = GpuReading(index=-1)

#: Events kept for new clients. Events are rare (a healthy node has none), so this covers
#: far longer than the sample history: hours of a flapping GPU, not seconds.
EVENT_HISTORY = 64


def derive_findings(prev: GpuReading | None, cur: GpuReading) -> list[Finding]:
    """What changed between two readings of one GPU that an operator must hear about."""
    before = prev if prev is not None else _HEALTHY
    i = cur.index
    out: list[Finding] = []
    if cur.lost and not before.lost:
        out.append(Finding("gpu_lost", i, gpu_lost_message(i, news=True)))
        return out
    if before.lost and not cur.lost:
        out.append(Finding("gpu_back", i, gpu_back_message(i)))
    if cur.lost:
        return out
    new_ecc, old_ecc = cur.ecc_uncorrected_volatile, before.ecc_uncorrected_volatile
    if prev is not None and new_ecc is not None and old_ecc is not None and new_ecc > old_ecc:
        out.append(Finding("ecc", i, ecc_rose_message(i, old_ecc, new_ecc), count=new_ecc))
    if cur.remap_pending and not before.remap_pending:
        out.append(Finding("remap_pending", i, remap_pending_message(i)))
    slowed, was = slowdown_reasons(cur), slowdown_reasons(before)
    if slowed and not was:
        out.append(Finding("slowdown", i, slowdown_message(i, slowed)))
    elif prev is not None and was and not slowed:
        out.append(Finding("slowdown", i, slowdown_ended_message(i)))
    return out


class Sampler:
    """Produces Sample and Event frames and keeps the recent ones for new clients.

    ``read`` is blocking (it calls the backend) and runs on one worker thread; ``slow_tick``
    runs on another. The buffers and sequence numbers are touched only on the event loop
    (``record`` and ``event``), so that side needs no lock; the slow values are handed over
    under a lock.

    The history is kept only as encoded replay frames, since it is only ever sent: a second
    ring of the same samples decoded (about 4 kB of objects for 8 GPUs, as much again as the
    frame) doubled the agent's buffers for nothing. Only the newest sample is kept decoded too
    (``latest``), for the readers that look at it.

    Samples and events are numbered apart, each from 1 per agent run: consecutive samples
    have consecutive numbers, so a gap in a stream's ``Sample.seq`` is a sample lost, never an
    event that took its number.
    """

    def __init__(
        self,
        backend: GpuBackend,
        host: HostSampler,
        *,
        history_len: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.host = host
        #: The newest sample, decoded: what the agent itself (a drain waiting for idle GPUs)
        #: and local readers (an exporter) look at, without another read of the GPUs.
        self.latest: Sample | None = None
        #: The recent samples, encoded once as replay frames for every client that connects,
        #: oldest first; the last is ``latest``.
        self.replay: deque[bytes] = deque(maxlen=history_len)
        #: Recent events (the GPUs', state changes, notices), encoded as replay frames: a
        #: console that connects after one still hears of it, dated by its own ts, though the
        #: samples around it have gone.
        self.event_replay: deque[bytes] = deque(maxlen=EVENT_HISTORY)
        self._clock = clock
        self._seq = 0  # the latest sample's number
        self._event_seq = 0  # the latest event's number
        self._prev: dict[int, GpuReading] = {}
        self._slow: dict[int, dict[str, int | None]] = {}
        self._slow_lock = threading.Lock()

    def history(self, full: bool = True) -> list[bytes]:
        """What a new client is sent after the inventory: the buffered samples, or with
        ``full`` off (a one-shot command) the newest alone, as a live sample so that the
        command need not wait an interval for one; then the recent events (after, so a reader
        can date each against the newest sample)."""
        if full:
            return [*self.replay, *self.event_replay]
        # The daemon records and publishes a sample with no await between: it is not doubled.
        newest = [encode(self.latest)] if self.latest is not None else []
        return [*newest, *self.event_replay]

    def release(self) -> None:
        """Let go of the buffers: the agent has stopped for good. For a process that goes on
        hosting other agents (the demo fleet, the soak's node hosts): a stopped agent is
        cyclic garbage (its handler, server and scheduler call back into it), and what it
        buffered (up to 4 MB of bytes at 8 GPUs) is invisible to the collector's thresholds,
        which count only objects that can be in cycles; it stayed until a rare full
        collection, a node host growing by every agent it had restarted."""
        self.replay.clear()
        self.event_replay.clear()
        self.latest = None

    def buffered_seqs(self) -> range:
        """The numbers of the samples in the replay buffer (consecutive, as samples are)."""
        return range(self._seq - len(self.replay) + 1, self._seq + 1)

    def event(
        self,
        kind: EventKind,
        message: str,
        *,
        gpu: int | None = None,
        xid: int | None = None,
        count: int | None = None,
        state: NodeState | None = None,
        ts: float | None = None,
    ) -> Event:
        """A new event, numbered and kept for the clients that connect later. Every event
        the agent sends is made here, whatever raised it (a GPU, a state change, a notice):
        one that skipped this would be heard only by the consoles connected at the time."""
        self._event_seq += 1
        event = Event(
            seq=self._event_seq,
            ts=self._clock() if ts is None else ts,
            kind=kind,
            gpu=gpu,
            xid=xid,
            count=count,
            message=message,
            state=state,
        )
        self.event_replay.append(encode(msgspec.structs.replace(event, replay=True)))
        return event

    def slow_tick(self) -> None:
        """The slow cadence: what each backend reads slowly per GPU (energy, PCIe; HBM on the
        simulator); swap, disk and network rates."""
        self.host.read_slow()
        values = self.backend.read_slow()
        with self._slow_lock:
            self._slow = values

    def _merge_slow(self, readings: list[GpuReading]) -> list[GpuReading]:
        with self._slow_lock:
            slow = self._slow
        if not slow:
            return readings
        merged = []
        for r in readings:
            extra = slow.get(r.index)
            if extra and not r.lost:
                r = msgspec.structs.replace(r, **{k: extra[k] for k in SLOW_FIELDS if k in extra})
            merged.append(r)
        return merged

    def read(self) -> RawTick:
        """The blocking part of a tick: backend and host reads, no shared state touched."""
        gpus = self._merge_slow(self.backend.read())
        host = self.host.read()
        xids = [
            Finding("xid", e.gpu, xid_message(e.gpu, e.xid), xid=e.xid)
            for e in self.backend.drain_events()
        ]
        return RawTick(gpus, host, xids)

    def record(self, raw: RawTick) -> tuple[Sample, list[Event]]:
        """Number, timestamp and remember a tick's readings; derive its events."""
        ts = self._clock()
        findings = list(raw.xids)
        for r in raw.gpus:
            findings.extend(derive_findings(self._prev.get(r.index), r))
            self._prev[r.index] = r
        events = [
            self.event(f.kind, f.message, gpu=f.gpu, xid=f.xid, count=f.count, ts=ts)
            for f in findings
        ]
        self._seq += 1
        sample = Sample(seq=self._seq, ts=ts, host=raw.host, gpus=raw.gpus)
        self.latest = sample
        self.replay.append(encode(msgspec.structs.replace(sample, replay=True)))
        return sample, events

    def tick(self) -> tuple[Sample, list[Event]]:
        """Read and record in one go (for ``once`` and tests; the daemon splits the two)."""
        return self.record(self.read())
