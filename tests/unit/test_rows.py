"""The fleet table's rows and totals, computed from the headless model."""

from __future__ import annotations

import pytest

from agents.protocol import NodeState
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.model.selector import SelectorError
from console.present.rows import (
    COLUMN,
    SORTABLE,
    Column,
    NodeSummary,
    RowCache,
    RowFilter,
    filter_note,
    fleet_totals,
    parse_filter,
    summarize,
)
from tests.fakes.simnode import Node, feed

FLEET = (
    '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[1-3]"\n'
    '[[group]]\nname = "infer"\npool = "infer"\nnodes = "inf1"\n'
)


def visible_rows(
    fleet: FleetState, now: float, row_filter: RowFilter | None, column: Column, reverse: bool
) -> list[NodeSummary]:
    cache = RowCache(fleet)
    cache.update(now)
    return cache.visible(row_filter, column, reverse)


@pytest.fixture
def fleet() -> FleetState:
    f = FleetState(parse_inventory(FLEET, "f").nodes)
    for i, name in enumerate(["gpu1", "gpu2", "gpu3", "inf1"]):
        n = Node(name, gpus=2)
        state = None
        if name == "gpu3":
            state = NodeState(state="drained", reason="bad HBM", who="alice", since=0.0)
        f.apply(name, n.inventory(state), 0.0)
        if i < 3:
            if name == "gpu2":
                n.backend.inject("busy", 0)
            feed(f, n, 10.0)
    f.set_link("inf1", "unreachable", "connection refused", 10.0)
    return f


def test_a_live_row_sums_its_gpus(fleet: FleetState) -> None:
    view = fleet.nodes["gpu1"]
    row = summarize(view, 10.5)
    assert view.sample is not None
    gpus = view.sample.gpus
    assert (row.link_text, row.gpus, row.live_data) == ("live", 2, True)
    assert row.util_max == max(g.util_gpu or 0 for g in gpus)
    assert row.temp == max(g.temp_c or 0 for g in gpus)
    assert row.power_w == pytest.approx(sum(g.power_mw or 0 for g in gpus) / 1000)
    assert row.mem_total == sum(g.mem_total or 0 for g in gpus)


def test_drained_row_carries_reason_and_who_at_when(fleet: FleetState) -> None:
    row = summarize(fleet.nodes["gpu3"], 10.5)
    assert row.state == "drained"
    assert row.state_detail == "bad HBM (alice@1970-01-01 00:00)"


def test_a_down_node_shows_its_reason_and_no_numbers(fleet: FleetState) -> None:
    row = summarize(fleet.nodes["inf1"], 10.5)
    assert row.link_text == "unreachable: connection refused"
    assert (row.util, row.temp, row.power_w, row.live_data) == (None, None, None, False)
    assert row.critical


def test_stale_shows_its_age(fleet: FleetState) -> None:
    fleet.tick(20.0)
    assert summarize(fleet.nodes["gpu1"], 20.0).link_text == "stale 10s"


def test_totals(fleet: FleetState) -> None:
    t = fleet_totals(visible_rows(fleet, 10.5, None, "name", reverse=False))
    assert (t.nodes, t.live, t.down, t.drained, t.gpus) == (4, 3, 1, 1, 8)
    assert t.gpus_busy + t.gpus_idle == 6, "the unreachable node's GPUs are neither"
    assert t.gpus_busy >= 1, "gpu2 was made busy"
    assert t.line().startswith("4 nodes: 3 live, 1 down, 1 drained; 8 GPUs: ")


def test_totals_count_draining_apart_from_drained(fleet: FleetState) -> None:
    """A draining node still runs work: counting it as drained overstates what is out."""
    state = NodeState(state="draining", reason="fans", who="bob", since=0.0)
    fleet.apply("gpu1", Node("gpu1", gpus=2).inventory(state), 10.0)
    t = fleet_totals(visible_rows(fleet, 10.5, None, "name", reverse=False))
    assert (t.draining, t.drained) == (1, 1)
    assert "1 draining, 1 drained" in t.line()


def test_sort_by_any_column_unknowns_last_either_way(fleet: FleetState) -> None:
    up = [r.name for r in visible_rows(fleet, 10.5, None, "util_max", reverse=False)]
    down = [r.name for r in visible_rows(fleet, 10.5, None, "util_max", reverse=True)]
    assert up[-1] == down[-1] == "inf1", "no value sorts last"
    assert up[:3] == list(reversed(down[:3]))
    names = [r.name for r in visible_rows(fleet, 10.5, None, "name", reverse=False)]
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pool=train", ["gpu1", "gpu2", "gpu3"]),
        ("state=drained", ["gpu3"]),
        ("link=unreachable", ["inf1"]),
        ("alert", ["inf1"]),
        ("gpu[1-2]", ["gpu1", "gpu2"]),
        ("hbm", ["gpu3"]),  # words match name, pool or reason
        ("inf", ["inf1"]),
        ("gpu9*", []),
        ("", ["gpu1", "gpu2", "gpu3", "inf1"]),
    ],
)
def test_filter(fleet: FleetState, text: str, expected: list[str]) -> None:
    rows = visible_rows(fleet, 10.5, parse_filter(text), "name", reverse=False)
    assert [r.name for r in rows] == expected


def test_a_bad_filter_term_is_an_error_naming_it() -> None:
    with pytest.raises(SelectorError, match="unknown filter 'colour'"):
        parse_filter("colour=red")


def test_totals_add_up_when_a_gpu_is_lost(fleet: FleetState) -> None:
    n = Node("gpu1", gpus=2)
    fleet.apply("gpu1", n.inventory(), 10.0)
    n.backend.inject("lost", 1)
    feed(fleet, n, 10.2)
    t = fleet_totals(visible_rows(fleet, 10.5, None, "name", reverse=False))
    assert (t.gpus, t.gpus_lost, t.gpus_unknown) == (8, 1, 2), "inf1 is down: its 2 unknown"
    assert t.gpus_busy + t.gpus_idle + t.gpus_lost + t.gpus_unknown == t.gpus
    assert f"8 GPUs: {t.gpus_busy} busy, {t.gpus_idle} idle, 1 lost, 2 n/a" in t.line()


def test_a_node_never_heard_of_has_gpus_unknown_not_0() -> None:
    f = FleetState(parse_inventory(FLEET, "f").nodes)
    f.set_link("inf1", "unreachable", "connection refused", 1.0)
    row = summarize(f.nodes["inf1"], 1.0)
    assert (row.gpus, row.util, row.power_w) == (None, None, None)


def test_the_filter_line_says_when_nothing_matches(fleet: FleetState) -> None:
    assert filter_note(2, "pool=train") == "showing 2 (pool=train)"
    assert filter_note(0, "state=draining") == "no node matches (state=draining)"
    with pytest.raises(SelectorError, match="unknown pool 'nope'"):
        parse_filter("pool=nope", fleet.nodes.values())
    with pytest.raises(SelectorError, match="unknown state 'bogus'"):
        parse_filter("state=bogus")


@pytest.mark.parametrize("column", SORTABLE)
def test_every_sortable_column_sorts_by_its_declared_value(fleet: FleetState, column: str) -> None:
    """The sort takes each column's value from its one declaration (``COLUMNS``): known values
    in order either way, unknown ones last either way."""
    sort = COLUMN[column].sort
    assert sort is not None
    for reverse in (False, True):
        rows = visible_rows(fleet, 10.5, None, column, reverse)
        values = [sort(r) for r in rows]
        known = [v for v in values if v is not None]
        assert values == known + [None] * (len(values) - len(known)), "unknown last"
        assert known == sorted(known, reverse=reverse)  # type: ignore[type-var]


def test_a_column_declared_without_a_sort_is_not_sorted_by(fleet: FleetState) -> None:
    assert "reason" in COLUMN and "reason" not in SORTABLE
    with pytest.raises(KeyError, match="reason"):
        visible_rows(fleet, 10.5, None, "reason", reverse=False)
