"""The agent's state directory failing under it: a full disk, a read-only remount. A real
agent process, its state directory on a small tmpfs this test mounts (root only). An action
must be refused with the reason, nothing half-written, and the audit log still readable."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.ops.store import AuditLog, StateStore
from agents.protocol import NodeState
from agents.serve.client import AgentClient
from tests.conftest import AgentProc, skip_or_fail

pytestmark = pytest.mark.integration

ONE_GPU = ("--backend", "sim", "--gpus", "1", "--interval", "0.2")


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``where``, unmounted afterwards."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a small tmpfs needs root")
    where.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write until the disk is full; the file can be removed to make room again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)

    def write_on() -> None:
        while True:
            os.write(fd, b"\0" * 4096)

    try:
        with pytest.raises(OSError, match="No space left on device"):
            write_on()
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_the_action_and_loses_nothing(
    agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    with small_disk(short_tmp / "disk") as disk:
        agent = agent_factory(*ONE_GPU, "--state-dir", str(disk / "state")).start()
        state_dir = disk / "state"
        with AgentClient(agent.socket, stream=False) as actor:
            assert actor.request("reassign", pool="train", reason="before").ok
            filler = fill(disk)
            answer = actor.request("drain", reason="while full")
            assert (answer.ok, answer.code) == (False, "state_failed")
            assert answer.error is not None
            assert "No space left on device" in answer.error
            # The refusal's audit line may still fit in the log's last block; if not, it says so.
            audited = "could not be audited" not in answer.error
            refusals = [e for e in AuditLog(state_dir).entries() if e.result == "refused"]
            assert len(refusals) == (1 if audited else 0)
            assert actor.request("state").result == {
                "state": "schedulable", "pool": "train", "reason": None, "who": None,
                "since": None, "deadline": None, "resume_after_boot": None,
            }, "nothing changed"  # fmt: skip
            assert StateStore(state_dir).load() == NodeState(pool="train")
            assert not [p for p in state_dir.iterdir() if p.name.endswith(".tmp")], "no debris"

            filler.unlink()  # room again: the agent carries on as if nothing happened
            again = actor.request("drain", reason="room again")
            assert again.ok, again
        entries = list(AuditLog(state_dir).entries())
        assert [(e.op, e.result) for e in entries][-1] == ("drain", "ok"), "still readable"
        assert entries[0].args["reason"] == "before"


def test_a_read_only_state_directory_refuses_with_the_reason(
    agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    with small_disk(short_tmp / "disk") as disk:
        agent = agent_factory(*ONE_GPU, "--state-dir", str(disk / "state")).start()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with AgentClient(agent.socket, stream=False) as actor:
            answer = actor.request("drain", reason="ro")
            assert (answer.ok, answer.code) == (False, "state_failed")
            assert answer.error is not None and "Read-only file system" in answer.error
            assert actor.request("ping").ok, "the agent keeps serving"
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert StateStore(disk / "state").load() == NodeState()
