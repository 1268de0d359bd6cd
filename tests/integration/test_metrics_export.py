"""Real agents (simulated GPUs) serving ``/metrics``, scraped by a real Prometheus server.

What Prometheus stores is checked through its own HTTP API: dcgm-exporter's names and labels,
values equal to the agent's own sample (the one the scrape served, found by its timestamp in
the agent's history), an XID and a lost GPU, and the pool and state labels following a drain
and a move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agents.protocol import GPU_LABELS, Inventory, Sample
from agents.serve.client import AgentClient
from tests.conftest import AgentProc, wait_for
from tests.integration.prometheus import PrometheusServer, prometheus_factory
from tests.integration.sshd import free_port

pytestmark = pytest.mark.integration
__all__ = ["prometheus_factory"]  # the fixture, used by name below

GPUS = 2
DCGM_SERVED = (
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
)  # fmt: skip


def start_agents(make: Callable[..., AgentProc], count: int) -> list[tuple[AgentProc, str]]:
    """``count`` agents on simulated GPUs with ``[metrics]`` on, and their scrape targets."""
    out = []
    for i in range(count):
        target = f"127.0.0.1:{free_port()}"
        config = f'[agent]\nnode_name = "node{i}"\n[metrics]\nlisten = "{target}"\n'
        agent = make("--backend", "sim", "--gpus", str(GPUS), "--seed", str(i),
                     config=config, name=f"a{i}")  # fmt: skip
        out.append((agent.start(), target))
    return out


def series(prom: PrometheusServer, promql: str, count: int) -> list[dict[str, Any]]:
    """Wait until the query returns exactly ``count`` series."""
    found = wait_for(  # a tuple, so that "no series" can be what we wait for
        lambda: (r,) if len(r := prom.query(promql)) == count else None, f"{count} x {promql}", 20
    )
    return found[0]


def uuids_of(prom: PrometheusServer, node: str) -> dict[str, str]:
    """GPU index -> UUID, as the node's XID series (one per GPU, lost or not) label them."""
    found = series(prom, f'gpufleet_node_gpus{{Hostname="{node}"}}', 1)
    gpus = int(float(found[0]["value"][1]))
    xids = series(prom, f'DCGM_FI_DEV_XID_ERRORS{{Hostname="{node}"}}', gpus)
    return {s["metric"]["gpu"]: s["metric"]["UUID"] for s in xids}


def agent_sample(agent: AgentProc, ts: float) -> tuple[Inventory, Sample]:
    """The agent's own sample stamped ``ts``, from the history it replays to a client."""
    with AgentClient(agent.socket, history=True) as client:
        inv = None
        for frame in client.frames():
            if isinstance(frame, Inventory):
                inv = frame
            elif isinstance(frame, Sample):
                assert frame.ts <= ts or not frame.replay, "the scraped sample is not in history"
                if frame.ts == ts:
                    assert inv is not None
                    return inv, frame
    raise AssertionError("agent closed before the scraped sample came")


def test_prometheus_stores_dcgm_names_labels_and_the_agents_values(
    agent_factory: Callable[..., AgentProc],
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    agents = start_agents(agent_factory, 3)
    prom = prometheus_factory([target for _, target in agents])
    prom.wait_up(3)
    for name in DCGM_SERVED:
        got = series(prom, name, 3 * GPUS)
        for s in got:
            labels = set(s["metric"]) - {"__name__", "instance", "job"}
            assert labels == set(GPU_LABELS) - {"pool"}, (name, s["metric"])  # no pool: empty
            assert s["metric"]["state"] == "schedulable"
            assert s["metric"]["device"] == f"nvidia{s['metric']['gpu']}"
            assert s["metric"]["modelName"] == "NVIDIA H100 80GB HBM3"
    assert {s["metric"]["Hostname"] for s in series(prom, "DCGM_FI_DEV_GPU_UTIL", 6)} == {
        "node0", "node1", "node2"
    }  # fmt: skip

    # Values: those of the very sample the scrape served, found in the agent's own history.
    agent = agents[1][0]
    wanted = (
        "DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_FB_USED|DCGM_FI_DEV_FB_TOTAL|"
        "DCGM_FI_DEV_GPU_TEMP|DCGM_FI_DEV_SM_CLOCK|gpufleet_sample_timestamp_seconds"
    )
    got = series(prom, f'{{__name__=~"{wanted}",Hostname="node1"}}', 6 * GPUS + 1)
    by = {(s["metric"]["__name__"], s["metric"].get("gpu")): float(s["value"][1]) for s in got}
    inv, sample = agent_sample(agent, by[("gpufleet_sample_timestamp_seconds", None)])
    uuids = {s["metric"]["gpu"]: s["metric"]["UUID"] for s in got if "gpu" in s["metric"]}
    for r in sample.gpus:
        g = str(r.index)
        assert uuids[g] == inv.gpus[r.index].uuid
        assert r.power_mw is not None and r.mem_used is not None and r.mem_total is not None
        assert by[("DCGM_FI_DEV_GPU_UTIL", g)] == r.util_gpu
        assert by[("DCGM_FI_DEV_POWER_USAGE", g)] == pytest.approx(r.power_mw / 1000)  # W
        assert by[("DCGM_FI_DEV_FB_USED", g)] == pytest.approx(r.mem_used / 2**20)  # MiB
        assert by[("DCGM_FI_DEV_FB_TOTAL", g)] == pytest.approx(r.mem_total / 2**20)
        assert by[("DCGM_FI_DEV_GPU_TEMP", g)] == r.temp_c
        assert by[("DCGM_FI_DEV_SM_CLOCK", g)] == r.sm_clock_mhz

    # An XID 79 (the simulator's GPU 1 falls off the bus with it) and GPU 0 lost: no readings,
    # but the XID stays served, and a GPU that comes back reads again.
    with AgentClient(agents[2][0].socket, history=False, stream=False) as client:
        assert client.request("sim_inject", fault="xid79", gpu=1).ok
        assert client.request("sim_inject", fault="lost", gpu=0).ok
        series(prom, 'gpufleet_gpu_lost{Hostname="node2"} == 1', 2)
        series(prom, 'DCGM_FI_DEV_GPU_UTIL{Hostname="node2"}', 0)  # no reading: no series
        xid = series(prom, 'DCGM_FI_DEV_XID_ERRORS{Hostname="node2",gpu="1"} == 79', 1)
        assert xid[0]["metric"]["UUID"] == uuids_of(prom, "node2")["1"]
        series(prom, 'gpufleet_gpu_last_xid_timestamp_seconds{Hostname="node2"}', 1)
        assert client.request("sim_inject", fault="clear", gpu=0).ok
        series(prom, 'DCGM_FI_DEV_GPU_UTIL{Hostname="node2",gpu="0"}', 1)
        series(prom, 'gpufleet_gpu_lost{Hostname="node2",gpu="0"} == 0', 1)
    series(prom, "gpufleet_sample_fresh == 1", 3)
    info = series(prom, 'gpufleet_agent_info{Hostname="node0"}', 1)[0]["metric"]
    assert info["backend"] == "sim" and info["protocol"]
    assert info["restart_targets"] == "gpu0,gpu1", "a simulated node offers its GPU resets"
    series(prom, "gpufleet_inventory_timestamp_seconds", 3)


def test_pool_and_state_labels_follow_a_drain_and_a_move(
    agent_factory: Callable[..., AgentProc],
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    agents = start_agents(agent_factory, 2)
    prom = prometheus_factory([target for _, target in agents])
    prom.wait_up(2)
    series(prom, 'DCGM_FI_DEV_GPU_UTIL{state="schedulable"}', 2 * GPUS)
    with AgentClient(agents[0][0].socket, history=False, stream=False) as client:
        assert client.request("reassign", pool="inference", reason="capacity move").ok
        assert client.request("drain", reason="fans replaced", timeout=0).ok
    drained = series(prom, 'DCGM_FI_DEV_GPU_UTIL{Hostname="node0",state="drained"}', GPUS)
    assert {s["metric"]["pool"] for s in drained} == {"inference"}
    # The old series end (Prometheus marks them stale), rather than lingering beside the new.
    series(prom, 'DCGM_FI_DEV_GPU_UTIL{Hostname="node0",state="schedulable"}', 0)
    state = series(prom, 'gpufleet_node_state_info{Hostname="node0"}', 1)[0]["metric"]
    assert (state["state"], state["pool"], state["reason"]) == (
        "drained", "inference", "fans replaced"
    )  # fmt: skip
    assert state["who"]  # the test's own user, from the socket's peer credentials
    # The node beside it is untouched.
    series(prom, 'DCGM_FI_DEV_GPU_UTIL{Hostname="node1",state="schedulable",pool=""}', GPUS)
