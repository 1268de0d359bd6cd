"""Who runs a GPU process: NVML gives only a pid, operators need a user and a command.

On the captured H100 (design.md §2) a workload running in another PID namespace was not
listed by NVML at all: the process list was empty while the GPU was at 100 %. So an empty list
does not mean idle, and there is no pid to translate. A pid NVML does list but that we cannot
see in ``/proc`` (it exited between NVML's list and our look-up, or ``hidepid`` hides it) gives
``(None, None)``, no user and no command, rather than a guess. Reading a process's cmdline and
owner costs several ``/proc`` reads, so answers are cached under ``(pid, create_time)``: an
unchanged process costs one ``/proc/<pid>/stat`` read per tick, and a recycled pid (new create
time) is looked up afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import psutil

#: Longest command kept: enough to tell two training scripts apart, short enough that a node
#: with hundreds of processes stays well inside a frame.
MAX_COMMAND_CHARS: Final = 200

ProcessOwner = tuple[str | None, str | None]


class ProcessTable:
    """Maps GPU pids to ``(user, command)`` with a cache that survives between ticks."""

    def __init__(self, *, max_command: int = MAX_COMMAND_CHARS) -> None:
        self._max_command = max_command
        self._cache: dict[int, tuple[float, ProcessOwner]] = {}

    def lookup(self, pid: int) -> ProcessOwner:
        """``(user, command)`` for ``pid``, or ``(None, None)`` when it is not visible here."""
        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
        except (psutil.Error, ValueError):
            # ValueError: a negative or otherwise impossible pid from a confused driver.
            self._cache.pop(pid, None)
            return (None, None)
        cached = self._cache.get(pid)
        if cached is not None and cached[0] == created:
            return cached[1]
        owner = (self._user(proc), self._command(proc))
        if owner == (None, None):
            # Gone between the two reads: do not remember a half-seen process.
            self._cache.pop(pid, None)
        else:
            self._cache[pid] = (created, owner)
        return owner

    def prune(self, live: Iterable[int]) -> None:
        """Forget pids no GPU reported this tick, so the cache cannot grow without bound."""
        keep = set(live)
        for pid in [pid for pid in self._cache if pid not in keep]:
            del self._cache[pid]

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _user(proc: psutil.Process) -> str | None:
        try:
            user: str = proc.username()
        except psutil.Error:
            return None
        return user

    def _command(self, proc: psutil.Process) -> str | None:
        try:
            argv: list[str] = proc.cmdline()
        except psutil.Error:
            # hidepid or another user's process under a hardened /proc: the name still helps.
            argv = []
        text = " ".join(argv).strip()
        if not text:
            try:
                text = str(proc.name())
            except psutil.Error:
                return None
        if not text:
            return None
        if len(text) > self._max_command:
            text = text[: self._max_command - 1] + "…"
        return text
