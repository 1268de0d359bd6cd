"""Selectors: hostlists, globs and filters, with unknown nodes refused by name."""

from __future__ import annotations

import re

import pytest

from agents.protocol import HostInfo, Inventory, NodeState
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.model.selector import SelectorError, parse_selector, select

FLEET = """
[[group]]
name = "train"
nodes = "gpu[01-04]"
[[group]]
name = "infer"
nodes = "inf[1-2]"
"""


@pytest.fixture
def fleet() -> FleetState:
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    drained = NodeState(state="drained", reason="r")
    for name in ("gpu02", "inf1"):
        fleet.nodes[name].inventory = Inventory(
            node=name, backend="none", host=_host(), gpus=[], state=drained
        )
    fleet.set_link("gpu03", "unreachable", "connection refused", 1.0)
    return fleet


def _host() -> HostInfo:
    return HostInfo(hostname="h", kernel="k", cpu_count=1, memory_total=1, boot_id=None)


def names(fleet: FleetState, text: str) -> list[str]:
    return [v.name for v in select(fleet.nodes.values(), parse_selector(text))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["gpu01", "gpu02", "gpu03", "gpu04", "inf1", "inf2"]),
        ("gpu[01-02,04]", ["gpu01", "gpu02", "gpu04"]),
        ("inf*", ["inf1", "inf2"]),
        ("gpu0? inf2", ["gpu01", "gpu02", "gpu03", "gpu04", "inf2"]),
        ("pool=infer", ["inf1", "inf2"]),
        ("state=drained", ["gpu02", "inf1"]),
        ("state=drained pool=train", ["gpu02"]),
        ("pool=train,infer state=drained", ["gpu02", "inf1"]),
        ("link=unreachable", ["gpu03"]),
        ("alert", ["gpu03"]),
        ("gpu[01-02] state=drained", ["gpu02"]),
        ("state=schedulable", []),  # no inventory yet: state unknown, not schedulable
        ("state=unknown pool=infer", ["inf2"]),
    ],
)
def test_selectors(fleet: FleetState, text: str, expected: list[str]) -> None:
    assert names(fleet, text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu[01-06]", "not in the inventory: gpu[05-06]"),
        ("gpu[01-", "bad host list 'gpu[01-': unbalanced brackets"),
        ("rack=7", "unknown filter 'rack' in 'rack=7' (known: pool=, state=, link=, alert)"),
        ("pool=", "'pool=': pool= needs a value"),
    ],
)
def test_bad_selectors_name_the_term(fleet: FleetState, text: str, message: str) -> None:
    with pytest.raises(SelectorError) as err:
        select(fleet.nodes.values(), parse_selector(text))
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state=bogus", "unknown state 'bogus' in 'state=bogus' (known: schedulable, draining, "
         "drained, unknown)"),
        ("state=drained,drianed", "unknown state 'drianed'"),
        ("link=up", "unknown link 'up' in 'link=up' (known: connecting, live, stale,"),
    ],
)  # fmt: skip
def test_a_state_or_link_that_cannot_exist_is_an_error(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=re.escape(message)):
        parse_selector(text)


def test_an_unknown_pool_is_an_error_naming_the_known(fleet: FleetState) -> None:
    with pytest.raises(SelectorError, match=re.escape("unknown pool 'nope' (known: infer, train)")):
        names(fleet, "pool=nope")


def test_a_pool_only_an_agent_has_is_known(fleet: FleetState) -> None:
    view = fleet.nodes["gpu04"]
    view.inventory = Inventory(
        node="gpu04", backend="none", host=_host(), gpus=[], state=NodeState(pool="spare")
    )
    names(fleet, "pool=spare")  # no error: matching it is the pool-of-record's business
    assert parse_selector("pool=spare").before_contact().filters == {}, (
        "judged after contact, when the agents have said"
    )
