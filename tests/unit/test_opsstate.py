"""The node's ops state owner: each transition saves before it announces, a failed save changes
nothing, a finished drain keeps its reason and drops its deadline, and a deadline passing is
reported once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.ops.state import StateNotSaved, StateOwner
from agents.ops.store import StateStore, StoreError
from agents.protocol import NodeState
from agents.schedulers.base import SchedView

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def owner(root: Path, clock: Clock | None = None) -> tuple[StateOwner, list[NodeState]]:
    ops = StateOwner(StateStore(root), node="n1", clock=clock or Clock())
    heard: list[NodeState] = []
    ops.listen(heard.append)
    return ops, heard


async def test_a_bare_drain_waits_for_work_then_finishes_as_the_same_drain(tmp_path: Path) -> None:
    clock = Clock()
    ops, heard = owner(tmp_path, clock)
    change = await ops.drain(view=None, reason="fans", who="olga", within=60.0, busy=True)
    assert change.before == NodeState()
    assert (change.after.state, change.after.deadline) == ("draining", NOW + 60.0)
    clock.now += 5
    done = await ops.work_gone()
    assert done.changed
    assert done.after == NodeState(
        state="drained", reason="fans", who="olga", since=NOW, deadline=None
    ), "the same drain: reason, who and since kept, the deadline gone"
    assert StateStore(tmp_path).load() == done.after
    assert [s.state for s in heard] == ["draining", "drained"]


async def test_a_drain_with_idle_gpus_is_drained_at_once_without_a_deadline(
    tmp_path: Path,
) -> None:
    ops, _ = owner(tmp_path)
    change = await ops.drain(view=None, reason="r", who="olga", within=60.0, busy=False)
    assert (change.after.state, change.after.deadline) == ("drained", None)


async def test_work_gone_changes_only_a_draining_node(tmp_path: Path) -> None:
    ops, heard = owner(tmp_path)
    assert not (await ops.work_gone()).changed
    await ops.drain(view=None, reason="r", who="olga", within=None, busy=True)
    await ops.resume(view=None, reason="", who="olga")
    after = await ops.work_gone()
    assert not after.changed, "a resume that came first stands"
    assert ops.state.state == "schedulable"
    assert [s.state for s in heard] == ["draining", "schedulable"]


async def test_a_resume_racing_the_drain_completion_is_never_overwritten(tmp_path: Path) -> None:
    """The sampling loop finishing a drain and an operator's resume, at once: whichever is
    saved last must not be the older one."""
    ops, _ = owner(tmp_path)
    await ops.drain(view=None, reason="r", who="olga", within=None, busy=True)
    resumed, finished = await asyncio.gather(
        ops.resume(view=None, reason="back", who="olga"), ops.work_gone()
    )
    assert resumed.after.state == "schedulable"
    assert not finished.changed, "it found the node resumed"
    assert ops.state.state == "schedulable"
    assert StateStore(tmp_path).load().state == "schedulable"


async def test_the_listener_hears_a_state_already_on_disk(tmp_path: Path) -> None:
    ops = StateOwner(StateStore(tmp_path), node="n1", clock=Clock())
    on_disk: list[NodeState] = []
    ops.listen(lambda state: on_disk.append(StateStore(tmp_path).load()))
    change = await ops.reassign("train")
    assert on_disk == [change.after]


async def test_a_failed_save_changes_nothing_and_announces_nothing(tmp_path: Path) -> None:
    class FullDisk(StateStore):
        def save(self, state: NodeState) -> None:
            raise StoreError(f"{self.path}: cannot write: No space left on device")

    ops = StateOwner(FullDisk(tmp_path), node="n1", clock=Clock())
    heard: list[NodeState] = []
    ops.listen(heard.append)
    with pytest.raises(StateNotSaved, match="No space left on device") as raised:
        await ops.drain(view=None, reason="r", who="olga", within=None, busy=False)
    assert raised.value.code == "state_failed"
    assert ops.state == NodeState() and heard == []


async def test_without_a_store_every_change_is_refused(tmp_path: Path) -> None:
    fixed = NodeState(state="draining", reason="r")
    ops = StateOwner(None, node="n1", state=fixed)
    with pytest.raises(StateNotSaved, match="n1 cannot change its state here") as raised:
        await ops.work_gone()
    assert raised.value.code == "not_supported"
    assert ops.state == fixed


async def test_a_drain_deadline_passing_is_reported_once(tmp_path: Path) -> None:
    clock = Clock()
    ops, _ = owner(tmp_path, clock)
    await ops.drain(view=None, reason="r", who="olga", within=30.0, busy=True)
    assert not ops.deadline_passed(), "not yet"
    clock.now += 30
    assert ops.deadline_passed()
    assert not ops.deadline_passed(), "said once"
    assert ops.state.state == "draining", "the node stays draining"


async def test_a_scheduler_drain_takes_its_view_and_sets_no_deadline(tmp_path: Path) -> None:
    ops, _ = owner(tmp_path)
    view = SchedView(state="draining", pool="train", reason=None)
    change = await ops.drain(view=view, reason="r", who="olga", within=30.0, busy=False)
    assert (change.after.state, change.after.pool, change.after.deadline) == (
        "draining",
        "train",
        None,
    )


async def test_following_the_scheduler_keeps_our_drain_and_names_an_admins(
    tmp_path: Path,
) -> None:
    clock = Clock()
    ops, _ = owner(tmp_path, clock)
    await ops.drain(
        view=SchedView("draining", "p", None), reason="ours", who="olga", within=None, busy=False
    )
    clock.now += 10
    same = await ops.follow(SchedView("drained", "p", None), "slurm")
    assert (same.after.state, same.after.who, same.after.reason) == ("drained", "olga", "ours")
    admin = await ops.follow(SchedView("schedulable", "p", None), "slurm")
    assert (admin.after.who, admin.after.since) == ("slurm", NOW + 10)
    assert not (await ops.follow(SchedView("schedulable", "p", None), "slurm")).changed


async def test_a_reboot_is_resumed_only_on_another_boot(tmp_path: Path) -> None:
    ops, _ = owner(tmp_path)
    await ops.drain(view=None, reason="r", who="olga", within=None, busy=False)
    assert not ops.boot_resume_due("boot-1"), "no reboot asked"
    await ops.restart_begin("boot-1")
    assert StateStore(tmp_path).load().resume_after_boot == "boot-1"
    assert not ops.boot_resume_due("boot-1"), "still the same boot"
    assert not ops.boot_resume_due(None), "no boot id to compare"
    assert ops.boot_resume_due("boot-2")
    back = await ops.resume(view=None, reason="back", who="gpufleet-agent")
    assert back.after.resume_after_boot is None
    assert not ops.boot_resume_due("boot-2")


async def test_a_scheduler_reboot_changes_the_state_only_when_its_view_differs(
    tmp_path: Path,
) -> None:
    ops, heard = owner(tmp_path)
    unchanged = await ops.reboot_asked(
        view=SchedView("schedulable", None, None), reason="r", who="o"
    )
    assert not unchanged.changed and heard == []
    draining = await ops.reboot_asked(view=SchedView("draining", None, None), reason="r", who="o")
    assert (draining.after.state, draining.after.reason, draining.after.who) == (
        "draining",
        "r",
        "o",
    )
