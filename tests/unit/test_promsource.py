"""The Prometheus source without a server: query answers into the model's frames, and the
source's rules (inventory decides, vanished series, a faulty server) on the real model.

``tests/fixtures/prometheus/answers.json`` was recorded from the real server: Debian's
Prometheus 2.42 scraping three real agents (simulated GPUs, ``--seed 3``, ``[metrics]`` on)
every second, gpu02 drained ("HBM errors", ``--timeout 0``), gpu01's GPU 1 given an XID 79
(which loses it) and its GPU 0 overheated, and "stranger", which no inventory here names; every
query of ``console.sources.prometheus.view.QUERIES`` asked at one evaluation time. The same path
runs against the live server in tests/integration/test_promsource.py.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agents.protocol import MIB
from console.model.fleet import NodeView
from console.model.inventory import parse_inventory
from console.present import words
from console.present.rows import summarize
from console.sources.prometheus import source as promsource
from console.sources.prometheus.client import (
    QUERY_TIMEOUT_S,
    PromClient,
    PromError,
    Vector,
    decode_vector,
)
from console.sources.prometheus.source import FIRST_QUERY_TIMEOUT_S, NameIndex, PromSource
from console.sources.prometheus.view import HEAD_KEYS, QUERIES, nodes_from, nodes_of
from console.sources.spec import SSH, SourceError, SourceSpec, parse_source
from tests.conftest import until
from tests.fakes.prometheus import ANSWERS, Recorded

URL = "http://prom.example:9090"
#: gpu03: not in Prometheus.
INVENTORY = '[[group]]\nname = "train"\npool = "train"\nnodes = "gpu[01-03]"\n'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vectors() -> dict[str, Vector]:
    return {k: decode_vector(json.dumps(v).encode(), k) for k, v in ANSWERS.items()}


def source(client: Recorded, clock: Clock) -> PromSource:
    nodes = parse_inventory(INVENTORY, "test").nodes
    return PromSource(nodes, URL, client=client, monotonic=clock)


def link_of(src: PromSource, node: str) -> str:
    return src.fleet.nodes[node].link


def test_sources_parse_and_bad_ones_are_named() -> None:
    assert parse_source("ssh") == SSH
    assert parse_source("prometheus=http://10.0.0.5:9090/") == SourceSpec(
        "prometheus", "http://10.0.0.5:9090"
    )
    assert parse_source("prometheus=https://prom.site/sub").url == "https://prom.site/sub"
    for bad, said in [
        ("", "expected ssh or prometheus=http://HOST:PORT"),
        ("ssh=x", "expected ssh or prometheus"),
        ("prometheus", "prometheus needs a URL"),
        ("prometheus=", "prometheus needs a URL"),
        ("prometheus=10.0.0.5:9090", "expected ssh or prometheus=http://HOST:PORT"),
        ("prometheus=http://h:port", "bad port in the URL"),
        ("prometheus=http://h:9090/?q=1", "expected ssh"),
    ]:
        with pytest.raises(SourceError, match="--source") as caught:
            parse_source(bad)
        assert said in str(caught.value)


def test_recorded_answers_become_the_frames_an_agent_would_send() -> None:
    nodes = nodes_from(vectors())
    assert set(nodes) == {"gpu01", "gpu02", "stranger"}
    one, two = nodes["gpu01"], nodes["gpu02"]
    assert one.agent == ("gpufleet-agent 0.1.0", "1.4")
    assert one.interval == 0.5
    inv = one.inventory
    assert (inv.backend, inv.driver_version, inv.scheduler) == ("sim", "580.159.04", "none")
    assert [g.uuid for g in inv.gpus] == [
        "GPU-b879e1a0-3642-8ad3-af43-82b4df9659f0",
        "GPU-6b90cc82-097d-007c-4e5c-a7b2d02d93fc",
    ]
    gpu0 = inv.gpus[0]
    assert (gpu0.name, gpu0.pci_bus_id) == ("NVIDIA H100 80GB HBM3", "00000000:18:00.0")
    assert (gpu0.memory_total, gpu0.power_limit_mw, gpu0.temp_slowdown_c) == (
        81559 * MIB, 700_000, 89,
    )  # fmt: skip
    assert one.sample is not None
    hot, lost = one.sample.gpus
    assert lost.lost and lost.util_gpu is None, "a lost GPU reads nothing, never 0"
    assert hot.temp_c == 92
    assert {"hw_thermal_slowdown", "sw_thermal_slowdown"} <= set(hot.clock_reasons or ())
    assert hot.power_mw is not None and hot.power_mw % 1 == 0 and hot.power_mw > 100_000
    assert hot.mem_used is not None and hot.mem_used % MIB == 0
    assert (hot.ecc_uncorrected_volatile, hot.remap_pending) == (0, False), "0 where known"
    [xid] = one.xids
    assert (xid.kind, xid.gpu, xid.xid, xid.replay) == ("xid", 1, 79, True)
    assert two.inventory.state is not None
    state = two.inventory.state
    assert (state.state, state.reason, state.who) == ("drained", "HBM errors", "root")
    assert state.since is not None
    assert one.sample.host.mem_total > 0 and one.sample.host.load is not None


async def test_the_model_fed_from_prometheus() -> None:
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    fleet = src.fleet
    one, two, three = (fleet.nodes[n] for n in ("gpu01", "gpu02", "gpu03"))
    assert (one.link, two.link) == ("live", "live")
    assert three.link == "no_data"
    assert three.link_reason.startswith("not in Prometheus: no gpufleet series with Hostname=gpu03")
    assert src.unknown == {"stranger"}, "not in the inventory: ignored, and counted"
    kinds = {a.kind for a in one.alerts}
    assert {"xid", "gpu_lost", "temperature", "slowdown"} <= kinds
    assert two.state is not None and two.state.state == "drained"
    # The age: since Prometheus scraped it, plus the sample's age then.
    at = ANSWERS["sample_ts"]["data"]["result"][0]["value"][0]
    scraped = {s["metric"]["Hostname"]: s["value"][1] for s in ANSWERS["scraped"]["data"]["result"]}
    ts = {s["metric"]["Hostname"]: s["value"][1] for s in ANSWERS["sample_ts"]["data"]["result"]}
    expect = at - float(ts["gpu01"])
    assert float(scraped["gpu01"]) >= float(ts["gpu01"])
    assert one.age(clock.now) == pytest.approx(expect, abs=1e-6)
    status = src.status(clock.now)
    assert status.fault is None
    assert status.line() == (
        f"source: prometheus {URL} (1 host not in the inventory, ignored) · "
        f"data {words.age(max(one.age(clock.now) or 0, two.age(clock.now) or 0))} old · "
        "polled 0s ago"
    )

    # The same answer again: nothing new to apply (no second sample, no second XID).
    events = len(one.events)
    await src.poll()
    assert len(one.history) == 1 and len(one.events) == events
    assert one.link == "live"


async def test_a_node_whose_series_leave_goes_stale_then_no_data() -> None:
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    client.gone = {"gpu01"}
    clock.now += 1
    await src.poll()
    view = src.fleet.nodes["gpu01"]
    assert link_of(src, "gpu01") == "stale", "a restart's scrape or two missing does not page"
    clock.now += 3 * view.interval + 1
    src.fleet.tick(clock.now)
    assert link_of(src, "gpu01") == "no_data"
    assert "its series left Prometheus" in view.link_reason
    client.gone = set()
    await src.poll()  # the same old sample again: still nothing new from it
    assert link_of(src, "gpu01") == "no_data"


async def test_prometheus_failing_is_a_fault_of_the_source_shown_and_not_fatal() -> None:
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    client.fault = f"cannot reach {URL}: connection refused"
    clock.now += 2
    await src.poll()
    status = src.status(clock.now)
    assert status.fault == client.fault
    assert f"FAULT: cannot reach {URL}: connection refused" in status.line()
    assert "polled 2s ago" in status.line()
    view = src.fleet.nodes["gpu02"]
    assert link_of(src, "gpu02") == "stale"
    clock.now += 3 * view.interval + 1
    src.fleet.tick(clock.now)
    assert link_of(src, "gpu02") == "unreachable"
    assert view.link_reason == f"Prometheus: cannot reach {URL}: connection refused"
    client.fault = None
    await src.poll()
    assert src.status(clock.now).fault is None


def test_an_unreachable_server_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(PromError) as caught:
            PromClient(f"http://127.0.0.1:{port}", timeout=5).query("up")
    assert str(caught.value) == f"cannot reach http://127.0.0.1:{port}: connection refused"


def test_hostnames_match_inventory_names_with_or_without_the_domain() -> None:
    nodes = parse_inventory(
        '[[group]]\nname = "g"\nnodes = "gpu01.dc1,gpu02,gpu03.dc1,gpu03.dc2"\n', "t"
    ).nodes
    names = NameIndex(nodes)
    assert names.get("gpu01.dc1") == "gpu01.dc1"
    assert names.get("gpu01") == "gpu01.dc1"
    assert names.get("gpu02.dc1") == "gpu02"
    assert names.get("gpu03") is None, "two inventory nodes share the short name: no guess"
    assert names.get("gpu04") is None


def test_the_whole_fleet_is_read_with_one_query_per_metric(tmp_path: Path) -> None:
    assert len(QUERIES) == len({q.key for q in QUERIES})
    assert all("Hostname" in q.expr for q in QUERIES), "joined by node, never one per node"


def gpu0(view: NodeView) -> tuple[str | None, int | None, int | None]:
    """GPU 0's UUID and power limit (static set) and SM clock (slow set) as the model has it."""
    info = view.inventory.gpus[0] if view.inventory else None
    reading = view.sample.gpus[0] if view.sample else None
    return (
        info.uuid if info else None,
        info.power_limit_mw if info else None,
        reading.sm_clock_mhz if reading else None,
    )


def _changed(key: str, values: dict[str, float]) -> dict[str, Any]:
    """The recorded answer to ``key`` with some hosts' values changed (or, for a query the
    recorded agents did not export, those hosts' series made from the scrape times')."""
    doc: dict[str, Any] = json.loads(json.dumps(ANSWERS.get(key) or ANSWERS["scraped"]))
    for s in doc["data"]["result"]:
        host = s["metric"]["Hostname"]
        s["metric"] = {"Hostname": host}
        if host in values:
            s["value"][1] = repr(values[host])
    doc["data"]["result"] = [s for s in doc["data"]["result"] if s["metric"]["Hostname"] in values]
    return doc


async def test_the_first_poll_shows_every_node_before_the_static_and_slow_sets() -> None:
    """Issue 7: the screen shows each node from its fast readings (and the memory size and
    slowdown limit they are shown against); identities, limits, clocks and the slow readings
    come with the next poll, into the same rows, without a second sample in the history."""
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    first = {q.key for q in QUERIES if q.first}
    assert set(client.keys) == first
    assert {q.cadence for q in QUERIES if q.key in first} == {"fast", "static"}
    assert {q.key for q in QUERIES if q.first and q.cadence == "static"} == {
        "DCGM_FI_DEV_FB_TOTAL", "gpufleet_gpu_temperature_slowdown_celsius"
    }  # fmt: skip
    one = src.fleet.nodes["gpu01"]
    assert (one.link, src.fleet.nodes["gpu02"].link) == ("live", "live")
    row = summarize(one, clock.now)
    assert row.mem_total is not None and row.temp is not None and row.power_w is not None
    assert {"xid", "gpu_lost", "temperature", "slowdown"} <= {a.kind for a in one.alerts}
    assert gpu0(one) == (None, None, None), "identities, limits, clocks: not read yet"

    client.keys.clear()
    clock.now += 5
    await src.poll()
    assert {q.cadence for q in QUERIES if q.key in client.keys} == {"fast", "static", "slow"}
    uuid, power_limit, sm_clock = gpu0(one)
    assert (uuid, power_limit) == ("GPU-b879e1a0-3642-8ad3-af43-82b4df9659f0", 700_000)
    assert sm_clock is not None
    assert len(one.history) == 1, "the same sample, completed: not a second one"
    assert one.link == "live"

    client.keys.clear()
    await src.poll()  # nothing scraped since: the head queries alone
    assert set(client.keys) == HEAD_KEYS


async def test_static_facts_are_read_again_only_where_the_inventory_time_moved() -> None:
    client, clock = Recorded(), Clock()
    scraped = {
        s["metric"]["Hostname"]: float(s["value"][1]) for s in ANSWERS["scraped"]["data"]["result"]
    }
    client.changed["stamp"] = _changed("stamp", {"gpu01": 100.0, "gpu02": 100.0})
    src = source(client, clock)
    await src.poll()
    await src.poll()
    static = {q.key for q in QUERIES if q.cadence == "static"}
    # gpu01 scraped again, its agent restarted (a new inventory time); gpu02 scraped again.
    client.changed["scraped"] = _changed(
        "scraped", {h: scraped[h] + 15 for h in ("gpu01", "gpu02", "stranger")}
    )
    client.changed["stamp"] = _changed("stamp", {"gpu01": 200.0, "gpu02": 100.0})
    client.asked_for.clear()
    await src.poll()  # the news: fast readings (the inventory time among them)
    asked = {k: hosts for k, hosts in client.asked_for}
    assert not static & asked.keys()
    assert asked["stamp"] is None, "most nodes have news: the whole fleet, one query"
    client.asked_for.clear()
    await src.poll()  # the static set again, for gpu01 alone
    asked = {k: hosts for k, hosts in client.asked_for}
    assert static <= asked.keys()
    assert {asked[k] for k in static} == {"gpu01"}
    client.asked_for.clear()
    await src.poll()
    assert not static & {k for k, _ in client.asked_for}


async def test_a_large_catch_up_is_spread_and_a_failed_one_leaves_the_fast_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The static and slow sets of a large fleet are read a share of the nodes per poll, and
    when they cannot be read the poll still shows the fast readings; they stay due."""
    monkeypatch.setattr(promsource, "CATCH_UP_NODES", 1)
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    assert src.behind == 3
    static = {q.expr for q in QUERIES if q.cadence == "static"}
    client.failing = static
    client.asked_for.clear()
    clock.now += 5
    await src.poll()
    assert src.fault is None and src.fleet.nodes["gpu01"].link == "live"
    assert src.behind == 3, "the slow set of one node read, its static set not"
    client.failing = set()
    hosts = []
    for _ in range(3):
        client.asked_for.clear()
        await src.poll()
        hosts.append({h for k, h in client.asked_for if k == "ids"})
    assert [len(h) for h in hosts] == [1, 1, 1] and len(set.union(*hosts)) == 3
    assert src.behind == 0
    assert gpu0(src.fleet.nodes["gpu01"])[0] is not None


async def test_the_first_poll_waits_longer_and_a_busy_prometheus_earns_patience() -> None:
    """Issue 7: at 5,000 nodes the first whole-fleet answers took longer than a steady
    poll's timeout, and a busy Prometheus ran every later poll past it: no view at all. The
    first read gets the long timeout; a poll that got no answer in time doubles the next."""
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    assert set(client.timeouts) == {FIRST_QUERY_TIMEOUT_S}
    await src.poll()  # the static and slow sets' first reads: long too
    client.timeouts.clear()
    await src.poll()
    assert set(client.timeouts) == {QUERY_TIMEOUT_S}, "steady: a steady poll's timeout"
    client.failing = {q.expr for q in QUERIES if q.key == "scraped"}
    await src.poll()
    assert src.fault is not None and "no answer in" in src.fault
    client.failing = set()
    client.timeouts.clear()
    await src.poll()
    assert src.status(clock.now).fault is None  # (read anew: mypy narrowed src.fault above)
    assert min(t or 0 for t in client.timeouts) == 2 * QUERY_TIMEOUT_S


class SlowHeads(Recorded):
    """The head queries but ``scraped`` answer after a while; ``scraped`` times out at once."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = {q.expr for q in QUERIES if q.key == "scraped"}
        self.ended: list[str] = []

    def query(self, expr: str, at: float | None = None, timeout: float | None = None) -> Vector:
        if expr not in self.failing and self.keys:  # not the first: it has to answer first
            time.sleep(0.3)
        try:
            return super().query(expr, at, timeout)
        finally:
            self.ended.append(expr)


async def test_a_failed_poll_ends_only_when_its_queries_have() -> None:
    """A poll whose head query timed out raised while its other queries were still running:
    they overlapped the next poll's on a Prometheus too busy to answer, held the threads it
    needed, and were seen (CI, 3.13) asking with a timeout the next poll had changed."""
    client, clock = SlowHeads(), Clock()
    src = source(client, clock)
    await src.poll()
    assert src.fault is not None and "no answer in" in src.fault
    heads = [q for q in QUERIES if q.key in HEAD_KEYS]
    assert len(client.ended) == len(heads), "every query of the poll had ended"


async def test_polls_that_run_long_stretch_the_period_and_the_stale_window() -> None:
    """At 5,000 nodes on a busy Prometheus polls took 9 to 16 s against the 5 s interval and
    ran back to back, each finding every node scraped anew. A poll that takes more than half
    the interval is now followed by a wait as long as it took; the nodes' stale window follows
    the period, so a slow source does not call live nodes stale, and the line says why."""
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    assert src._next_wait(1.0) == pytest.approx(4.0), "a quick poll: every poll_s"
    assert "polling every" not in src.status(clock.now).line()
    assert src._next_wait(12.0) == pytest.approx(12.0), "busy at most half the time"
    assert src.period == pytest.approx(24.0)
    assert "(polling every 24.0 s: a poll takes 12.0 s)" in src.status(clock.now).line()
    clock.now += 24
    await src.poll()
    view = src.fleet.nodes["gpu01"]
    assert view.interval == pytest.approx(24.0)
    assert view.sample_at is not None
    src.fleet.tick(view.sample_at + 3 * 15 + 5)  # past a 15 s scrape interval's window
    assert link_of(src, "gpu01") == "live", "a node is not stale for the source's own pace"
    src.fleet.tick(view.sample_at + 3 * 24 + 1)
    assert link_of(src, "gpu01") == "stale"
    src.fault = "no answer in 20 s"
    assert src._next_wait(30.0) == 0.0, "a poll that got no answer: the next try at once"
    assert src.period == pytest.approx(24.0), "and it sets no pace"
    src.fault = None
    assert src._next_wait(1.0) == pytest.approx(4.0), "quick again: back to poll_s"
    assert src.period == src.poll_s


async def test_a_fault_of_our_own_in_a_poll_is_the_sources_with_its_traceback_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a poll (here the answers' conversion raising KeyError): the source's fault
    says it is ours and where the log is, the traceback is logged once, the nodes age into
    ``fault`` (not ``unreachable``: nothing is known to be wrong with them), and the next
    poll that works clears it."""
    client, clock = Recorded(), Clock()
    src = source(client, clock)
    await src.poll()
    assert link_of(src, "gpu02") == "live"

    def conversion_with_a_bug(*args: object) -> object:
        raise KeyError("Hostname")

    monkeypatch.setattr(promsource, "nodes_of", conversion_with_a_bug)
    caplog.set_level(logging.DEBUG, "gpufleet.console.sources.prometheus.source")
    for _ in range(2):
        clock.now += 2
        await src.poll()
    fault = src.status(clock.now).fault
    assert fault is not None and fault.startswith(
        "internal error: KeyError: 'Hostname', see the log"
    )
    assert f"FAULT: {fault}" in src.status(clock.now).line()
    traced = [r for r in caplog.records if r.exc_info is not None]
    assert len(traced) == 1, "the traceback once, not once a poll"
    assert traced[0].levelno == logging.ERROR
    assert traced[0].getMessage().startswith(f"source=prometheus {fault}")
    assert "in conversion_with_a_bug" in caplog.text and "KeyError: 'Hostname'" in caplog.text
    assert link_of(src, "gpu02") == "stale", "recent data ages as over any failed poll"
    view = src.fleet.nodes["gpu02"]
    clock.now += 3 * view.interval + 1
    src.fleet.tick(clock.now)
    assert (view.link, view.link_reason) == ("fault", f"the Prometheus source: {fault}")
    assert {a.kind for a in view.alerts} == {"fault"}

    monkeypatch.undo()
    clock.now += 2
    await src.poll()
    assert src.status(clock.now).fault is None
    assert "answering again" in caplog.text


async def test_the_poller_goes_on_after_a_fault_of_our_own() -> None:
    """The poll loop itself: a poll that meets a bug does not end it; the next poll comes
    on time and, the bug gone, answers."""
    calls = 0
    real = nodes_of

    def fails_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("unsupported operand type(s) for -: 'float' and 'NoneType'")
        return real(*args)

    nodes = parse_inventory(INVENTORY, "test").nodes
    src = PromSource(nodes, URL, client=Recorded(), poll_s=0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(promsource, "nodes_of", fails_once)
        src.start()
        try:
            await until(lambda: src.fault is not None, "the first poll's fault")
            assert src.fault is not None and src.fault.startswith("internal error: TypeError")
            await until(lambda: src.polls >= 1 and src.fault is None, "a poll after it")
        finally:
            await src.stop()
    assert link_of(src, "gpu01") == "live"
