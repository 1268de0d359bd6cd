"""Facts the agent and the console both judge by, each defined once (agents.protocol, or the
console's model): every user gives the same answer for the same reading, and the docs state
the numbers the code uses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.protocol import (
    CLOCK_REASONS,
    IDLE_UTIL_PERCENT,
    GpuProcess,
    GpuReading,
    Sample,
    at_work,
    computing,
    ecc_message,
    ecc_rose_message,
    slowdown_reasons,
)
from agents.sampler import derive_findings
from console.model.fleet import AlertRules, FleetState, NodeView
from console.model.inventory import parse_inventory
from console.ops.actions import busy_without_processes
from console.present.rows import fleet_totals, summarize
from console.sources.prometheus.source import PromSource
from tests.conftest import REPO
from tests.fakes.prometheus import ANSWERS, Recorded
from tests.fakes.simnode import Node, QuietHost, feed

FLEET = '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[1-2]"\n'
JOB = [GpuProcess(pid=4242, used_memory=1 << 30, user="carol", command="python train.py")]


def fleet_of(*gpus: list[GpuReading], rules: AlertRules | None = None) -> FleetState:
    """gpu1, gpu2, ... each live with the readings given (the inventory a simulated agent's)."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes, rules)
    for n, readings in enumerate(gpus, start=1):
        name = f"gpu{n}"
        fleet.apply(name, Node(name, gpus=len(readings)).inventory(), 0.0)
        sample = Sample(seq=1, ts=1.0, host=QuietHost().read(), gpus=readings)
        fleet.apply(name, sample, 1.0)
    return fleet


# -- a busy GPU: computing (load) and at work (a job on it) ----------------------------------


@pytest.mark.parametrize(
    ("util", "expected"),
    [(None, False), (0, False), (IDLE_UTIL_PERCENT, False), (IDLE_UTIL_PERCENT + 1, True)],
)
def test_computing_is_utilization_above_what_an_idle_card_reads(
    util: int | None, expected: bool
) -> None:
    assert computing(GpuReading(index=0, util_gpu=util)) is expected
    assert at_work(GpuReading(index=0, util_gpu=util)) is expected, "no process: load alone"


def test_a_job_that_waits_is_at_work_but_not_computing() -> None:
    waiting = GpuReading(index=0, util_gpu=0, processes=JOB)
    assert at_work(waiting) and not computing(waiting)


def test_a_lost_gpu_is_neither_computing_nor_at_work() -> None:
    lost = GpuReading(index=0, lost=True, util_gpu=100, processes=JOB)
    assert not computing(lost) and not at_work(lost)


def test_the_totals_count_computing_gpus_as_busy() -> None:
    """A GPU just above the idle reading is busy (it was idle up to 10 % before the totals
    used the agent's threshold); a job that holds a GPU without computing leaves it idle."""
    fleet = fleet_of(
        [
            GpuReading(index=0, util_gpu=IDLE_UTIL_PERCENT + 1),
            GpuReading(index=1, util_gpu=IDLE_UTIL_PERCENT),
            GpuReading(index=2, util_gpu=0, processes=JOB),
            GpuReading(index=3, util_gpu=97, processes=JOB),
        ]
    )
    row = summarize(fleet.nodes["gpu1"], 1.0)
    assert (row.gpus_busy, row.gpus_idle) == (2, 2)
    assert "4 GPUs: 2 busy, 2 idle;" in fleet_totals([row]).line()


def test_the_dialog_points_out_the_work_a_drain_waits_for_that_lists_no_process() -> None:
    """A GPU reading a few percent with no process is idle to the agent's drain: the dialog
    no longer warns of hidden work there (it did at any utilization above 0)."""
    fleet = fleet_of(
        [GpuReading(index=0, util_gpu=IDLE_UTIL_PERCENT)],
        [GpuReading(index=0, util_gpu=IDLE_UTIL_PERCENT + 1)],
    )
    assert busy_without_processes(fleet, ["gpu1", "gpu2"]) == ["gpu2"]
    listed = fleet_of([GpuReading(index=0, util_gpu=90, processes=JOB)])
    assert busy_without_processes(listed, ["gpu1"]) == [], "its work is in the list already"


@pytest.mark.parametrize("doc", ["screen.md", "agent.md", "design.md"])
def test_the_docs_state_the_utilization_the_code_uses(doc: str) -> None:
    text = " ".join((REPO / "docs" / doc).read_text(encoding="utf-8").split())
    assert f"above {IDLE_UTIL_PERCENT} % utilization" in text


# -- the temperature rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp", "limit", "expected"),
    [
        (85, 89, None),
        (86, 89, "warning"),
        (88, 89, "warning"),
        (89, 89, "critical"),
        (95, 89, "critical"),
        (None, 89, None),
        (95, None, None),
    ],
)
def test_the_temperature_rule_is_against_the_gpus_own_slowdown(
    temp: int | None, limit: int | None, expected: str | None
) -> None:
    assert AlertRules(temp_margin_c=3).temperature(temp, limit) == expected


def test_the_temperature_alert_follows_the_rule_and_its_margin() -> None:
    limit = Node("gpu1", gpus=1).inventory().gpus[0].temp_slowdown_c
    assert limit is not None
    reading = [GpuReading(index=0, temp_c=limit - 5)]
    for margin, expected in [(3, None), (5, "warning")]:
        rules = AlertRules(temp_margin_c=margin)
        alerts = fleet_of(reading, rules=rules).nodes["gpu1"].alerts
        hot = [a.severity for a in alerts if a.kind == "temperature"]
        assert hot == ([] if expected is None else [expected])
        assert rules.temperature(limit - 5, limit) == expected


# -- clocks-event reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reasons", "alarming"),
    [
        (None, set()),
        (["sw_power_cap"], set()),
        (["gpu_idle"], set()),
        (["sw_power_cap", "sw_thermal_slowdown"], {"sw_thermal_slowdown"}),
        (["hw_slowdown", "hw_power_brake_slowdown"], {"hw_slowdown", "hw_power_brake_slowdown"}),
        (["bit_0x200"], set()),
    ],
)
def test_the_power_cap_a_busy_gpu_sits_at_is_no_slowdown(
    reasons: list[str] | None, alarming: set[str]
) -> None:
    assert slowdown_reasons(GpuReading(index=0, clock_reasons=reasons)) == alarming


def test_agent_event_console_alert_and_node_view_see_the_same_slowdown() -> None:
    """The agent's event and the console's alert for one reading name the same reasons, in the
    same words; a reading with the power cap alone raises neither."""
    hot = GpuReading(index=0, clock_reasons=["sw_power_cap", "hw_thermal_slowdown"])
    capped = GpuReading(index=0, clock_reasons=["sw_power_cap"])
    event = [f.message for f in derive_findings(capped, hot) if f.kind == "slowdown"]
    alert = [a.message for a in fleet_of([hot]).nodes["gpu1"].alerts if a.kind == "slowdown"]
    assert event == alert == ["GPU 0: clocks slowed down by thermal (HW)"]
    assert not [f for f in derive_findings(None, capped) if f.kind == "slowdown"]
    assert not [a for a in fleet_of([capped]).nodes["gpu1"].alerts if a.kind == "slowdown"]


def test_the_docs_list_every_reason_in_the_words_shown() -> None:
    text = " ".join((REPO / "docs" / "agent.md").read_text(encoding="utf-8").split())
    missing = [words for _, words in CLOCK_REASONS.values() if f"`{words}`" not in text]
    assert missing == []


# -- how a GPU's faults are worded ------------------------------------------------------------


def test_the_agents_events_and_the_consoles_alerts_word_a_fault_alike() -> None:
    """The simulated agent's own events for an XID 79 (the GPU then lost), an ECC error with a
    row remap pending, and the GPU back, beside the alerts the console raises from the same
    stream: one wording, the one the screens have always shown."""
    fleet = fleet_of()
    node = Node("gpu1", gpus=3)
    fleet.apply("gpu1", node.inventory(), 0.0)
    feed(fleet, node, 1.0)
    node.backend.inject("xid79", 1)
    node.backend.inject("ecc", 0)
    events = {(e.kind, e.gpu): e.message for t in (2.0, 3.0) for e in feed(fleet, node, t)}
    alerts = {(a.kind, a.gpu): a.message for a in fleet.nodes["gpu1"].alerts}
    assert events[("xid", 1)] == alerts[("xid", 1)] == "GPU 1: XID 79"
    assert (
        events[("remap_pending", 0)]
        == alerts[("remap_pending", 0)]
        == ("GPU 0: row remapping pending, needs a reset")
    )
    assert alerts[("gpu_lost", 1)] == "GPU 1 is lost"
    assert events[("gpu_lost", 1)] == "GPU 1 is lost (not answering the driver)"
    assert events[("ecc", 0)] == "GPU 0: volatile uncorrected ECC errors 0 -> 1"
    assert alerts[("ecc", 0)] == "GPU 0: 1 uncorrected ECC error"
    node.backend.inject("clear", 1)
    back = [e.message for t in (4.0, 5.0) for e in feed(fleet, node, t) if e.kind == "gpu_back"]
    assert back == ["GPU 1 answers again"]
    assert ("gpu_lost", 1) not in {(a.kind, a.gpu) for a in fleet.nodes["gpu1"].alerts}


@pytest.mark.parametrize(
    ("count", "said"), [(1, "1 uncorrected ECC error"), (3, "3 uncorrected ECC errors")]
)
def test_an_ecc_count_agrees_with_its_noun(count: int, said: str) -> None:
    assert ecc_message(2, count) == f"GPU 2: {said}"
    assert ecc_rose_message(2, 1, count) == f"GPU 2: volatile uncorrected ECC errors 1 -> {count}"


# -- the ops state: one field of the node's one inventory frame --------------------------------


def _answer(key: str, series: dict[str, dict[str, str]], value: str = "1") -> dict[str, Any]:
    """A Prometheus answer to ``key`` with one series per host, its labels as given."""
    at = ANSWERS["scraped"]["data"]["result"][0]["value"][0]
    result = [{"metric": {"Hostname": h, **m}, "value": [at, value]} for h, m in series.items()]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _scraped_again(client: Recorded, by: float) -> None:
    """Every host scraped ``by`` seconds after the recording: each has news for a poll."""
    doc = json.loads(json.dumps(ANSWERS["scraped"]))
    for s in doc["data"]["result"]:
        s["value"][1] = repr(float(s["value"][1]) + by)
    client.changed["scraped"] = doc


def ops(view: NodeView) -> str | None:
    """The node's ops state as the table shows it (None: not known)."""
    return view.state.state if view.state is not None else None


async def test_prometheus_state_news_changes_the_frames_state_field_alone() -> None:
    """gpu02, drained in the recording, is resumed: the model's inventory frame is the same
    frame with the new state in it, the change told as the agent tells it (a state event),
    and the history stays. Then Prometheus says no state at all: the state is not known (it
    was the last one read, kept as if current, before the state became the frame's field)."""
    client = Recorded()
    nodes = parse_inventory('[[group]]\nname = "t"\npool = "t"\nnodes = "gpu02"\n', "t").nodes
    src = PromSource(nodes, "http://prom.example:9090", client=client, monotonic=lambda: 1000.0)
    await src.poll()
    await src.poll()  # the static and slow sets
    view = src.fleet.nodes["gpu02"]
    before, history = view.inventory, len(view.history)
    assert before is not None and ops(view) == "drained"

    _scraped_again(client, 15)
    client.changed["state"] = _answer("state", {"gpu02": {"state": "schedulable"}})
    await src.poll()
    assert ops(view) == "schedulable"
    assert view.inventory is not None and view.inventory.state == view.state
    assert (view.inventory.gpus, view.inventory.host) == (before.gpus, before.host)
    assert [e.message for e in view.events if e.kind == "state"] == ["schedulable"]
    assert len(view.history) >= history

    _scraped_again(client, 30)
    client.changed["state"] = _answer("state", {})
    await src.poll()
    assert view.state is None and view.inventory is not None
    assert (view.inventory.gpus, view.inventory.host) == (before.gpus, before.host)


async def test_a_state_read_with_a_new_inventory_is_told_too() -> None:
    """gpu02's agent is upgraded (a new inventory time, a new driver) and resumes the node: the
    poll that reads the new inventory tells the state change as well (it was taken in with
    the inventory, and not told, when the source compared inventories stripped of state)."""
    client = Recorded()
    nodes = parse_inventory('[[group]]\nname = "t"\npool = "t"\nnodes = "gpu02"\n', "t").nodes
    src = PromSource(nodes, "http://prom.example:9090", client=client, monotonic=lambda: 1000.0)
    client.changed["stamp"] = _answer("stamp", {"gpu02": {}}, "100.0")
    await src.poll()
    await src.poll()
    view = src.fleet.nodes["gpu02"]
    assert view.inventory is not None and view.inventory.driver_version == "580.159.04"
    assert ops(view) == "drained"

    _scraped_again(client, 15)
    client.changed["stamp"] = _answer("stamp", {"gpu02": {}}, "200.0")
    await src.poll()  # the news: the inventory time moved
    agent = json.loads(json.dumps(ANSWERS["agent"]))
    for s in agent["data"]["result"]:
        s["metric"]["driver_version"] = "590.1"
    client.changed["agent"] = agent
    client.changed["state"] = _answer("state", {"gpu02": {"state": "schedulable"}})
    _scraped_again(client, 30)
    await src.poll()  # the static set again, and the state
    assert view.inventory is not None and view.inventory.driver_version == "590.1"
    assert ops(view) == "schedulable"
    assert [e.message for e in view.events if e.kind == "state"] == ["schedulable"]
