"""The closed set of requests the agent answers, with the role check and the audit.

Every request goes through ``RequestHandler.handle``: decode the arguments against the op's
typed struct, check the caller's role (taken from the socket's peer credentials, never from the
request), run the op, and for ops that change anything, append an audit entry before replying.
A refusal for role is audited too: a viewer trying to act is worth knowing about.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from agents.identity import Peer
from agents.protocol import (
    REQUEST_SPECS,
    AuditArgs,
    AuditEntry,
    DrainArgs,
    GpufleetError,
    NodeState,
    ProtocolError,
    ReassignArgs,
    Request,
    Response,
    ResumeArgs,
    Role,
    SimInjectArgs,
    WhoAmI,
    clip,
    decode_args,
    to_builtins,
)
from agents.store import AuditLog, StoreError

log = logging.getLogger("gpufleet.agent")
encode_json = msgspec.json.encode

#: Request arguments larger than this (encoded) are audited clipped: the audit log records
#: what was asked, and must not be a way to fill the disk.
MAX_AUDITED_ARGS = 4096


class RequestRefused(GpufleetError):
    """The op ran into a rule (wrong node kind, bad target); ``code`` for scripts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _changed(message: str, before: NodeState, after: NodeState) -> Outcome:
    result = {"message": message, "before": to_builtins(before), "after": to_builtins(after)}
    return Outcome(result, message=message, before=before, after=after)


@dataclass(frozen=True, slots=True)
class Caller:
    peer: Peer
    role: Role


@dataclass(frozen=True, slots=True)
class Outcome:
    result: dict[str, Any]
    message: str | None = None
    before: NodeState | None = None
    after: NodeState | None = None


Op = Callable[[Caller, Any], Awaitable[Outcome]]


class RequestHandler:
    def __init__(
        self,
        *,
        node: str,
        audit: AuditLog,
        get_state: Callable[[], NodeState],
        inject: Callable[[str, int], str] | None,
        clock: Callable[[], float] = time.time,
        save_state: Callable[[NodeState], None] | None = None,
        state_changed: Callable[[NodeState], None] | None = None,
        gpus_busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """``save_state`` persists a new ops state durably (blocking: it runs on a thread);
        ``state_changed`` then tells the rest of the agent (on the event loop); ``gpus_busy``
        says whether work is still running on the GPUs (a drain waits for it to end)."""
        self._node = node
        self._audit = audit
        self._get_state = get_state
        self._inject = inject
        self._clock = clock
        self._save_state = save_state
        self._state_changed = state_changed
        self._gpus_busy = gpus_busy
        self._ops: dict[str, Op] = {
            "ping": self._ping,
            "whoami": self._whoami,
            "state": self._state,
            "sim_inject": self._sim_inject,
            "audit": self._audit_tail,
            "drain": self._drain,
            "resume": self._resume,
            "reassign": self._reassign,
        }
        missing = set(REQUEST_SPECS) ^ set(self._ops)
        assert not missing, f"protocol and handler disagree on ops: {missing}"

    async def handle(self, caller: Caller, request: Request) -> Response:
        """Refusals come in this order: unknown op, wrong role, bad arguments, the op's own
        rules. All of them but a viewer's bad arguments to a read are audited."""
        spec = REQUEST_SPECS.get(request.op)
        if spec is None:
            message = f"unknown request {clip(request.op)!r}"
            return await self._refuse(caller, request, "unknown_op", message)
        if spec.role == "operator" and caller.role != "operator":
            message = f"{caller.peer.user} is a viewer; {request.op} needs the operator role"
            return await self._refuse(caller, request, "forbidden", message)
        try:
            args = decode_args(request)
        except ProtocolError as exc:
            return await self._refuse(caller, request, exc.code, exc.message, audit=spec.audited)
        try:
            outcome = await self._ops[request.op](caller, args)
        except RequestRefused as exc:
            return await self._refuse(caller, request, exc.code, str(exc), audit=spec.audited)
        if spec.audited:
            try:
                await self._record(caller, request, "ok", outcome.message, outcome)
            except StoreError as exc:
                log.error("audit: %s", exc)
                return Response(
                    id=request.id,
                    ok=False,
                    code="audit_failed",
                    error=f"{request.op} was applied but could not be audited: {exc}",
                )
        return Response(id=request.id, ok=True, result=outcome.result)

    async def _refuse(
        self, caller: Caller, request: Request, code: str, message: str, *, audit: bool = True
    ) -> Response:
        """A refusal, audited when it should be; a failing audit log does not swallow it."""
        if audit:
            try:
                await self._record(caller, request, "refused", message)
            except StoreError as exc:
                log.error("audit: %s", exc)
                message = f"{message} (and the refusal could not be audited: {exc})"
        return Response(id=request.id, ok=False, code=code, error=message)

    async def _record(
        self,
        caller: Caller,
        request: Request,
        result: Literal["ok", "refused"],
        message: str | None,
        outcome: Outcome | None = None,
    ) -> None:
        """Append to the audit log, fsync'd, off the event loop (an fsync can take a while on a
        busy disk, and sampling must not wait for it)."""
        args = request.args
        if len(encode_json(args)) > MAX_AUDITED_ARGS:
            args = {"_clipped": clip(encode_json(args).decode(errors="replace"))}
        entry = AuditEntry(
            ts=self._clock(),
            who=caller.peer.user,
            uid=caller.peer.uid,
            op=clip(request.op),
            args=args,
            result=result,
            message=message,
            before=outcome.before if outcome else None,
            after=outcome.after if outcome else None,
            request_id=request.id,
        )
        await asyncio.to_thread(self._audit.append, entry)
        log.info("audit: %s %s %s: %s", caller.peer, entry.op, entry.result, message or "")

    async def _ping(self, caller: Caller, args: Any) -> Outcome:
        return Outcome({"node": self._node, "ts": self._clock()})

    async def _whoami(self, caller: Caller, args: Any) -> Outcome:
        who = WhoAmI(
            uid=caller.peer.uid,
            user=caller.peer.user,
            groups=list(caller.peer.groups),
            role=caller.role,
        )
        return Outcome(to_builtins(who))

    async def _state(self, caller: Caller, args: Any) -> Outcome:
        return Outcome(to_builtins(self._get_state()))

    async def _audit_tail(self, caller: Caller, args: AuditArgs) -> Outcome:
        """The newest entries, oldest first. Reads the log through (off the event loop): it
        grows by one line per action, so a node's log stays small next to its disk."""

        def tail() -> list[AuditEntry]:
            return list(deque(self._audit.entries(args.since), maxlen=args.limit))

        return Outcome({"entries": to_builtins(await asyncio.to_thread(tail))})

    # -- the operations (adapter "none": the agent's own state is the node's state) ----------

    async def _change(self, before: NodeState, after: NodeState, message: str) -> Outcome:
        """Persist (fsync'd, off the loop), then announce; the answer carries both states."""
        if self._save_state is None or self._state_changed is None:
            raise RequestRefused("not_supported", f"{self._node} cannot change its state here")
        try:
            await asyncio.to_thread(self._save_state, after)
        except StoreError as exc:
            raise RequestRefused("state_failed", f"state not changed: {exc}") from None
        self._state_changed(after)
        return _changed(message, before, after)

    async def _drain(self, caller: Caller, args: DrainArgs) -> Outcome:
        before = self._get_state()
        if before.state != "schedulable":  # idempotent: the first drain's reason stands
            return _changed(f"already {before.state}", before, before)
        now = self._clock()
        busy = self._gpus_busy()
        after = NodeState(
            state="draining" if busy else "drained",
            pool=before.pool,
            reason=args.reason,
            who=caller.peer.user,
            since=now,
            deadline=None if args.timeout is None or not busy else now + args.timeout,
        )
        said = "draining: waiting for the GPU work to end" if busy else "drained: GPUs idle"
        return await self._change(before, after, said)

    async def _resume(self, caller: Caller, args: ResumeArgs) -> Outcome:
        before = self._get_state()
        if before.state == "schedulable":
            return _changed("already schedulable", before, before)
        after = NodeState(
            state="schedulable",
            pool=before.pool,
            reason=args.reason or None,
            who=caller.peer.user,
            since=self._clock(),
        )
        return await self._change(before, after, "schedulable")

    async def _reassign(self, caller: Caller, args: ReassignArgs) -> Outcome:
        before = self._get_state()
        if before.pool == args.pool:
            return _changed(f"already in pool {args.pool}", before, before)
        # The ops state's reason, who and since stay: they say why it is out of service. The
        # move itself is in the audit log, with its own reason.
        after = msgspec.structs.replace(before, pool=args.pool)
        return await self._change(before, after, f"pool {before.pool or '(none)'} -> {args.pool}")

    async def _sim_inject(self, caller: Caller, args: SimInjectArgs) -> Outcome:
        if self._inject is None:
            raise RequestRefused("not_simulated", f"{self._node} has real GPUs; nothing to inject")
        try:
            message = self._inject(args.fault, args.gpu)
        except ValueError as exc:
            raise RequestRefused("bad_args", str(exc)) from None
        return Outcome({"message": message}, message=message)
