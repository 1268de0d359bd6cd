"""drain, resume and reassign on a bare node (adapter "none"): checked, authorized from the
peer's role, idempotent, answered with the state before and after, persisted, announced and
audited. The store is the real one on a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.ops.store import StateStore
from agents.protocol import NodeState
from tests.fakes.opsnode import NOW, TRICKY, VIC, Node


async def test_drain_an_idle_node_is_drained_at_once(tmp_path: Path) -> None:
    node = Node(tmp_path)
    answer = await node.ask("drain", reason="HBM errors")
    assert answer.ok
    assert answer.result["message"] == "drained: GPUs idle"
    assert answer.result["before"]["state"] == "schedulable"
    assert answer.result["after"] == {
        "state": "drained", "pool": None, "reason": "HBM errors", "who": "olga", "since": NOW,
        "deadline": None, "resume_after_boot": None,
    }  # fmt: skip
    assert StateStore(tmp_path).load() == node.state, "persisted before the answer"
    assert [s.state for s in node.announced] == ["drained"]
    [entry] = node.audit.entries()
    assert (entry.op, entry.result, entry.who) == ("drain", "ok", "olga")
    assert entry.before is not None and entry.before.state == "schedulable"
    assert entry.after is not None and entry.after.state == "drained"


async def test_drain_a_busy_node_waits_with_a_deadline(tmp_path: Path) -> None:
    node = Node(tmp_path, busy=True)
    answer = await node.ask("drain", reason="r", timeout=600)
    assert answer.result["after"]["state"] == "draining"
    assert answer.result["after"]["deadline"] == NOW + 600


async def test_drain_is_idempotent_and_keeps_the_first_reason(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.ask("drain", reason="first")
    again = await node.ask("drain", reason="second")
    assert again.ok
    assert again.result["message"] == "already drained"
    assert again.result["before"] == again.result["after"]
    assert node.state.reason == "first"
    assert len(node.announced) == 1, "nothing changed, nothing announced"
    assert [e.message for e in node.audit.entries()] == ["drained: GPUs idle", "already drained"]


async def test_resume_and_resume_again(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.ask("drain", reason="r")
    back = await node.ask("resume", reason="fixed")
    assert back.result["after"]["state"] == "schedulable"
    assert (node.state.who, node.state.reason) == ("olga", "fixed")
    again = await node.ask("resume")
    assert again.result["message"] == "already schedulable"


async def test_reassign_moves_the_pool_and_keeps_the_ops_state(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.ask("drain", reason="moving")
    moved = await node.ask("reassign", pool="infer", reason="capacity")
    assert moved.result["message"] == "pool (not set on the node: the inventory's) -> infer"
    assert (node.state.pool, node.state.state, node.state.reason) == ("infer", "drained", "moving")
    again = await node.ask("reassign", pool="infer", reason="capacity")
    assert again.result["message"] == "already in pool infer"


@pytest.mark.parametrize(
    ("op", "args", "says"),
    [
        ("drain", {"reason": "  "}, "a reason is required"),
        ("drain", {}, "missing required field `reason`"),
        ("drain", {"reason": "r", "timeout": -5}, "timeout must be 0 to 604800 seconds"),
        ("drain", {"reason": "x" * 1025}, "reason longer than 1024 characters"),
        ("drain", {"reason": "red\x1b[31m"}, "reason holds a control or format character"),
        ("resume", {"reason": "nul\x00"}, "reason holds a control or format character"),
        ("drain", {"reason": "flip \u202e"}, "reason holds a control or format character"),
        ("reassign", {"pool": "no such pool!", "reason": "r"}, "pool must be 1 to 64"),
        ("reassign", {"pool": "infer"}, "missing required field `reason`"),
        ("resume", {"reason": "r", "force": True}, "unknown field `force`"),
        ("drain", {"reason": "r", "who": "root"}, "unknown field `who`"),  # no claiming
        ("drain", {"reason": "r", "role": "operator"}, "unknown field `role`"),
    ],
)
async def test_bad_arguments_are_refused_and_nothing_changes(
    tmp_path: Path, op: str, args: dict[str, Any], says: str
) -> None:
    node = Node(tmp_path)
    answer = await node.ask(op, **args)
    assert (answer.ok, answer.code) == (False, "bad_args")
    assert answer.error is not None and says in answer.error
    assert node.state == NodeState() and node.announced == []
    assert [e.result for e in node.audit.entries()] == ["refused"]


async def test_a_viewer_is_refused_and_the_refusal_is_audited(tmp_path: Path) -> None:
    node = Node(tmp_path)
    answer = await node.ask("drain", VIC, reason="r")
    assert (answer.ok, answer.code) == (False, "forbidden")
    assert node.state == NodeState()
    [entry] = node.audit.entries()
    assert (entry.who, entry.op, entry.result) == ("vic", "drain", "refused")


#: Persian with a zero-width non-joiner ("khub-ast"), an emoji joined by a zero-width joiner.
PERSIAN = "\u062e\u0648\u0628\u200c\u0627\u0633\u062a"
CODER = "\U0001f469\u200d\U0001f4bb"


@pytest.mark.parametrize("reason", [TRICKY, "tab\tnbsp\u00a0", PERSIAN, CODER])
async def test_reasons_are_kept_literally(tmp_path: Path, reason: str) -> None:
    node = Node(tmp_path)
    assert (await node.ask("drain", reason=reason)).ok
    assert StateStore(tmp_path).load().reason == reason
    [entry] = node.audit.entries()
    assert entry.args["reason"] == reason
