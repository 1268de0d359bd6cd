"""The headless fleet model, fed real frames from the simulator through the agent's sampler."""

from __future__ import annotations

import msgspec
import pytest

from agents.gpu.clocks import CLOCK_REASON_BITS
from agents.protocol import CLOCK_REASONS, Event, NodeState, clock_reason_words
from agents.sampler import derive_findings
from console.model.fleet import AlertRules, FleetState
from console.model.inventory import parse_inventory
from tests.fakes.simnode import Node, feed

FLEET = '[[group]]\nname = "train"\nnodes = "gpu[1-3]"\n'


@pytest.fixture
def fleet() -> FleetState:
    return FleetState(parse_inventory(FLEET, "f").nodes)


def kinds(fleet: FleetState, name: str) -> list[str]:
    return [a.kind for a in fleet.nodes[name].alerts]


def test_a_node_is_connecting_until_live_samples_arrive(fleet: FleetState) -> None:
    n = Node("gpu1")

    def link() -> str:  # read afresh each time (mypy would narrow an attribute)
        return fleet.nodes["gpu1"].link

    assert link() == "connecting"
    fleet.apply("gpu1", n.inventory(), 0.0)
    replay = msgspec.structs.replace(n.tick()[0], replay=True)
    fleet.apply("gpu1", replay, 0.1)
    assert link() == "connecting"
    assert fleet.nodes["gpu1"].sample == replay, "history fills the row before live samples"
    feed(fleet, n, 1.0)
    assert link() == "live"
    assert len(fleet.nodes["gpu1"].history) == 2


def test_stale_after_missing_intervals_and_live_again(fleet: FleetState) -> None:
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 10.0)
    fleet.tick(12.9)
    assert fleet.nodes["gpu1"].link == "live"
    fleet.tick(13.5)
    view = fleet.nodes["gpu1"]
    assert (view.link, view.link_reason) == ("stale", "no sample for 4s")
    assert kinds(fleet, "gpu1") == ["stale"]
    feed(fleet, n, 14.0)
    assert view.link == "live"
    assert kinds(fleet, "gpu1") == []


def test_agent_clock_jumping_back_does_not_make_a_node_stale(fleet: FleetState) -> None:
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    sample, _ = n.tick()
    fleet.apply("gpu1", msgspec.structs.replace(sample, ts=sample.ts - 86_400), 5.0)
    fleet.tick(6.0)
    assert fleet.nodes["gpu1"].link == "live"


def test_a_clock_jump_keeps_the_sparklines_in_arrival_order(fleet: FleetState) -> None:
    """Staleness and the sparklines run on the console's clock, in the order samples came:
    an agent whose clock jumps back an hour (NTP, a wrong RTC) neither goes stale nor has
    its history reordered, and its newest sample is the one shown."""
    n = Node("gpu1", gpus=1)
    fleet.apply("gpu1", n.inventory(), 0.0)
    temps = []
    for i in range(6):
        sample, _ = n.tick()
        jumped = sample.ts - (3600 if i >= 3 else 0)
        fleet.apply("gpu1", msgspec.structs.replace(sample, ts=jumped), 1.0 + i)
        temps.append(sample.gpus[0].temp_c)
        fleet.tick(1.5 + i)
        assert fleet.nodes["gpu1"].link == "live"
    view = fleet.nodes["gpu1"]
    assert view.history.gpu(0, "temp")[-6:] == temps
    assert view.sample is not None and view.sample.gpus[0].temp_c == temps[-1]


def test_down_links_are_critical_alerts(fleet: FleetState) -> None:
    fleet.set_link("gpu2", "hostkey_changed", "host key for gpu2 changed", 1.0)
    [alert] = fleet.nodes["gpu2"].alerts
    assert alert.severity == "critical"
    assert "host key for gpu2 changed" in alert.message


@pytest.mark.parametrize(
    ("fault", "kind", "severity"),
    [
        ("overheat", "temperature", "critical"),
        ("overheat", "slowdown", "warning"),
        ("xid79", "xid", "critical"),
        ("xid79", "gpu_lost", "critical"),
        ("ecc", "ecc", "critical"),
        ("ecc", "remap_pending", "warning"),
        ("lost", "gpu_lost", "critical"),
    ],
)
def test_each_fault_raises_its_alert(
    fleet: FleetState, fault: str, kind: str, severity: str
) -> None:
    n = Node("gpu3")
    fleet.apply("gpu3", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    assert kinds(fleet, "gpu3") == []
    n.backend.inject(fault, 1)
    for t in range(2, 12):
        feed(fleet, n, float(t))
    alerts = [a for a in fleet.nodes["gpu3"].alerts if a.kind == kind]
    assert alerts, f"no {kind} alert after {fault}: {fleet.nodes['gpu3'].alerts}"
    assert alerts[0].severity == severity
    assert alerts[0].gpu == 1


def test_busy_power_capped_gpus_are_not_alerts(fleet: FleetState) -> None:
    n = Node("gpu1", gpus=8)
    fleet.apply("gpu1", n.inventory(), 0.0)
    capped = 0
    for t in range(1, 300):
        feed(fleet, n, float(t))
        sample = fleet.nodes["gpu1"].sample
        assert sample is not None
        capped += sum("sw_power_cap" in (g.clock_reasons or []) for g in sample.gpus)
        assert fleet.nodes["gpu1"].alerts == []
    assert capped, "the simulator should have capped some GPU in 300 s"


def test_xid_alert_expires_after_its_window() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes, AlertRules(xid_window_s=60))
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    fleet.apply(
        "gpu1", Event(seq=1, ts=0.0, kind="xid", gpu=0, xid=13, message="GPU 0: XID 13"), 1.0
    )
    assert kinds(fleet, "gpu1") == ["xid"]
    feed(fleet, n, 70.0)
    assert kinds(fleet, "gpu1") == []


def test_state_events_update_the_ops_state(fleet: FleetState) -> None:
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    drained = NodeState(state="drained", reason="bad HBM", who="alice", since=5.0)
    fleet.apply("gpu1", Event(seq=9, ts=5.0, kind="state", message="drained", state=drained), 5.0)
    assert fleet.nodes["gpu1"].state == drained


def test_a_retold_state_event_does_not_undo_the_newer_inventory(fleet: FleetState) -> None:
    """Retold on connect, an old state event comes after the inventory, which is newer: it
    goes to the node's events, the state stays the inventory's."""
    n = Node("gpu1")
    now = NodeState(state="schedulable", reason="fixed", who="bob", since=9.0)
    old = NodeState(state="drained", reason="bad HBM", who="alice", since=5.0)
    fleet.apply("gpu1", n.inventory(now), 10.0)
    retold = Event(seq=1, ts=5.0, kind="state", message="drained", state=old, replay=True)
    fleet.apply("gpu1", retold, 10.0)
    assert fleet.nodes["gpu1"].state == now
    assert list(fleet.nodes["gpu1"].events) == [retold]


def temps(fleet: FleetState, gpu: int) -> list[float | None]:
    return fleet.nodes["gpu1"].history.gpu(gpu, "temp")


def test_a_gpu_coming_back_keeps_every_gpus_sparklines(fleet: FleetState) -> None:
    """The agent sends its inventory again mid-session when a lost GPU answers again: the
    history of the GPUs that are the same cards goes on (it was wiped, every sparkline
    emptied, before)."""
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    for t in range(4):
        feed(fleet, n, float(t))
    n.backend.inject("lost", 1)
    feed(fleet, n, 4.0)
    n.backend.inject("clear", 1)
    assert [e.kind for e in feed(fleet, n, 5.0)] == ["gpu_back"]
    before = [temps(fleet, 0), temps(fleet, 1)]
    fleet.apply("gpu1", n.inventory(), 5.0)  # as the agent sends it after gpu_back
    feed(fleet, n, 6.0)
    view = fleet.nodes["gpu1"]
    assert len(view.history) == 7
    assert temps(fleet, 0)[:6] == before[0] and None not in before[0]
    assert temps(fleet, 1)[:6] == before[1]
    assert before[1][4] is None and None not in before[1][:4], "the lost tick is the only gap"


def test_a_new_inventory_drops_only_the_gpus_gone_or_changed(fleet: FleetState) -> None:
    n = Node("gpu1", gpus=3)
    inv = n.inventory()
    fleet.apply("gpu1", inv, 0.0)
    for t in range(3):
        feed(fleet, n, float(t))
    kept = temps(fleet, 0)
    g = inv.gpus
    swapped = msgspec.structs.replace(g[1], uuid="GPU-another-card")
    fleet.apply("gpu1", msgspec.structs.replace(inv, gpus=[g[0], swapped]), 3.0)
    assert temps(fleet, 0) == kept, "the same card: its history stays"
    assert temps(fleet, 1) == [None] * 3, "another card at index 1: not the old one's past"
    assert temps(fleet, 2) == [None] * 3, "a GPU gone: its history goes"
    # The same card at another index (re-enumerated), and one without a UUID (matched by
    # index): both keep theirs.
    feed(fleet, n, 4.0)
    one = temps(fleet, 1)
    moved = msgspec.structs.replace(g[0], index=5)
    anonymous = msgspec.structs.replace(swapped, uuid=None)
    fleet.apply("gpu1", msgspec.structs.replace(inv, gpus=[moved, anonymous]), 5.0)
    assert temps(fleet, 5)[:3] == kept and temps(fleet, 5)[3] is not None
    assert temps(fleet, 0) == [None] * 4, "nothing left at the old index"
    assert temps(fleet, 1) == one


def test_subscribers_get_coalesced_changes(fleet: FleetState) -> None:
    calls: list[set[str]] = []
    fleet.subscribe(calls.append)
    a, b = Node("gpu1"), Node("gpu2")
    for t in range(50):  # 100 frames between two refreshes
        feed(fleet, a, float(t))
        feed(fleet, b, float(t))
    assert fleet.flush() == {"gpu1", "gpu2"}
    assert calls == [{"gpu1", "gpu2"}]
    assert fleet.flush() == set()
    assert len(calls) == 1, "nothing changed: nobody is called"


def test_a_reconnect_replaces_the_history_instead_of_doubling_it(fleet: FleetState) -> None:
    n = Node("gpu1")
    samples = [n.tick()[0] for _ in range(4)]
    for _ in range(2):  # two sessions, each replaying the agent's buffer
        fleet.apply("gpu1", n.inventory(), 0.0)
        for s in samples:
            fleet.apply("gpu1", msgspec.structs.replace(s, replay=True), 0.0)
    assert fleet.nodes["gpu1"].history.seqs() == [s.seq for s in samples]


def test_a_reconnect_with_a_longer_buffer_keeps_one_copy_of_each_sample(
    fleet: FleetState,
) -> None:
    """The second session's replay starts inside what the console holds and runs past it."""
    n = Node("gpu1")
    samples = [n.tick()[0] for _ in range(6)]
    fleet.apply("gpu1", n.inventory(), 0.0)
    for s in samples[:4]:
        fleet.apply("gpu1", s, 0.0)
    fleet.apply("gpu1", n.inventory(), 0.0)
    for s in samples[2:]:
        fleet.apply("gpu1", msgspec.structs.replace(s, replay=True), 0.0)
    assert fleet.nodes["gpu1"].history.seqs() == [s.seq for s in samples]


def test_an_agent_restarted_with_an_empty_buffer_keeps_the_sparklines(fleet: FleetState) -> None:
    """Upgrading a pool restarts its agents: the new agent's buffer starts at its start, so
    the console keeps what it held from the old one and the replay follows it (the new
    agent numbers from 1 again, its clock goes on)."""
    old = Node("gpu1")
    fleet.apply("gpu1", old.inventory(), 0.0)
    before = [old.tick()[0] for _ in range(5)]
    for s in before:
        fleet.apply("gpu1", s, 0.0)
    new = Node("gpu1")
    new.clock.now = old.clock.now + 2.0  # the same host's clock: the restart took 2 s
    after = [new.tick()[0] for _ in range(3)]
    fleet.apply("gpu1", new.inventory(), 0.0)
    for s in after:
        fleet.apply("gpu1", msgspec.structs.replace(s, replay=True), 0.0)
    history = fleet.nodes["gpu1"].history
    assert history.timestamps() == [s.ts for s in before + after]
    assert history.seqs() == [1, 2, 3, 4, 5, 1, 2, 3]
    assert all(v is not None for v in history.gpu(0, "util"))


def test_a_broken_stream_is_stale_first_and_down_after_the_stale_window(
    fleet: FleetState,
) -> None:
    """An agent restarting (systemd brings it back in a second or two) must not page: while
    its data is recent the node is stale, saying why; if nothing comes back in the stale
    window, it is down with the link's reason."""
    n = Node("gpu1")
    view = fleet.nodes["gpu1"]
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 10.0)
    fleet.set_link("gpu1", "agent_down", "the agent closed the stream", 10.5)
    assert view.link == "stale"
    assert "the agent closed the stream; reconnecting" in view.link_reason
    assert kinds(fleet, "gpu1") == ["stale"]
    fleet.tick(12.0)
    assert view.link == "stale"
    fleet.tick(13.5)
    assert (view.link, view.link_reason) == ("agent_down", "the agent closed the stream")
    assert kinds(fleet, "gpu1") == ["unreachable"]
    feed(fleet, n, 15.0)
    assert (view.link, view.lost) == ("live", None)


def test_a_stream_back_in_time_never_shows_down(fleet: FleetState) -> None:
    n = Node("gpu1")
    view = fleet.nodes["gpu1"]
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 10.0)
    fleet.set_link("gpu1", "agent_down", "the agent closed the stream", 10.5)
    fleet.apply("gpu1", n.inventory(), 11.0)
    feed(fleet, n, 11.5)
    fleet.tick(20.0)
    assert (view.link, view.link_reason) == ("stale", "no sample for 8s"), "an ordinary stale"


def test_a_failure_after_the_stale_window_is_down_at_once(fleet: FleetState) -> None:
    n = Node("gpu1")
    view = fleet.nodes["gpu1"]
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 10.0)
    fleet.tick(14.0)
    assert view.link == "stale"
    fleet.set_link("gpu1", "unreachable", "keepalive timed out", 15.0)
    assert (view.link, view.link_reason) == ("unreachable", "keepalive timed out")


def test_recent_events_retold_on_connect_are_dated_by_the_agent_and_not_doubled() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes, AlertRules(xid_window_s=60))
    n = Node("gpu1")
    view = fleet.nodes["gpu1"]
    n.backend.inject("xid79", 0)
    sample, events = n.tick()
    xid = next(e for e in events if e.kind == "xid")
    retold = msgspec.structs.replace(xid, replay=True)
    later = msgspec.structs.replace(sample, ts=xid.ts + 50, replay=True)  # 50 s later
    for _ in range(2):  # two sessions with the same agent
        fleet.apply("gpu1", n.inventory(), 100.0)
        fleet.apply("gpu1", later, 100.0)
        fleet.apply("gpu1", retold, 100.0)
    assert [e.kind for e in view.events] == ["xid"], "heard once"
    assert view.xids_seen[0] == (50.0, 79), "dated 50 s before now, by the agent's clock"
    assert "xid" in kinds(fleet, "gpu1")
    fleet.tick(109.0)
    assert "xid" in kinds(fleet, "gpu1")
    fleet.tick(111.0)
    assert "xid" not in kinds(fleet, "gpu1"), "expired 60 s after the agent saw it"


def test_the_alert_log_keeps_each_alert_from_raised_to_ended(fleet: FleetState) -> None:
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    n.backend.inject("overheat", 0)
    first = None
    for t in range(2, 12):  # the simulated GPU heats up over a few ticks
        feed(fleet, n, float(t))
        if first is None and "temperature" in kinds(fleet, "gpu1"):
            first = float(t)
    temps = [r for r in fleet.alert_log if r.alert.kind == "temperature"]
    assert len(temps) == 1, "one record while it lasts, however often it is judged"
    [record] = temps
    assert (record.since, record.ended) == (first, None)
    n.backend.inject("clear", 0)
    for t in range(6, 40):
        feed(fleet, n, float(t))
        if record.ended is not None:
            break
    assert record.ended is not None, "cooled down: the alert ended"
    assert record.alert.node == "gpu1"
    assert fleet.nodes["gpu1"].open_alerts.get(("temperature", 0)) is None


def test_alerts_say_counts_and_clock_reasons_in_the_words_every_view_uses(
    fleet: FleetState,
) -> None:
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    sample, _ = n.tick()
    first = msgspec.structs.replace(
        sample.gpus[0], ecc_uncorrected_volatile=1, clock_reasons=["sw_thermal_slowdown"]
    )
    fleet.apply("gpu1", msgspec.structs.replace(sample, gpus=[first, *sample.gpus[1:]]), 1.0)
    said = {a.kind: a.message for a in fleet.nodes["gpu1"].alerts}
    assert said["ecc"] == "GPU 0: 1 uncorrected ECC error", "one error, not errors"
    assert said["slowdown"] == "GPU 0: clocks slowed down by thermal (SW)"
    assert derive_findings(None, first)[-1].message == said["slowdown"], "the agent's event too"
    assert clock_reason_words(["hw_thermal_slowdown", "sw_power_cap", "bit_0x800"]) == (
        "power cap, thermal (HW), bit_0x800"
    ), "NVML's order, and a reason without words as it came"
    assert set(CLOCK_REASON_BITS.values()) == set(CLOCK_REASONS), "one table"
