"""The closed set of requests the agent answers, with the role check and the audit.

Every request goes through ``RequestHandler.handle``: decode the arguments against the op's
typed struct, check the caller's role (taken from the socket's peer credentials, never from the
request), run the op, and for ops that change anything, append an audit entry before replying.
A refusal for role is audited too: a viewer trying to act is worth knowing about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from agents.config import RestartSection
from agents.ops.commands import CommandFailed, run_argv
from agents.ops.restart import (
    AGENT,
    NODE,
    allowed_targets,
    gpu_index,
    gpu_reset_argv,
    reboot_argv,
    unit_argv,
)
from agents.ops.state import Change, StateNotSaved, StateOwner
from agents.ops.store import AuditLog, StoreError
from agents.protocol import (
    REQUEST_SPECS,
    AuditArgs,
    AuditEntry,
    AuditResult,
    DrainArgs,
    GpufleetError,
    NodeState,
    OpsState,
    PingResult,
    ProtocolError,
    ReassignArgs,
    RefusalCode,
    Request,
    Response,
    RestartArgs,
    RestartResult,
    ResumeArgs,
    Role,
    Said,
    SimInjectArgs,
    StateChange,
    WhoAmI,
    clip,
    decode_args,
    to_builtins,
)
from agents.schedulers.base import NoScheduler, Scheduler, SchedView
from agents.serve.identity import Peer

log = logging.getLogger(f"gpufleet.{__name__}")
encode_json = msgspec.json.encode

#: Who the audit log names for what the agent does on its own (resume after a reboot).
AGENT_USER: Final = "gpufleet-agent"
#: Seconds between a reply and a command that ends the agent or the node (restart agent, node).
AFTER_REPLY_S: Final = 0.5
#: Request arguments larger than this (encoded) are audited clipped: the audit log records
#: what was asked, and must not be a way to fill the disk.
MAX_AUDITED_ARGS = 4096


class RequestRefused(GpufleetError):
    """The op ran into a rule (wrong node kind, bad target); ``code`` for scripts."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _changed(message: str, change: Change) -> Outcome:
    before, after = change.before, change.after
    result = StateChange(message=message, before=before, after=after)
    return Outcome(result, message=message, before=before, after=after)


def _rebooting(message: str, change: Change, then: list[str] | None = None) -> Outcome:
    before, after = change.before, change.after
    result = RestartResult(message=message, before=before, after=after)
    return Outcome(result, message=message, before=before, after=after, then=then)


def _said(message: str) -> Outcome:
    return Outcome(Said(message=message), message=message)


@dataclass(frozen=True, slots=True)
class Caller:
    peer: Peer
    role: Role


@dataclass(frozen=True, slots=True)
class Outcome:
    result: msgspec.Struct  # the op's ``RequestSpec.result``
    message: str | None = None
    before: NodeState | None = None
    after: NodeState | None = None
    #: A command to run once the reply is on its way (it ends this agent, or the node).
    then: list[str] | None = None


Op = Callable[[Caller, Any], Awaitable[Outcome]]


class RequestHandler:
    def __init__(
        self,
        *,
        node: str,
        audit: AuditLog,
        ops: StateOwner,
        inject: Callable[[str, int], str] | None,
        clock: Callable[[], float] = time.time,
        told: Callable[[str], None] = lambda message: None,
        busy_gpus: Callable[[], frozenset[int]] = frozenset,
        gpus: Callable[[], list[int]] = list,
        scheduler: Scheduler | None = None,
        pools: Sequence[str] = (),
        restart: RestartSection | None = None,
        boot_id: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``ops`` holds the node's ops state and makes every change to it (saved, then
        announced to the rest of the agent); ``told`` passes on a line for the operators (a
        reboot that failed after the reply); ``busy_gpus`` names the GPUs with work still on
        them (``agents.protocol.at_work``: a drain waits for them, a reset refuses them);
        ``gpus`` lists the GPUs there are. ``restart`` is the allowlist (None: nothing may be
        restarted)."""
        self._node = node
        self._audit = audit
        self._node_state = ops
        self._inject = inject
        self._clock = clock
        self._told = told
        self._busy_gpus = busy_gpus
        self._gpus = gpus
        self._scheduler: Scheduler = scheduler or NoScheduler()
        self._pools = tuple(pools)
        self._restart = restart
        self._boot_id = boot_id
        #: One state-changing request at a time per node: two consoles draining at once must
        #: not both see "schedulable" and both tell Slurm.
        self._acting = asyncio.Lock()
        self._later: set[asyncio.Task[None]] = set()
        self._ops: dict[str, Op] = {
            "ping": self._ping,
            "whoami": self._whoami,
            "state": self._state,
            "sim_inject": self._sim_inject,
            "audit": self._audit_tail,
            "drain": self._drain,
            "resume": self._resume,
            "reassign": self._reassign,
            "restart": self._restart_op,
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
            # The op is known (above), so its arguments are what did not fit.
            return await self._refuse(caller, request, "bad_args", exc.message, audit=spec.audited)
        # A change and its audit entry under one lock: the log's order is the order of events.
        async with self._acting if spec.audited else contextlib.nullcontext():
            try:
                outcome = await self._ops[request.op](caller, args)
            except (RequestRefused, StateNotSaved) as exc:
                return await self._refuse(caller, request, exc.code, str(exc), audit=spec.audited)
            except CommandFailed as exc:  # the scheduler's or the tool's own words
                return await self._refuse(caller, request, exc.code, str(exc), result="failed")
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
        if outcome.then is not None:
            self._run_later(outcome.then)
        assert isinstance(outcome.result, spec.result), f"{request.op} answered {outcome.result!r}"
        return Response(id=request.id, ok=True, result=to_builtins(outcome.result))

    def _run_later(self, argv: list[str]) -> None:
        """Run a command that ends this agent or the node once its reply (and the audit
        entry, already on disk) has had time to leave; a failure is told to the operators."""

        async def later() -> None:
            await asyncio.sleep(AFTER_REPLY_S)
            timeout = self._restart.timeout if self._restart else 60.0
            try:
                await run_argv(argv, limit=timeout)
            except CommandFailed as exc:
                log.error("%s failed: %s", " ".join(argv), exc)
                self._told(f"{' '.join(argv[1:])} failed: {exc}")

        task = asyncio.create_task(later())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _refuse(
        self,
        caller: Caller,
        request: Request,
        code: RefusalCode,
        message: str,
        *,
        audit: bool = True,
        result: Literal["refused", "failed"] = "refused",
    ) -> Response:
        """A refusal (or a command that failed), audited when it should be; a failing audit
        log does not swallow it."""
        if audit:
            try:
                await self._record(caller, request, result, message)
            except StoreError as exc:
                log.error("audit: %s", exc)
                message = f"{message} (and the refusal could not be audited: {exc})"
        return Response(id=request.id, ok=False, code=code, error=message)

    async def _record(
        self,
        caller: Caller,
        request: Request,
        result: Literal["ok", "refused", "failed"],
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
        return Outcome(PingResult(node=self._node, ts=self._clock()))

    async def _whoami(self, caller: Caller, args: Any) -> Outcome:
        who = WhoAmI(
            uid=caller.peer.uid,
            user=caller.peer.user,
            groups=list(caller.peer.groups),
            role=caller.role,
        )
        return Outcome(who)

    async def _state(self, caller: Caller, args: Any) -> Outcome:
        return Outcome(self._node_state.state)

    async def _audit_tail(self, caller: Caller, args: AuditArgs) -> Outcome:
        """The newest entries, oldest first. Reads the log through (off the event loop): it
        grows by one line per action, so a node's log stays small next to its disk."""

        def tail() -> list[AuditEntry]:
            return list(deque(self._audit.entries(args.since), maxlen=args.limit))

        return Outcome(AuditResult(entries=await asyncio.to_thread(tail)))

    # -- the operations ----------------------------------------------------------------------
    # On a bare node (scheduler "none") the agent's saved state is the node's state. Under a
    # scheduler the scheduler's view comes first: the state acted from is read from it, the
    # change is made through it, and the state after is read back from it.

    async def sync(self) -> None:
        """Bring the saved state in line with the scheduler's view (the agent's poll): Slurm's
        DRAINING turning DRAINED, or an admin's own scontrol. A failed read or save is logged
        only: the next poll tries again."""
        async with self._acting:
            try:
                await self._current(strict=True)
            except CommandFailed as exc:
                log.warning("%s: cannot read the node's state: %s", self._scheduler.kind, exc)
            except StateNotSaved as exc:
                log.error("%s: cannot follow the node's state: %s", self._scheduler.kind, exc)

    async def _current(self, *, strict: bool = False) -> NodeState:
        """The state to act from: the scheduler's view where there is one. If it cannot be
        read, the saved state, unless ``strict``: the scheduler's own command comes next and
        will refuse in its own words (a node Slurm does not know, a controller down)."""
        try:
            view = await self._scheduler.view()
        except CommandFailed as exc:
            if strict:
                raise
            log.warning("acting on the saved state: %s", exc)
            return self._node_state.state
        if view is None:
            return self._node_state.state
        return (await self._node_state.follow(view, self._scheduler.kind)).after

    async def _view_after(self, state: OpsState, pool: str | None = None) -> SchedView | None:
        """The scheduler's view just after a change it accepted; if that read fails, the
        change still happened: say what it should have made (``state``, and ``pool`` or the
        saved one) and let the next poll correct it."""
        try:
            return await self._scheduler.view()
        except CommandFailed as exc:
            log.warning("cannot read the state back after the change: %s", exc)
            return SchedView(state=state, pool=pool or self._node_state.state.pool, reason=None)

    async def _drain(self, caller: Caller, args: DrainArgs) -> Outcome:
        before = await self._current()
        if before.state != "schedulable":  # idempotent: the first drain's reason stands
            return _changed(f"already {before.state}", Change(before, before))
        busy = bool(self._busy_gpus())
        await self._scheduler.drain(args.reason, args.timeout)
        view = await self._view_after("draining")
        change = await self._node_state.drain(
            view=view, reason=args.reason, who=caller.peer.user, within=args.timeout, busy=busy
        )
        bare = view is None
        if change.after.state == "drained":
            said = "drained: GPUs idle" if bare else f"drained ({self._scheduler.kind})"
        else:
            said = f"draining: waiting for the {'GPU work' if bare else 'jobs'} to end"
        return _changed(said, change)

    async def _resume(self, caller: Caller, args: ResumeArgs) -> Outcome:
        before = await self._current()
        if before.state == "schedulable":
            return _changed("already schedulable", Change(before, before))
        await self._scheduler.resume(args.reason)
        view = await self._view_after("schedulable")
        change = await self._node_state.resume(view=view, reason=args.reason, who=caller.peer.user)
        return _changed(change.after.state, change)

    async def _reassign(self, caller: Caller, args: ReassignArgs) -> Outcome:
        if self._pools and args.pool not in self._pools:
            allowed = ", ".join(self._pools)
            raise RequestRefused("unknown_pool", f"no pool {args.pool} here (pools: {allowed})")
        before = await self._current()
        if before.pool == args.pool:
            return _changed(f"already in pool {args.pool}", Change(before, before))
        await self._scheduler.move(before.pool, args.pool, args.reason)
        view = await self._view_after(before.state, args.pool)
        change = await self._node_state.reassign(view.pool if view else args.pool)
        # A node with no pool of its own was in its console's inventory pool, which the agent
        # does not know: it says so rather than "none" (the console names that pool).
        was = change.before.pool or "(not set on the node: the inventory's)"
        return _changed(f"pool {was} -> {args.pool}", change)

    def restart_targets(self) -> list[str]:
        """The allowlist. A simulated node offers its GPUs' resets only (and a reboot where
        the scheduler does it): its own reboot, agent and units would be this machine's real
        ones, which a simulation must never touch."""
        r = self._restart
        if r is None:
            return []
        real = self._inject is None
        return allowed_targets(
            agent=r.agent and real,
            node=r.node and (real or self._scheduler.reboots),
            gpu_reset=r.gpu_reset,
            units=r.units if real else [],
            gpus=self._gpus(),
        )

    async def _restart_op(self, caller: Caller, args: RestartArgs) -> Outcome:
        allowed = self.restart_targets()
        r = self._restart
        if r is None or args.target not in allowed:
            listed = ", ".join(allowed) or "none"
            raise RequestRefused(
                "unknown_target",
                f"{args.target} is not a restart target on {self._node} (allowed: {listed})",
            )
        state = self._node_state.state
        if args.target == AGENT:
            message = f"restarting the agent ({r.agent_unit})"
            then = unit_argv(r.systemctl, r.agent_unit)
            return Outcome(RestartResult(message=message), message=message, then=then)
        if args.target == NODE:
            return await self._reboot(caller, args, r)
        index = gpu_index(args.target)
        if index is not None:
            if index in self._busy_gpus():
                raise RequestRefused(
                    "gpu_busy", f"gpu{index} is busy: end its work (or drain the node) first"
                )
            if self._inject is not None:  # a simulated GPU: the simulator's reset
                message = self._inject("clear", index)
            else:
                await run_argv(gpu_reset_argv(r.nvidia_smi, index), limit=r.timeout)
                message = f"gpu{index} reset"
            return Outcome(RestartResult(message=message), message=message)
        await run_argv(unit_argv(r.systemctl, args.target), limit=r.timeout)
        message = f"{args.target} restarted"
        return Outcome(RestartResult(message=message, state=state), message=message)

    async def _reboot(self, caller: Caller, args: RestartArgs, r: RestartSection) -> Outcome:
        """Slurm reboots a node itself once its jobs end (and resumes it); elsewhere the node
        must be drained first, and the reboot starts after the reply is on its way."""
        before = await self._current()
        if self._scheduler.reboots:
            await self._scheduler.reboot(args.reason)
            view = await self._view_after("draining")
            change = await self._node_state.reboot_asked(
                view=view, reason=args.reason, who=caller.peer.user
            )
            message = f"reboot requested: {self._scheduler.kind} reboots the node when idle"
            return _rebooting(message, change)
        if before.state != "drained":
            raise RequestRefused(
                "not_drained", f"a node restart needs the node drained first (it is {before.state})"
            )
        boot = self._boot_id()
        if boot is None:
            raise RequestRefused("not_supported", "no boot id here: the reboot could not be told")
        change = await self._node_state.restart_begin(boot)
        message = "rebooting; back in service when the agent starts on the new boot"
        return _rebooting(message, change, then=reboot_argv(r.systemctl))

    async def resume_after_reboot(self) -> None:
        """At start: a node restarted through us is put back in service once it is up on a new
        boot, audited as the agent's own act (the operator's request is in the log above)."""
        if not self._node_state.boot_resume_due(self._boot_id()):
            return
        reason = f"back after the reboot asked by {self._node_state.state.who or 'unknown'}"
        request = Request(id=0, op="resume", args={"reason": reason})
        me = Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), user=AGENT_USER, groups=())
        caller = Caller(me, "operator")
        async with self._acting:
            try:
                outcome = await self._resume(caller, ResumeArgs(reason=reason))
            except (CommandFailed, RequestRefused, StateNotSaved) as exc:
                log.error("resume after the reboot: %s", exc)
                self._told(f"not resumed after the reboot: {exc}")
                return
            await self._record(caller, request, "ok", outcome.message, outcome)

    async def _sim_inject(self, caller: Caller, args: SimInjectArgs) -> Outcome:
        if self._inject is None:
            raise RequestRefused("not_simulated", f"{self._node} has real GPUs; nothing to inject")
        try:
            message = self._inject(args.fault, args.gpu)
        except ValueError as exc:
            raise RequestRefused("bad_args", str(exc)) from None
        return _said(message)
