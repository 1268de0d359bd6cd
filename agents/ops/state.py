"""The node's ops state and every way it changes, in one place.

Schedulable, draining or drained, the pool, why, who, since, a drain's deadline and a reboot
to resume from: the agent's requests and its own sampling loop both change them, and before
this owner each built its own ``NodeState`` and saved it its own way, so a rule (a drain's
deadline is dropped once drained; a resume forgets the reboot it came back from) lived in
several places and two writers could race. Here each change is a named transition that reads
the current state, builds the next one, saves it (fsync'd, off the event loop) and only then
announces it, one change at a time. The audit stays with the requests: it records what was
asked, refusals included, which is more than what changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from agents.ops.store import StateStore, StoreError
from agents.protocol import GpufleetError, NodeState, OpsState
from agents.schedulers.base import SchedView, follow


class StateNotSaved(GpufleetError):
    """A change that could not be made durable, so it was not made at all; ``code`` is the
    request's refusal code (``not_supported``: this node has no state to change,
    ``state_failed``: the state directory refused the write)."""

    def __init__(self, code: Literal["not_supported", "state_failed"], message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Change:
    """A transition's result: the state just before it was made, and the state now (the same
    when nothing needed changing)."""

    before: NodeState
    after: NodeState

    @property
    def changed(self) -> bool:
        return self.before != self.after


class StateOwner:
    """The one holder and writer of the node's ops state.

    ``store`` None holds a fixed state (a tool or a test that reads but may not change it):
    every transition is refused with ``not_supported``. Listeners hear each new state after
    it is saved, on the event loop.
    """

    def __init__(
        self,
        store: StateStore | None,
        *,
        node: str,
        clock: Callable[[], float] = time.time,
        state: NodeState | None = None,
    ) -> None:
        """``state``: the state to start from; by default what ``store`` holds (StoreError
        when it cannot be read: forgetting a drain would put work back on the node)."""
        self._store = store
        self._node = node
        self._clock = clock
        if state is None:
            state = store.load() if store is not None else NodeState()
        self._state = state
        self._listeners: list[Callable[[NodeState], None]] = []
        #: One save at a time: the sampling loop's drain completion and a request's resume
        #: must not interleave their writes and leave the older one last.
        self._saving = asyncio.Lock()
        #: The drain deadline whose passing was already reported (said once, not every tick).
        self._overdue_told: float | None = None

    @property
    def state(self) -> NodeState:
        return self._state

    def listen(self, listener: Callable[[NodeState], None]) -> None:
        """Call ``listener`` with every new state, once it is on disk."""
        self._listeners.append(listener)

    async def _commit(self, make: Callable[[NodeState], NodeState | None]) -> Change:
        """Build the next state from the current one and make it durable, then announce it.
        ``make`` returns None (or the same state) when there is nothing to change; a state
        that cannot be saved is not taken, so memory never runs ahead of the disk."""
        async with self._saving:
            before = self._state
            after = make(before)
            if after is None or after == before:
                return Change(before, before)
            if self._store is None:
                raise StateNotSaved("not_supported", f"{self._node} cannot change its state here")
            try:
                await asyncio.to_thread(self._store.save, after)
            except StoreError as exc:
                raise StateNotSaved("state_failed", f"state not changed: {exc}") from None
            self._state = after
        for listener in self._listeners:
            listener(after)
        return Change(before, after)

    # -- the transitions ----------------------------------------------------------------------

    async def follow(self, view: SchedView, by: str) -> Change:
        """The scheduler's view of the node taken as the truth (its DRAINING turning
        DRAINED, an admin's own command); ``by`` names the scheduler, for changes we did not
        make."""
        return await self._commit(lambda s: follow(s, view, self._clock(), by))

    async def drain(
        self,
        *,
        view: SchedView | None,
        reason: str,
        who: str,
        within: float | None,
        busy: bool,
    ) -> Change:
        """Out of service. Under a scheduler its view says draining or drained; on a bare node
        (``view`` None) the GPUs do: DRAINING while one has work (``busy``), with a
        deadline ``within`` seconds from now, else DRAINED at once."""

        def make(s: NodeState) -> NodeState:
            now = self._clock()
            bare = view is None
            state: OpsState = view.state if view else "draining" if busy else "drained"
            deadline = None
            if bare and state == "draining" and within is not None:
                deadline = now + within
            return NodeState(
                state=state,
                pool=view.pool if view else s.pool,
                reason=reason,
                who=who,
                since=now,
                deadline=deadline,
            )

        return await self._commit(make)

    async def work_gone(self) -> Change:
        """A bare node's DRAINING becomes DRAINED once no GPU has work (the caller checked):
        DRAINED means nothing runs there, which an operator reboots or resets on. Its reason,
        who and since stay: it is the same drain, finished."""

        def make(s: NodeState) -> NodeState | None:
            if s.state != "draining":
                return None
            return msgspec.structs.replace(s, state="drained", deadline=None)

        return await self._commit(make)

    def deadline_passed(self) -> bool:
        """Whether a drain's deadline has passed with work still running (the caller checked
        that there is) and has not been reported yet: True once per drain, so it is said to
        the operators once, not every tick. The node stays DRAINING."""
        s = self._state
        if s.state != "draining" or s.deadline is None or self._clock() < s.deadline:
            return False
        if self._overdue_told == s.deadline:
            return False
        self._overdue_told = s.deadline
        return True

    async def resume(self, *, view: SchedView | None, reason: str, who: str) -> Change:
        """Back in service (the scheduler's view says so where there is one). A reboot this
        node was waiting to resume from is forgotten: this is that resume, or overrides it."""

        def make(s: NodeState) -> NodeState:
            return NodeState(
                state=view.state if view else "schedulable",
                pool=view.pool if view else s.pool,
                reason=reason or None,
                who=who,
                since=self._clock(),
            )

        return await self._commit(make)

    async def reassign(self, pool: str | None) -> Change:
        """Into another pool. The reason, who and since stay: they say why the node is out of
        service, if it is; the move has its own entry in the audit log."""
        return await self._commit(lambda s: msgspec.structs.replace(s, pool=pool))

    async def reboot_asked(self, *, view: SchedView | None, reason: str, who: str) -> Change:
        """A scheduler that reboots nodes itself accepted a reboot: what its view says now
        (Slurm drains the node first), if that differs in state or pool; else unchanged."""

        def make(s: NodeState) -> NodeState | None:
            if view is None or (view.state, view.pool) == (s.state, s.pool):
                return None
            return NodeState(
                state=view.state, pool=view.pool, reason=reason, who=who, since=self._clock()
            )

        return await self._commit(make)

    async def restart_begin(self, boot: str) -> Change:
        """A drained bare node about to reboot: remember the boot it leaves, so the agent
        puts it back in service once it starts on another one (``boot_resume_due``)."""
        return await self._commit(lambda s: msgspec.structs.replace(s, resume_after_boot=boot))

    def boot_resume_due(self, boot: str | None) -> bool:
        """Whether the node was rebooted through us and is now up on a new boot, so the
        agent should resume it (through ``resume``, audited as its own act)."""
        left = self._state.resume_after_boot
        return left is not None and boot is not None and left != boot
