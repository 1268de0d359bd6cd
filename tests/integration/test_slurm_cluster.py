"""The test Slurm cluster itself: four nodes come up idle, a job runs where it is sent, and
stopping the cluster leaves nothing of it running."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.slurm import (
    NODES,
    SlurmCluster,
    alive,
    slurm_cluster_fixture,  # noqa: F401
    start_slurm,
    stray_pids,
)

pytestmark = pytest.mark.integration


def test_all_nodes_up_and_a_job_runs_on_node1(slurm_cluster: SlurmCluster) -> None:
    nodes = slurm_cluster.nodes_json()
    assert sorted(nodes) == list(NODES)
    for name, node in nodes.items():
        assert (node["state"], node["state_flags"]) == ("idle", []), name
    assert nodes["node1"]["partitions"] == ["gpu"]
    assert nodes["node4"]["partitions"] == ["cpu"]

    job = slurm_cluster.submit("node1")
    slurm_cluster.wait_running(job)
    out = slurm_cluster.check(["squeue", "-h", "-j", str(job), "-o", "%N %P %T"])
    assert out.split() == ["node1", "gpu", "RUNNING"]
    assert slurm_cluster.node_json("node1")["state"] == "allocated"

    slurm_cluster.cancel(job)
    slurm_cluster.wait_node("node1", "idle")


def test_a_reboot_runs_the_stand_in_and_the_node_comes_back(slurm_cluster: SlurmCluster) -> None:
    slurm_cluster.check(["scontrol", "reboot", "ASAP", "nextstate=RESUME", "reason=smoke", "node2"])
    node = slurm_cluster.finish_reboot("node2")
    assert (node["state"], node["state_flags"], node["reason"]) == ("idle", [], "")
    assert slurm_cluster.reboots() == ["node2"]


def test_stop_leaves_no_process_behind(short_tmp: Path) -> None:
    cluster = start_slurm(short_tmp / "slurm")
    try:
        job = cluster.submit("node4")
        cluster.wait_running(job)
        pids = [proc.pid for proc in cluster.procs.values()]
        # The job's slurmstepd and shell are no children of ours: stop() must find and end them.
        wait_for(lambda: len(stray_pids(cluster.root, set(pids))) >= 2, "the job's processes", 10)
    finally:
        cluster.stop()
    assert all(proc.poll() is not None for proc in cluster.procs.values())
    assert not any(alive(pid) for pid in pids)
    assert stray_pids(cluster.root, set()) == []
    assert cluster.reboots() == []
