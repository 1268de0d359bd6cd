"""What the agent keeps on disk: the node's ops state and the audit log.

Both outlive the process (restarts, reboots), and both are written so a crash at any instant
leaves either the old or the new content, never a torn one: the state by write-temp, fsync,
rename, fsync the directory; the audit log by appending whole lines and fsyncing before the
agent answers the request it records.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec

from agents.protocol import AuditEntry, GpufleetError, NodeState


class StoreError(GpufleetError):
    """The state directory cannot be read or written; the message names the file."""


def atomic_write(path: Path, data: bytes, mode: int = 0o640) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class StateStore:
    """The node's ops state in ``<state_dir>/state.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"

    def load(self) -> NodeState:
        """The saved state, or the default for a node never acted on.

        A file that exists but cannot be read is an error, not a fresh start: forgetting that a
        node was drained would put jobs back on a node an operator took out of service.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return NodeState()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            return msgspec.json.decode(data, type=NodeState)
        except msgspec.DecodeError as exc:
            raise StoreError(f"{self.path}: unreadable state ({exc}); fix or remove it") from None

    def save(self, state: NodeState) -> None:
        try:
            atomic_write(self.path, msgspec.json.encode(state) + b"\n")
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write: {exc.strerror}") from None


class AuditLog:
    """Append-only JSON lines in ``<state_dir>/audit.jsonl``, one entry per request acted on."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "audit.jsonl"
        self._encoder = msgspec.json.Encoder()
        self._lock = threading.Lock()  # appends come from worker threads

    def append(self, entry: AuditEntry) -> None:
        """Durable before it returns: the caller replies only after this."""
        line = self._encoder.encode(entry) + b"\n"
        with self._lock:
            self._append_line(line)

    def _append_line(self, line: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A torn line from a crash or a full disk: end it, so this entry is whole.
                    line = b"\n" + line
                # One write() of a whole line: O_APPEND keeps concurrent writers' lines whole.
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write (disk full?)")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot append: {exc.strerror}") from None

    def entries(self, since: float | None = None) -> Iterator[AuditEntry]:
        """Entries in order; a torn last line (power cut mid-write) is skipped, not fatal."""
        decoder = msgspec.json.Decoder(AuditEntry)
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                try:
                    entry = decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
                if since is None or entry.ts >= since:
                    yield entry
