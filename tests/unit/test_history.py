"""Sparkline history: fixed rings of numbers, gaps kept as gaps."""

from __future__ import annotations

import msgspec
import pytest

from agents.protocol import GpuReading, Sample
from console.model.history import History
from tests.fakes.simnode import Node


def sample(seq: int, *gpus: GpuReading, replay: bool = False) -> Sample:
    host = Node("h").tick()[0].host
    return Sample(seq=seq, ts=1000.0 + seq, host=host, gpus=list(gpus), replay=replay)


def test_values_come_back_oldest_first_and_wrap_at_capacity() -> None:
    h = History(3)
    for seq in range(1, 6):
        h.append(sample(seq, GpuReading(index=0, util_gpu=seq * 10, power_mw=700_000)))
    assert len(h) == 3
    assert h.seqs() == [3, 4, 5]
    assert h.timestamps() == [1003.0, 1004.0, 1005.0]
    assert h.gpu(0, "util") == [30.0, 40.0, 50.0]
    assert h.gpu(0, "power") == [700_000.0] * 3


def test_missing_readings_are_gaps_not_zeros() -> None:
    h = History(4)
    h.append(sample(1, GpuReading(index=0, util_gpu=5, temp_c=40)))
    h.append(sample(2, GpuReading(index=0, lost=True)))
    h.append(sample(3, GpuReading(index=1, util_gpu=7)))  # GPU 0 absent, GPU 1 new
    assert h.gpu(0, "util") == [5.0, None, None]
    assert h.gpu(0, "temp") == [40.0, None, None]
    assert h.gpu(1, "util") == [None, None, 7.0], "nothing before it was first seen"
    assert h.gpu(7, "util") == [None, None, None], "a GPU never seen"


def test_replay_flags_and_clear() -> None:
    h = History(5)
    h.append(sample(1, GpuReading(index=0), replay=True))
    h.append(sample(2, GpuReading(index=0)))
    assert h.replayed() == [True, False]
    h.clear()
    assert (len(h), h.seqs(), h.gpu(0, "util")) == (0, [], [])


def test_the_sims_samples_round_trip() -> None:
    n = Node("n", gpus=8)
    h = History(10)
    got = [n.tick()[0] for _ in range(12)]
    for s in got:
        h.append(msgspec.structs.replace(s, replay=False))
    # float32 keeps about 7 digits: plenty for a sparkline of 80 GB
    assert h.gpu(5, "mem") == pytest.approx([s.gpus[5].mem_used for s in got[-10:]], rel=1e-6)
    assert h.host_cpu() == pytest.approx([s.host.cpu_percent for s in got[-10:]])


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        History(0)
