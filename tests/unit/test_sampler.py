"""Events come from consecutive readings, decided in one place for every backend; the Sampler
numbers samples and events on one sequence and keeps a bounded ring for new clients."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agents.gpu.base import SLOW_FIELDS
from agents.gpu.sim import SimBackend
from agents.host import HostSampler
from agents.protocol import CLOCK_REASONS, Event, GpuReading, HostReading, NodeState, Sample, decode
from agents.sampler import EVENT_HISTORY, Finding, Sampler, derive_findings

# ---------------------------------------------------------------------------------------------
# derive_findings


def healthy(index: int = 0, **kw: Any) -> GpuReading:
    base: dict[str, Any] = {
        "util_gpu": 0,
        "temp_c": 35,
        "clock_reasons": [],
        "ecc_uncorrected_volatile": 0,
        "remap_pending": False,
    }
    base.update(kw)
    return GpuReading(index=index, **base)


def lost(index: int = 0) -> GpuReading:
    return GpuReading(index=index, lost=True)


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def run(readings: list[GpuReading]) -> list[list[Finding]]:
    """Findings for each reading in turn, as the sampler feeds them."""
    prev: GpuReading | None = None
    out = []
    for r in readings:
        out.append(derive_findings(prev, r))
        prev = r
    return out


def test_healthy_readings_give_nothing() -> None:
    assert run([healthy(), healthy(), healthy(util_gpu=100, temp_c=70)]) == [[], [], []]


def test_gpu_lost_once_while_still_lost() -> None:
    got = run([healthy(3), lost(3), lost(3), lost(3)])
    assert kinds(got[1]) == ["gpu_lost"]
    assert got[1][0].gpu == 3
    assert "3" in got[1][0].message
    assert got[2] == []
    assert got[3] == []


def test_gpu_back() -> None:
    got = run([healthy(2), lost(2), healthy(2), healthy(2)])
    assert kinds(got[2]) == ["gpu_back"]
    assert got[2][0].gpu == 2
    assert got[3] == []


def test_gpu_lost_at_first_reading_is_reported_once() -> None:
    got = run([lost(5), lost(5), lost(5)])
    assert kinds(got[0]) == ["gpu_lost"]
    assert got[0][0].gpu == 5
    assert got[1:] == [[], []]


def test_lost_again_after_back_is_reported_again() -> None:
    got = run([lost(), healthy(), lost()])
    assert [kinds(g) for g in got] == [["gpu_lost"], ["gpu_back"], ["gpu_lost"]]


def test_ecc_counter_rising_with_count() -> None:
    got = run([healthy(ecc_uncorrected_volatile=2), healthy(ecc_uncorrected_volatile=5)])
    assert got[0] == []
    assert kinds(got[1]) == ["ecc"]
    assert got[1][0].count == 5
    assert got[1][0].gpu == 0
    assert "2 -> 5" in got[1][0].message


def test_ecc_not_on_first_reading() -> None:
    assert derive_findings(None, healthy(ecc_uncorrected_volatile=7)) == []


@pytest.mark.parametrize(("old", "new"), [(3, 3), (3, 0), (None, 4), (4, None), (None, None)])
def test_ecc_not_reported_unless_the_counter_rises(old: int | None, new: int | None) -> None:
    got = derive_findings(
        healthy(ecc_uncorrected_volatile=old), healthy(ecc_uncorrected_volatile=new)
    )
    assert "ecc" not in kinds(got)


def test_remap_pending_newly_set() -> None:
    got = run([healthy(), healthy(remap_pending=True), healthy(remap_pending=True)])
    assert got[0] == []
    assert kinds(got[1]) == ["remap_pending"]
    assert got[2] == []  # still pending: not repeated


def test_remap_pending_at_first_reading_is_reported() -> None:
    assert kinds(derive_findings(None, healthy(remap_pending=True))) == ["remap_pending"]


def test_ecc_and_remap_in_the_same_tick() -> None:
    got = derive_findings(
        healthy(ecc_uncorrected_volatile=0),
        healthy(ecc_uncorrected_volatile=1, remap_pending=True),
    )
    assert kinds(got) == ["ecc", "remap_pending"]


@pytest.mark.parametrize(
    "reason",
    ["sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown", "hw_power_brake_slowdown"],
)
def test_slowdown_began_and_ended(reason: str) -> None:
    got = run(
        [
            healthy(clock_reasons=["sw_power_cap"]),
            healthy(clock_reasons=["sw_power_cap", reason]),
            healthy(clock_reasons=[reason]),
            healthy(clock_reasons=["sw_power_cap"]),
            healthy(clock_reasons=[]),
        ]
    )
    assert got[0] == []
    assert kinds(got[1]) == ["slowdown"]
    assert "slowed down" in got[1][0].message
    assert CLOCK_REASONS[reason][1] in got[1][0].message, "in the words every view uses"
    assert got[2] == []  # still throttled: not repeated
    assert kinds(got[3]) == ["slowdown"]
    assert "ended" in got[3][0].message
    assert got[4] == []


def test_slowdown_at_first_reading_is_reported() -> None:
    got = derive_findings(None, healthy(clock_reasons=["sw_thermal_slowdown"]))
    assert kinds(got) == ["slowdown"]
    assert "slowed down" in got[0].message


def test_sw_power_cap_alone_is_not_an_event() -> None:
    got = run(
        [
            healthy(clock_reasons=[]),
            healthy(clock_reasons=["sw_power_cap"]),
            healthy(clock_reasons=[]),
            healthy(clock_reasons=["sw_power_cap", "gpu_idle"]),
        ]
    )
    assert got == [[], [], [], []]
    assert derive_findings(None, healthy(clock_reasons=["sw_power_cap"])) == []


def test_lost_gpu_reports_only_lost() -> None:
    before = healthy(ecc_uncorrected_volatile=0)
    got = derive_findings(before, lost())
    assert kinds(got) == ["gpu_lost"]


# ---------------------------------------------------------------------------------------------
# Sampler with the simulator


class StubHost(HostSampler):
    """A host that reads the same numbers every tick, without psutil."""

    def __init__(self) -> None:
        self.reads = 0
        self.reading = HostReading(
            cpu_percent=None,
            cpu_per_core=None,
            load=None,
            mem_total=1 << 30,
            mem_used=0,
            mem_available=1 << 30,
            swap_total=0,
            swap_used=0,
            disk_read_bps=None,
            disk_write_bps=None,
            net_rx_bps=None,
            net_tx_bps=None,
            uptime_s=1.0,
            boot_id="b",
        )

    def prime(self) -> None:
        return None

    def read_slow(self) -> None:
        return None

    def read(self) -> HostReading:
        self.reads += 1
        return self.reading


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make_sampler(gpus: int = 4, history_len: int = 5) -> tuple[Sampler, SimBackend, StubHost]:
    backend = SimBackend(gpus, seed=3, node="t")
    host = StubHost()
    return Sampler(backend, host, history_len=history_len, clock=Clock()), backend, host


def test_sample_has_every_gpu_and_the_host() -> None:
    sampler, _, host = make_sampler(gpus=3)
    sample, events = sampler.tick()
    assert [g.index for g in sample.gpus] == [0, 1, 2]
    assert sample.host == host.reading
    assert host.reads == 1
    assert events == []
    assert sample.replay is False


def test_samples_are_numbered_consecutively_and_events_apart() -> None:
    """A gap in the samples' numbers must mean a sample lost: events, however many a tick
    raises, take numbers of their own (this failed when both shared one counter)."""
    sampler, backend, _ = make_sampler(gpus=4)
    sample_seqs: list[int] = []
    event_seqs: list[int] = []
    kinds_seen: list[str] = []
    script = {2: ("xid79", 1), 4: ("ecc", 2), 5: ("clear", 1), 7: ("lost", 3), 8: ("ecc", 0)}
    for i in range(10):
        if i in script:
            backend.inject(*script[i])
        sample, events = sampler.tick()
        for e in events:
            event_seqs.append(e.seq)
            kinds_seen.append(e.kind)
            assert e.ts == sample.ts
        sample_seqs.append(sample.seq)
    notice = sampler.event("notice", "reboot failed")
    assert sample_seqs == list(range(1, 11))
    assert [*event_seqs, notice.seq] == list(range(1, len(event_seqs) + 2))
    for expected in ("xid", "gpu_lost", "gpu_back", "ecc", "remap_pending"):
        assert expected in kinds_seen
    assert kinds_seen.count("gpu_lost") == 2


def test_every_event_is_retold_whatever_raised_it() -> None:
    """A state change or a notice, made outside a tick, is retold to later clients as a GPU's
    event is (this failed when only the tick's events were kept)."""
    sampler, backend, _ = make_sampler(gpus=2)
    sampler.tick()
    backend.inject("xid79", 1)
    sampler.tick()
    drained = NodeState(state="drained", reason="bad HBM", who="alice", since=5.0)
    said = sampler.event("state", "drained: bad HBM", state=drained)
    sampler.event("notice", "systemctl reboot failed")
    retold = [decode(b) for b in sampler.history()]
    events = [f for f in retold if isinstance(f, Event)]
    assert [e.kind for e in events] == ["xid", "gpu_lost", "state", "notice"]
    assert all(e.replay for e in events)
    assert events[2] == msgspec.structs.replace(said, replay=True)
    assert events[2].state == drained
    brief = [decode(b) for b in sampler.history(full=False)]
    assert [f.kind for f in brief if isinstance(f, Event)] == [e.kind for e in events]


def test_xid_event_carries_gpu_and_code() -> None:
    sampler, backend, _ = make_sampler(gpus=2)
    sampler.tick()
    backend.inject("xid79", 1)
    _, events = sampler.tick()
    xids = [e for e in events if e.kind == "xid"]
    assert len(xids) == 1
    assert xids[0].gpu == 1
    assert xids[0].xid == 79
    assert [e.kind for e in events if e.kind == "gpu_lost"] == ["gpu_lost"]
    _, events = sampler.tick()
    assert events == []  # drained once, and still lost is not news


def test_ecc_event_count_from_the_simulator() -> None:
    sampler, backend, _ = make_sampler(gpus=2)
    sampler.tick()
    backend.inject("ecc", 0)
    backend.inject("ecc", 0)
    _, events = sampler.tick()
    ecc = [e for e in events if e.kind == "ecc"]
    assert len(ecc) == 1
    assert ecc[0].count == 2


def test_history_keeps_at_most_history_len_and_the_newest_decoded() -> None:
    sampler, _, _ = make_sampler(history_len=3)
    assert sampler.latest is None and list(sampler.buffered_seqs()) == []
    produced = [sampler.tick()[0] for _ in range(7)]
    assert len(sampler.replay) == 3
    kept = [decode(b) for b in sampler.replay]
    assert kept == [msgspec.structs.replace(s, replay=True) for s in produced[-3:]]
    assert list(sampler.buffered_seqs()) == [s.seq for s in produced[-3:]]
    assert sampler.latest == produced[-1]


def test_history_of_one() -> None:
    sampler, _, _ = make_sampler(history_len=1)
    sampler.tick()
    last, _ = sampler.tick()
    assert [decode(b) for b in sampler.replay] == [msgspec.structs.replace(last, replay=True)]
    assert sampler.latest == last
    assert list(sampler.buffered_seqs()) == [last.seq]


def test_slow_fields_absent_before_the_first_slow_tick() -> None:
    sampler, _, _ = make_sampler()
    sample, _ = sampler.tick()
    for g in sample.gpus:
        for field in SLOW_FIELDS:
            assert getattr(g, field) is None


def test_slow_fields_are_merged_into_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler, backend, _ = make_sampler(gpus=3)
    seen: dict[int, dict[str, int | None]] = {}
    real = backend.read_slow

    def spy() -> dict[int, dict[str, int | None]]:
        values = real()
        seen.clear()
        seen.update(values)
        return values

    monkeypatch.setattr(backend, "read_slow", spy)
    sampler.slow_tick()
    assert set(seen) == {0, 1, 2}
    sample, _ = sampler.tick()
    for g in sample.gpus:
        for field in SLOW_FIELDS:
            assert seen[g.index][field] is not None
            assert getattr(g, field) == seen[g.index][field], (g.index, field)
        assert g.util_gpu is not None  # the fast fields are kept
    # The same slow values stay until the next slow tick.
    sample2, _ = sampler.tick()
    assert [g.energy_mj for g in sample2.gpus] == [seen[i]["energy_mj"] for i in range(3)]


def test_slow_fields_not_merged_into_lost_gpus() -> None:
    sampler, backend, _ = make_sampler(gpus=3)
    sampler.slow_tick()  # all three healthy: real values for every GPU
    backend.inject("lost", 1)
    sample, events = sampler.tick()
    g1 = sample.gpus[1]
    assert g1.lost
    assert g1 == GpuReading(index=1, lost=True)  # nothing stale attached
    for field in SLOW_FIELDS:
        assert getattr(g1, field) is None
    assert sample.gpus[0].energy_mj is not None
    assert [e.kind for e in events] == ["gpu_lost"]


def test_timestamps_come_from_the_clock() -> None:
    sampler, _, _ = make_sampler()
    a, _ = sampler.tick()
    b, _ = sampler.tick()
    assert b.ts == a.ts + 1.0


def test_history_is_samples_then_recent_events_as_replays() -> None:
    sampler, backend, _ = make_sampler(gpus=2, history_len=3)
    sampler.tick()
    backend.inject("xid79", 1)
    sampler.tick()
    for _ in range(5):
        sampler.tick()
    frames = [decode(b) for b in sampler.history()]
    assert [type(f).__name__ for f in frames] == ["Sample"] * 3 + ["Event", "Event"]
    assert all(isinstance(f, Sample | Event) and f.replay for f in frames)
    assert [f.kind for f in frames if isinstance(f, Event)] == ["xid", "gpu_lost"]
    assert len(sampler.event_replay) <= EVENT_HISTORY

    # A one-shot command's hello: the newest sample alone, as live (no interval's wait for
    # one), then the same events.
    brief = [decode(b) for b in sampler.history(full=False)]
    assert [type(f).__name__ for f in brief] == ["Sample", "Event", "Event"]
    newest = brief[0]
    assert isinstance(newest, Sample) and not newest.replay
    assert newest == sampler.latest
