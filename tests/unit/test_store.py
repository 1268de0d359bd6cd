"""What outlives the agent: the ops state (atomic, never silently reset) and the audit log."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agents.ops.store import AuditLog, StateStore, StoreError, atomic_write
from agents.protocol import AuditEntry, NodeState

DRAINED = NodeState(state="drained", pool="train", reason="xid 79", who="alice", since=1234.5)


def entry(ts: float, op: str = "sim_inject", **kw: Any) -> AuditEntry:
    base: dict[str, Any] = {
        "ts": ts,
        "who": "alice",
        "uid": 1000,
        "op": op,
        "args": {"fault": "lost", "gpu": 1},
        "result": "ok",
    }
    base.update(kw)
    return AuditEntry(**base)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def enospc(*args: Any, **kwargs: Any) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------------------------------
# StateStore


def test_missing_file_gives_default_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path).load() == NodeState()
    assert StateStore(tmp_path).load().state == "schedulable"


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DRAINED)
    assert store.load() == DRAINED
    assert StateStore(tmp_path).load() == DRAINED  # a new process reads the same
    store.save(NodeState(state="draining"))
    assert store.load() == NodeState(state="draining")


def test_save_leaves_no_temp_files_and_sets_mode(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DRAINED)
    store.save(DRAINED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert store.path.stat().st_mode & 0o777 == 0o640
    assert store.path.read_bytes().endswith(b"\n")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json",
        b'{"state": "melted"}',
        b'{"state": 5}',
        b"[]",
        b"\xff\xfe",
        b'{"state": "drained", "since": "yesterday"}',
    ],
)
def test_corrupt_file_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    store = StateStore(tmp_path)
    store.path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        store.load()
    assert str(store.path) in str(info.value)
    # Not silently reset: the bad file is still there for a person to look at.
    assert store.path.read_bytes() == content


def test_unreadable_state_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.mkdir()  # state.json is a directory: reading it fails with EISDIR
    with pytest.raises(StoreError) as info:
        store.load()
    assert str(store.path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_failed_replace_keeps_old_content_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save(DRAINED)
    before = store.path.read_bytes()

    calls: list[tuple[Any, Any]] = []

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append((src, dst))
        assert Path(src).exists()  # the temp file was fully written first
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StoreError) as info:
        store.save(NodeState(state="schedulable"))
    monkeypatch.undo()

    assert calls, "os.replace was never reached"
    assert str(store.path) in str(info.value)
    assert store.path.read_bytes() == before
    assert store.load() == DRAINED
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    store.save(DRAINED)
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(StoreError, match="No space left"):
        store.save(NodeState())
    monkeypatch.undo()
    assert store.load() == DRAINED
    assert leftovers(tmp_path) == []


def test_atomic_write_interrupted_by_base_exception_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def interrupted(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_save_under_a_non_directory_names_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    store = StateStore(not_a_dir / "state")
    with pytest.raises(StoreError) as info:
        store.save(DRAINED)
    assert str(store.path) in str(info.value)
    assert "cannot write" in str(info.value)


def test_save_with_missing_parent_names_the_path(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "missing" / "dir")
    with pytest.raises(StoreError) as info:
        store.save(DRAINED)
    assert str(store.path) in str(info.value)


def test_save_on_a_full_disk_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    monkeypatch.setattr(os, "open", enospc)
    with pytest.raises(StoreError) as info:
        store.save(DRAINED)
    monkeypatch.undo()
    assert str(store.path) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# AuditLog


def test_audit_append_and_read_back_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    written = [
        entry(1.0),
        entry(2.0, result="refused", message="viewer", request_id=7),
        entry(3.0, op="drain", before=NodeState(), after=DRAINED),
    ]
    for e in written:
        log.append(e)
    assert list(log.entries()) == written
    assert list(AuditLog(tmp_path).entries()) == written
    lines = log.path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    assert all(line.endswith(b"\n") for line in lines)
    assert log.path.stat().st_mode & 0o777 == 0o640


def test_audit_entries_of_missing_log_is_empty(tmp_path: Path) -> None:
    assert list(AuditLog(tmp_path).entries()) == []
    assert list(AuditLog(tmp_path / "nowhere").entries()) == []


def test_audit_since_filter_is_inclusive(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    for ts in (1.0, 2.0, 3.0, 4.0):
        log.append(entry(ts))
    assert [e.ts for e in log.entries(since=2.5)] == [3.0, 4.0]
    assert [e.ts for e in log.entries(since=3.0)] == [3.0, 4.0]
    assert [e.ts for e in log.entries(since=10.0)] == []
    assert [e.ts for e in log.entries(since=None)] == [1.0, 2.0, 3.0, 4.0]


def test_torn_last_line_is_skipped_and_earlier_entries_read(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(entry(1.0))
    log.append(entry(2.0))
    whole = msgspec.json.encode(entry(3.0))
    with log.path.open("ab") as f:
        f.write(whole[: len(whole) // 2])  # power cut mid-write: no newline
    assert [e.ts for e in log.entries()] == [1.0, 2.0]


def test_zero_filled_tail_is_skipped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(entry(1.0))
    with log.path.open("ab") as f:
        f.write(b"\0" * 64)
    assert [e.ts for e in log.entries()] == [1.0]


def test_entry_appended_after_a_torn_line_is_read(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(entry(1.0))
    with log.path.open("ab") as f:
        f.write(b'{"ts": 2.0, "who": "al')  # torn by a power cut
    log.append(entry(3.0))  # the agent restarts and acts again
    assert [e.ts for e in log.entries()] == [1.0, 3.0]


def test_audit_append_to_missing_dir_names_the_path(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "missing")
    with pytest.raises(StoreError) as info:
        log.append(entry(1.0))
    assert str(log.path) in str(info.value)
    assert "cannot append" in str(info.value)


def test_audit_append_under_a_non_directory_names_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    log = AuditLog(not_a_dir)
    with pytest.raises(StoreError) as info:
        log.append(entry(1.0))
    assert str(log.path) in str(info.value)


def test_audit_append_on_a_full_disk_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path)
    log.append(entry(1.0))
    monkeypatch.setattr(os, "open", enospc)
    with pytest.raises(StoreError) as info:
        log.append(entry(2.0))
    monkeypatch.undo()
    assert str(log.path) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert [e.ts for e in log.entries()] == [1.0]


def test_audit_failed_fsync_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path)
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(StoreError, match=str(log.path)):
        log.append(entry(1.0))
