"""One summary of a node: the screen's row, the status table and ``status --json`` are all
made from ``summarize``, so they say the same numbers and the same absences."""

from __future__ import annotations

import pytest

from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.present.rows import summarize
from console.present.status import node_doc, table
from tests.fakes.simnode import Node, feed

FLEET = '[[group]]\nname = "train"\nnodes = "gpu1"\n'


def _fleet(link: str) -> FleetState:
    """gpu1 with four GPUs (one lost) that answered at 1.0, then ``link`` at 13.0."""
    fleet = FleetState(parse_inventory(FLEET, "f").nodes)
    n = Node("gpu1", gpus=4)
    fleet.apply("gpu1", n.inventory(), 0.0)
    n.backend.inject("busy", 0)
    n.backend.inject("lost", 3)
    feed(fleet, n, 1.0)
    if link == "live":
        feed(fleet, n, 13.0)
    elif link == "stale":
        fleet.tick(13.0)
    else:
        fleet.set_link("gpu1", "unreachable", "connection refused", 1.5)
        fleet.tick(60.0)
    assert fleet.nodes["gpu1"].link == link
    return fleet


@pytest.mark.parametrize("link", ["live", "stale", "unreachable"])
def test_the_row_the_table_and_the_json_agree(link: str) -> None:
    view = _fleet(link).nodes["gpu1"]
    now = 60.0 if link == "unreachable" else 13.0
    s = summarize(view, now)
    doc = node_doc(view, now)
    gpus = doc["gpus"] if link == "live" else (doc["last_seen"] or {}).get("gpus", [])
    if link == "unreachable":
        assert (s.readings, gpus, doc["host"], doc["last_seen"]) == ("none", [], None, None)
        assert (s.util, s.util_max, s.temp, s.power_w) == (None, None, None, None)
        assert s.gpus == 4, "the inventory's count stays: it is not a reading"
    else:
        assert s.readings == ("current" if link == "live" else "old")
        answered = [g for g in gpus if not g["lost"]]
        assert len(gpus) == 4 and len(answered) == 3, "the lost GPU is listed, not summed"
        assert s.util == pytest.approx(sum(g["util"] for g in answered) / 3)
        assert s.util_max == max(g["util"] for g in answered)
        assert s.temp == max(g["temp"] for g in answered)
        assert s.power_w == pytest.approx(sum(g["power"] for g in answered))
        assert s.mem_used == sum(g["mem_used"] for g in answered)
    header, line = table([view], now).splitlines()
    util = line[header.index("UTIL") : header.index("HOT")].strip()
    assert util == ("n/a" if s.util is None else f"{s.util:.0f}%")
    assert doc["link"] == s.link and doc["age_s"] == s.carried.age_s


def test_a_row_changes_with_what_it_shows_not_with_the_sample_behind_it() -> None:
    """The screen redraws a row when it differs from the last one drawn: two samples that
    show the same numbers are the same row."""
    fleet = _fleet("live")
    view = fleet.nodes["gpu1"]
    first = summarize(view, 13.0)
    assert first.carried.sample is not None
    fleet.apply("gpu1", first.carried.sample, 14.0)  # the same readings again, a new arrival
    again = summarize(view, 14.0)
    assert again == first and hash(again) == hash(first)
    fleet.set_link("gpu1", "unreachable", "connection refused", 14.5)
    fleet.tick(80.0)
    assert summarize(view, 80.0) != first
