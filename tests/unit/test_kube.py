"""The Kubernetes adapter through the agent's requests: cordon, evict with a timeout, uncordon,
the pool as a node label.

kubectl here is a stand-in (tests/fakes/tools.py): no Kubernetes API can run on this machine.
It is a real executable holding one node object, so what these tests prove is the argv the
adapter runs, how it reads the node back, and what the operator is told; not Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.config import RestartSection
from agents.schedulers.kube import KubeScheduler
from tests.conftest import until
from tests.fakes.opsnode import TRICKY, Node
from tests.fakes.tools import calls, fake_kubectl, kube_node, recorder, refused


@pytest.fixture(autouse=True)
def kubectl_took_every_argv(tmp_path: Path) -> Iterator[None]:
    """Each test's kubectl stand-in (in tmp_path) refused nothing the adapter ran."""
    yield
    assert refused(tmp_path / "kubectl") == [], (
        "the adapter ran a kubectl argv the stand-in refuses"
    )


def kube_node_on(
    tmp_path: Path, kubectl: Path | None = None, **kw: object
) -> tuple[Node, Path, KubeScheduler]:
    """An agent's handler on a Kubernetes node (the stand-in's, made unless given), told of
    evictions' ends as the agent is: say it, then read the node again."""
    if kubectl is None:
        kubectl = fake_kubectl(tmp_path, "gpu-07", pool="train", **kw)  # type: ignore[arg-type]
    node: Node
    syncs: list[asyncio.Future[None]] = []

    def told(message: str) -> None:
        node.told.append(message)
        syncs.append(asyncio.ensure_future(node.handler.sync()))

    sched = KubeScheduler("gpu-07", kubectl=str(kubectl), timeout=5.0, told=told)
    node = Node(tmp_path, scheduler=sched)
    return node, kubectl, sched


async def settled(node: Node, state: str) -> None:
    await until(lambda: node.state.state == state, f"the node {state}", 10)


async def test_drain_cordons_then_evicts_and_is_drained_when_kubectl_returns(
    tmp_path: Path,
) -> None:
    node, kubectl, _ = kube_node_on(tmp_path, evict_seconds=0.3)
    answer = await node.ask("drain", reason=TRICKY, timeout=120)
    assert answer.ok, answer
    assert answer.result["after"]["state"] == "draining", "cordoned, pods not yet evicted"
    assert kube_node(kubectl)["spec"] == {"unschedulable": True}
    await settled(node, "drained")
    assert node.told == ["drained: pods evicted"]
    assert (node.state.reason, node.state.who) == (TRICKY, "olga"), "the same drain"
    assert ["cordon", "gpu-07"] in calls(kubectl)
    assert [
        "drain", "gpu-07", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"
    ] in calls(kubectl)  # fmt: skip


async def test_an_eviction_a_budget_blocks_leaves_the_node_cordoned_and_says_why(
    tmp_path: Path,
) -> None:
    node, _, _ = kube_node_on(tmp_path, pdb=True)
    await node.ask("drain", reason="r", timeout=30)
    await until(lambda: node.told, "the failure told", 10)
    [said] = node.told
    assert said.startswith("draining: pods not evicted, node stays cordoned: ")
    assert "violate the pod's disruption budget" in said
    await node.handler.sync()
    assert node.state.state == "draining", "a pod is still there: not drained"


async def test_resume_uncordons_and_reassign_sets_the_pool_label(tmp_path: Path) -> None:
    node, kubectl, _ = kube_node_on(tmp_path)
    await node.ask("drain", reason="r")
    await settled(node, "drained")
    back = await node.ask("resume", reason="ok")
    assert back.result["after"]["state"] == "schedulable"
    assert kube_node(kubectl)["spec"] == {"unschedulable": False}
    moved = await node.ask("reassign", pool="infer", reason="capacity")
    assert moved.result["message"] == "pool train -> infer"
    assert kube_node(kubectl)["metadata"] == {
        "name": "gpu-07", "labels": {"gpufleet.io/pool": "infer"}
    }  # fmt: skip
    assert ["label", "node", "gpu-07", "gpufleet.io/pool=infer", "--overwrite"] in calls(kubectl)


async def test_a_cordon_made_behind_our_back_is_followed(tmp_path: Path) -> None:
    node, kubectl, _ = kube_node_on(tmp_path)
    proc = await asyncio.create_subprocess_exec(str(kubectl), "cordon", "gpu-07")
    await proc.wait()
    await node.handler.sync()
    assert (node.state.state, node.state.who) == ("drained", "kubernetes")
    again = await node.ask("drain", reason="r")
    assert again.result["message"] == "already drained"


async def test_kubectls_error_reaches_the_operator_verbatim(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, "gpu-07")
    node = Node(tmp_path, scheduler=KubeScheduler("gpu-99", kubectl=str(kubectl)))
    answer = await node.ask("drain", reason="r")
    assert (answer.ok, answer.code) == (False, "command_failed")
    assert answer.error == 'kubectl: Error from server (NotFound): nodes "gpu-99" not found'
    [entry] = node.audit.entries()
    assert entry.result == "failed"


async def test_restart_node_is_drain_reboot_uncordon(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, "gpu-07")
    tools = tmp_path / "bin"
    tools.mkdir()
    restart = RestartSection(systemctl=str(recorder(tools, "systemctl")))

    def node_on(boot: str) -> tuple[Node, KubeScheduler]:
        sched = KubeScheduler("gpu-07", kubectl=str(kubectl), timeout=5.0)
        return Node(tmp_path, scheduler=sched, restart=restart, boot_id=lambda: boot), sched

    before, sched = node_on("boot-1")
    refused = await before.ask("restart", target="node", reason="kernel")
    assert refused.code == "not_drained", "never reboot a node with pods on it"
    await before.ask("drain", reason="kernel")
    await until(lambda: not sched.evicting, "the eviction", 10)
    await before.handler.sync()
    assert before.state.state == "drained"
    assert (await before.ask("restart", target="node", reason="kernel")).ok
    await until(lambda: calls(tools / "systemctl"), "the reboot", 5)
    assert calls(tools / "systemctl") == [["reboot"]]

    after, _ = node_on("boot-2")
    await after.handler.resume_after_reboot()
    assert kube_node(kubectl)["spec"] == {"unschedulable": False}, "uncordoned"
    assert (after.state.state, after.state.who) == ("schedulable", "gpufleet-agent")


async def test_a_drain_cut_short_by_a_restart_evicts_again(tmp_path: Path) -> None:
    first, kubectl, sched = kube_node_on(tmp_path, evict_seconds=30)
    await first.ask("drain", reason="r", timeout=60)
    await first.handler.sync()
    assert first.state.state == "draining", "still evicting"
    sched.close()  # the agent stops mid-eviction, its kubectl killed with it
    world = json.loads((tmp_path / "kube-node.json").read_text())
    (tmp_path / "kube-node.json").write_text(json.dumps({**world, "evict_seconds": 0}))

    again, _, sched = kube_node_on(tmp_path, kubectl)  # the agent, started again
    await sched.recover(again.state)
    await settled(again, "drained")
    assert again.told == ["drained: pods evicted"]
    assert len([c for c in calls(kubectl) if c[0] == "drain"]) == 2, "evicted again"


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "node", "gpu-07"],  # the JSON the adapter reads: not asked for
        ["get", "node", "gpu-07", "-o", "json"],  # not the spelling the adapter uses
        ["get", "nodes", "gpu-07", "--output=json"],
        ["cordon", "gpu-07", "--dry-run=client"],
        ["drain", "gpu-07", "--ignore-daemonsets", "--timeout=60s"],  # emptyDir data kept
        ["drain", "gpu-07", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
         "--force"],
        ["label", "node", "gpu-07", "gpufleet.io/pool=infer"],  # no --overwrite
        ["delete", "node", "gpu-07"],
        [],
    ],
)  # fmt: skip
def test_the_kubectl_stand_in_refuses_an_argv_the_adapter_does_not_run(
    tmp_path: Path, argv: list[str]
) -> None:
    """The stand-in takes exactly the adapter's commands: a flag dropped, added or spelt
    otherwise fails loudly, and changes nothing."""
    (tmp_path / "refusing").mkdir()  # not tmp_path: refusals there fail the test
    kubectl = fake_kubectl(tmp_path / "refusing", "gpu-07")
    before = kube_node(kubectl)
    done = subprocess.run([str(kubectl), *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "kubectl stand-in (tests/fakes/tools.py): refused argv" in done.stderr
    assert json.dumps(argv) in done.stderr
    assert refused(kubectl) == [argv]
    assert kube_node(kubectl) == before


def test_the_kubectl_stand_in_takes_the_adapters_argv(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, "gpu-07")
    for argv in (
        ["get", "node", "gpu-07", "--output=json"],
        ["cordon", "gpu-07"],
        ["drain", "gpu-07", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s"],
        ["uncordon", "gpu-07"],
        ["label", "node", "gpu-07", "gpufleet.io/pool=infer", "--overwrite"],
    ):
        done = subprocess.run([str(kubectl), *argv], capture_output=True, text=True, check=False)
        assert (done.returncode, done.stderr) == (0, ""), argv
    assert kube_node(kubectl)["metadata"] == {
        "name": "gpu-07", "labels": {"gpufleet.io/pool": "infer"}
    }  # fmt: skip
