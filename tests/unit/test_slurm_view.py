"""Reading a node's state out of ``sinfo --json``, on documents shaped as Slurm 22.05 gives
them (seen on the test cluster, tests/integration/slurm.py) and as later versions give
``state`` (a list of words)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.ops.commands import CommandFailed
from agents.schedulers.slurm import node_view


def doc(state: Any, flags: list[str], partitions: list[str] | None = None) -> dict[str, Any]:
    node = {
        "name": "node1", "hostname": "localhost", "state": state, "state_flags": flags,
        "reason": "r" if "DRAIN" in flags else "", "partitions": partitions or ["gpu"],
    }  # fmt: skip
    other = {**node, "name": "node2", "state": "idle", "state_flags": []}
    return {"errors": [], "nodes": [other, node]}


@pytest.mark.parametrize(
    ("state", "flags", "ours"),
    [
        ("idle", [], "schedulable"),
        ("allocated", [], "schedulable"),
        ("idle", ["NOT_RESPONDING"], "schedulable"),  # just resumed, slurmd re-registering
        ("allocated", ["DRAIN"], "draining"),
        ("mixed", ["DRAIN"], "draining"),
        ("idle", ["DRAIN"], "drained"),
        ("idle", ["DRAIN", "REBOOT_REQUESTED"], "drained"),
        ("mixed", ["DRAIN", "REBOOT_REQUESTED"], "draining"),
        ("down", ["DRAIN", "REBOOT_ISSUED"], "drained"),
        ("down", [], "drained"),
        (["IDLE", "DRAIN"], [], "drained"),  # 23.02 on: state is a list
        (["MIXED", "DRAIN"], [], "draining"),
    ],
)
def test_states(state: Any, flags: list[str], ours: str) -> None:
    assert node_view(doc(state, flags), "node1", ()).state == ours


def test_the_pool_is_the_first_managed_partition_and_the_reason_is_slurms() -> None:
    view = node_view(doc("idle", ["DRAIN"], ["debug", "gpu"]), "node1", ("gpu", "cpu"))
    assert (view.pool, view.reason) == ("gpu", "r")
    assert node_view(doc("idle", [], ["debug", "gpu"]), "node1", ()).pool == "debug"
    assert node_view(doc("idle", [], ["debug"]), "node1", ("gpu",)).pool is None


def test_a_node_slurm_does_not_list_is_named() -> None:
    with pytest.raises(CommandFailed, match="Slurm lists no node named node9"):
        node_view(doc("idle", []), "node9", ())
