"""The status document (a public contract for scripts) and the exit codes."""

from __future__ import annotations

import json
from typing import get_args

from agents.protocol import NodeState
from console.fleet import FleetState, LinkState
from console.inventory import parse_inventory
from console.status import (
    EXIT_ALL,
    EXIT_NONE,
    EXIT_SOME_MISSING,
    check_result,
    exit_code,
    status_doc,
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
