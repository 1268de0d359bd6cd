"""The status document (a public contract for scripts) and the exit codes."""

from __future__ import annotations

import json
from typing import get_args

import msgspec

from agents.protocol import NodeState, Sample
from console.model.fleet import FleetState, LinkState
from console.model.inventory import parse_inventory
from console.present.rows import COLUMN, summarize
from console.present.status import (
    EXIT_ALL,
    EXIT_NONE,
    EXIT_SOME_MISSING,
    check_result,
    exit_code,
    status_doc,
    table,
)
from tests.fakes.simnode import Node, feed

FLEET = '[[group]]\nname = "train"\nnodes = "gpu[1-2]"\n'


def test_status_document_has_the_contract_fields() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    drained = NodeState(state="drained", reason="bad HBM", who="alice", since=3.0)
    fleet.apply("gpu1", n.inventory(drained), 0.0)
    feed(fleet, n, 1.0)
    n.backend.inject("lost", 1)
    feed(fleet, n, 2.0)
    fleet.set_link("gpu2", "unreachable", "connection refused", 2.0)

    doc = json.loads(json.dumps(status_doc(fleet.nodes.values(), now=2.5)))  # JSON-able
    one, two = doc
    assert {
        "name",
        "pool",
        "link",
        "link_reason",
        "state",
        "reason",
        "alerts",
        "gpus",
        "host",
    } <= set(one)
    assert (one["name"], one["pool"], one["link"], one["state"], one["reason"]) == (
        "gpu1", "train", "live", "drained", "bad HBM",
    )  # fmt: skip
    assert one["age_s"] == 0.5
    g0, g1 = one["gpus"]
    assert set(g0) >= {
        "index",
        "uuid",
        "name",
        "util",
        "mem_used",
        "mem_total",
        "temp",
        "power",
        "lost",
    }
    assert g0["name"] == "NVIDIA H100 80GB HBM3"
    assert g0["uuid"].startswith("GPU-")
    assert 50 < g0["power"] < 800, "watts"
    assert g1["lost"] is True
    assert g1["temp"] is None, "a lost GPU's readings are null, not 0"
    assert [a["kind"] for a in one["alerts"]] == ["gpu_lost"]
    assert one["host"]["memory"]["total"] == 1
    assert (two["link"], two["link_reason"], two["gpus"], two["host"]) == (
        "unreachable", "connection refused", [], None,
    )  # fmt: skip
    assert two["state"] is None
    assert [a["severity"] for a in two["alerts"]] == ["critical"]


def test_exit_codes() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    views = list(fleet.nodes.values())
    assert exit_code(views) == EXIT_NONE
    n = Node("gpu1")
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    assert exit_code(views) == EXIT_SOME_MISSING
    m = Node("gpu2")
    fleet.apply("gpu2", m.inventory(), 0.0)
    feed(fleet, m, 1.0)
    assert exit_code(views) == EXIT_ALL
    assert exit_code([]) == EXIT_ALL


def _cells(text: str) -> list[dict[str, str]]:
    """The table's rows by header: each column starts where its header does."""
    header, *rows = text.splitlines()
    names = ["NODE", "POOL", "LINK", "STATE", "GPUS", "UTIL", "HOT", "POWER W", "REASON", "ALERTS"]
    starts = [header.index(n) for n in names]
    ends = [*starts[1:], None]
    return [
        {n: row[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)} for row in rows
    ]


def _without_power(sample: Sample) -> Sample:
    """As NVML gives it for a GPU whose power reading is not supported."""
    gpus = [msgspec.structs.replace(g, power_mw=None) for g in sample.gpus]
    return msgspec.structs.replace(sample, gpus=gpus)


def test_power_not_supported_is_na_not_0() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    sample, _ = n.tick()
    fleet.apply("gpu1", _without_power(sample), 1.0)
    [row] = _cells(table([fleet.nodes["gpu1"]], 1.5))
    assert (row["LINK"], row["GPUS"], row["POWER W"]) == ("live", "2", "n/a")
    assert row["UTIL"] != "n/a"
    [doc] = status_doc([fleet.nodes["gpu1"]], 1.5)
    assert [g["power"] for g in doc["gpus"]] == [None, None]


def test_the_table_says_why_a_node_is_out_and_who_took_it_out() -> None:
    """`status state=draining,drained` is asked to learn why: the reason and who@when (as the
    screen's REASON), on one line whatever the reason holds (a newline is kept literally, as
    ``\\n``), and "-" for a node in service."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    out = NodeState(state="draining", reason="PSU swap\nsee [log]", who="alice", since=0.0)
    fleet.apply("gpu1", n.inventory(out), 0.0)
    feed(fleet, n, 1.0)
    m = Node("gpu2", gpus=2)
    fleet.apply("gpu2", m.inventory(), 0.0)
    feed(fleet, m, 1.0)
    text = table(fleet.nodes.values(), 1.5)
    assert len(text.splitlines()) == 3, "a row per node"
    one, two = _cells(text)
    assert one["REASON"] == "PSU swap\\nsee [log] (alice@1970-01-01 00:00)"
    assert (two["STATE"], two["REASON"]) == ("schedulable", "-")


def test_a_node_never_tried_is_no_unreachable_alert() -> None:
    """A node the snapshot's wait never reached is not known to be down: no critical
    "unreachable" alert for a script to page on, and its reason said once."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    why = "1 of 2 nodes got no turn for a handshake in 5 s (32 at a time); widen"
    fleet.set_link("gpu2", "not_tried", why, 5.0)
    [doc] = status_doc([fleet.nodes["gpu2"]], 5.0)
    assert doc["link"] == "not_tried"
    assert doc["alerts"] == [
        {"kind": "not_tried", "severity": "warning", "gpu": None, "message": why}
    ]
    [row] = _cells(table([fleet.nodes["gpu2"]], 5.0))
    assert row["ALERTS"] == why


def test_a_down_node_shows_no_reading_as_current() -> None:
    """Its last readings were 97 % and 70 C: beside "unreachable" they would read as now."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    fleet.set_link("gpu1", "unreachable", "connection refused", 1.5)  # stale first
    fleet.tick(60.0)  # past the stale window: down
    view = fleet.nodes["gpu1"]
    assert view.link == "unreachable" and view.sample is not None
    [row] = _cells(table([view], 60.0))
    assert (row["LINK"], row["UTIL"], row["HOT"], row["POWER W"]) == (
        "unreachable", "n/a", "n/a", "n/a",
    )  # fmt: skip
    assert "connection refused" in row["ALERTS"]
    [doc] = status_doc([view], 60.0)
    assert (doc["gpus"], doc["host"], doc["last_seen"]) == ([], None, None)


def test_a_stale_node_readings_are_marked_old() -> None:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    fleet.tick(13.0)
    view = fleet.nodes["gpu1"]
    assert view.link == "stale"
    [doc] = status_doc([view], 13.0)
    assert (doc["gpus"], doc["host"]) == ([], None), "not current"
    assert doc["last_seen"]["age_s"] == 12.0
    assert len(doc["last_seen"]["gpus"]) == 2
    assert doc["last_seen"]["host"] is not None
    [row] = _cells(table([view], 13.0))
    assert row["LINK"] == "stale 12s", "its numbers are shown with their age"


def test_a_node_never_reached_has_gpus_na_and_a_replay_is_not_current() -> None:
    """A snapshot that ends on a node which sent its inventory and buffered samples but no
    live one: the buffered sample is history, not its present."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    sample, _ = n.tick()
    fleet.apply("gpu1", msgspec.structs.replace(sample, replay=True), 0.5)
    for name in ("gpu1", "gpu2"):
        fleet.set_link(name, "unreachable", "no answer in 15 s", 15.0)
    one, two = _cells(table(fleet.nodes.values(), 15.0))
    assert (one["GPUS"], one["UTIL"], one["HOT"], one["POWER W"]) == ("2", "n/a", "n/a", "n/a")
    assert (two["GPUS"], two["UTIL"], two["POWER W"]) == ("n/a", "n/a", "n/a"), "never 0"
    doc = status_doc(fleet.nodes.values(), 15.0)
    assert [d["gpus"] for d in doc] == [[], []]


def test_every_failed_check_has_a_next_step() -> None:
    """`inventory check` gives a next step for each way a node can fail it: every link state
    but a live answer, each with its own words."""
    steps = {}
    for state in get_args(LinkState):
        fleet = FleetState(parse_inventory(FLEET, "f").nodes)
        fleet.set_link("gpu1", state, "why", 1.0)
        result = check_result(fleet.nodes["gpu1"])
        assert result["ok"] is False
        assert result["next"], f"no next step for {state}"
        steps[state] = result["next"]
    assert len(set(steps.values())) == len(steps), "one step repeated for two states"


def test_the_table_takes_its_columns_from_the_screens_declaration() -> None:
    """Headers and the words of the columns both show are the screen's own (``COLUMNS``):
    only the link, the reason and the alerts are said the command's way."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 0.0)
    feed(fleet, n, 1.0)
    view = fleet.nodes["gpu1"]
    assert table([view], 1.5).startswith(COLUMN["name"].header)
    summary = summarize(view, 1.5)
    [row] = _cells(table([view], 1.5))
    for key, label in (("gpus", "GPUS"), ("util", "UTIL"), ("temp", "HOT"), ("power", "POWER W")):
        assert COLUMN[key].header == label
        assert row[label] == COLUMN[key].text(summary)
