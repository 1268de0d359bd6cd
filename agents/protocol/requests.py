"""Requests and their arguments: the closed set of operations a client may ask of an agent,
who may ask each, and the checks every argument passes before an agent acts on it."""

from __future__ import annotations

import re
from typing import Final, Literal, TypeVar
from unicodedata import category as _category

import msgspec

from agents.protocol.errors import ProtocolError, clip
from agents.protocol.frames import Request, Response
from agents.protocol.readings import AuditEntry, NodeState, Role


class NoArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class SimInjectArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Inject a fault into a simulated GPU (refused on nodes with real GPUs)."""

    fault: Literal["overheat", "xid79", "ecc", "lost", "clear", "busy", "idle"]
    gpu: int


class AuditArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The newest audit entries, newest last (the node view shows them); ``since`` (unix
    time) leaves out older ones."""

    limit: int = msgspec.field(default=50)
    since: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_AUDIT_READ:
            raise ValueError(f"limit must be 1 to {MAX_AUDIT_READ}")


_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SINCE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """``--since`` as both command lines take it: a duration back from now (``90s``, ``30m``,
    ``12h``, ``7d``) or a date and time (ISO 8601, UTC unless it says otherwise). Raises
    ValueError naming what it accepts."""
    import datetime as dt

    m = _SINCE.fullmatch(text.strip())
    if m:
        return now - float(m.group(1)) * _SINCE_UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (90s, 30m, 12h, 7d) or a date "
            "(2026-11-26 or 2026-11-26T14:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


#: Most audit entries one ``audit`` request returns (a frame must stay well under 1 MiB).
MAX_AUDIT_READ: Final = 200

#: Longest reason accepted (characters). Reasons are kept literally: quotes, ``$(...)``,
#: newlines and non-ASCII are stored and passed on as they are, never interpreted.
MAX_REASON: Final = 1024
POOL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TARGET = re.compile(r"[A-Za-z0-9_@:.\\-]{1,128}")


#: Unicode categories a reason may not hold: controls (terminal escapes, NUL), format
#: characters (bidirectional overrides that make a line read other than it is), line and
#: paragraph separators.
_UNSHOWABLE: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})
#: ... but for these: newline, tab, and the zero-width (non-)joiners that Persian, the Indic
#: scripts and emoji sequences need.
_ALLOWED: Final = frozenset("\n\t\u200c\u200d")


def _check_reason(reason: str, *, required: bool) -> None:
    """Reasons are kept literally, newlines and tabs included; other control characters (a
    terminal escape, a NUL) are refused: shown on every operator's screen and stored in Slurm,
    they could only do harm. Spaces of any kind and every script are fine."""
    if required and not reason.strip():
        raise ValueError("a reason is required")
    if len(reason) > MAX_REASON:
        raise ValueError(f"reason longer than {MAX_REASON} characters")
    bad = next((c for c in reason if c not in _ALLOWED and _category(c) in _UNSHOWABLE), None)
    if bad is not None:
        raise ValueError(
            f"reason holds a control or format character ({bad!r}); of those only newlines "
            "and tabs are kept"
        )


class DrainArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Take the node out of service: DRAINING until its GPUs are free, then DRAINED.
    ``timeout``: how long the drain may take (a bare node says when it passes with work
    still running, and stays DRAINING; Kubernetes stops evicting)."""

    reason: str
    timeout: float | None = None

    def __post_init__(self) -> None:
        _check_reason(self.reason, required=True)
        if self.timeout is not None and not 0 <= self.timeout <= 7 * 86400:
            raise ValueError("timeout must be 0 to 604800 seconds")


class ResumeArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: str = ""

    def __post_init__(self) -> None:
        _check_reason(self.reason, required=False)


class ReassignArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pool: str
    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, required=True)
        if not POOL_NAME.fullmatch(self.pool):
            raise ValueError(
                "pool must be 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )


class RestartArgs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Restart one of the node's allowlisted targets (the agent says which it has)."""

    target: str
    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, required=True)
        if not _TARGET.fullmatch(self.target):
            raise ValueError(f"target {clip(self.target, 60)!r} is not a restart target name")


# -- results ----------------------------------------------------------------------------------
# What each op answers with, in ``Response.result``. Encoded as JSON objects as before these
# had types; a reader ignores fields it does not know (a newer minor's), and ``omit_defaults``
# leaves out the fields an answer does not use.


class PingResult(msgspec.Struct, frozen=True):
    node: str
    ts: float  # unix time at the agent


class WhoAmI(msgspec.Struct, frozen=True):
    uid: int
    user: str
    groups: list[str]
    role: Role


class AuditResult(msgspec.Struct, frozen=True):
    entries: list[AuditEntry]  # oldest first


class Said(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the agent did, in a line for a person (every acting op says one)."""

    message: str


class StateChange(Said, frozen=True, kw_only=True, omit_defaults=True):
    """An op on the node's ops state: the state before and after (the same when there was
    nothing to do: draining a drained node)."""

    before: NodeState
    after: NodeState


class RestartResult(Said, frozen=True, kw_only=True, omit_defaults=True):
    """A restart: of the node, with its ops state before and after (a reboot changes it); of
    a unit, with the ops state it was done in; of a GPU or the agent, the message alone."""

    before: NodeState | None = None
    after: NodeState | None = None
    state: NodeState | None = None


R = TypeVar("R", bound=msgspec.Struct)


def result_as(response: Response, kind: type[R]) -> R:
    """An ``ok`` response's result read as ``kind`` (the op's result, or a part of it such as
    ``Said``); ProtocolError("invalid") when it does not fit, as a frame that does not."""
    try:
        return msgspec.convert(response.result or {}, kind)
    except msgspec.ValidationError as exc:
        raise ProtocolError(
            "invalid", f"invalid {kind.__name__} result: {clip(str(exc))}"
        ) from None


#: Why the agent refused a request or could not do it (``Response.code``): a closed set, so a
#: script can act on every code there is. The wire keeps ``Response.code`` a string, so that a
#: code a newer agent adds reaches an older console as a refusal, never as a frame it cannot
#: read (and a request it never hears back from).
RefusalCode = Literal[
    # the request itself
    "unknown_op",  # no such op
    "forbidden",  # the caller's role may not make it
    "bad_args",  # its arguments do not fit the op
    "too_large",  # its answer would exceed the frame limit
    # the op's rules
    "not_supported",  # not on this node (no scheduler reboots, no boot id, no state)
    "not_simulated",  # sim_inject on real GPUs
    "not_drained",  # a node restart before the node is drained
    "unknown_pool",  # a pool this node (or its scheduler) does not have
    "unknown_target",  # not on the node's restart allowlist
    "gpu_busy",  # a GPU reset while the GPU has work
    "unknown_node",  # the scheduler does not know this node
    # what went wrong doing it
    "state_failed",  # the ops state could not be saved: nothing changed
    "audit_failed",  # done, but the audit log could not record it
    "command_failed",  # the scheduler's or the tool's command failed (its words follow)
    "not_found",  # the tool is not there
    "timeout",  # the tool did not answer in time
]


class RequestSpec(msgspec.Struct, frozen=True, kw_only=True):
    args: type[msgspec.Struct]
    result: type[msgspec.Struct]  # what an ``ok`` answer's result reads as
    role: Role  # the least role allowed to make it
    audited: bool  # whether it changes anything and so goes to the audit log
    #: The protocol minor (of this major) that brought it. An agent of an older minor would
    #: answer "unknown request" (and, to an operator, audit it as refused): a client that
    #: knows the agent's version says instead that the agent is too old, and sends nothing.
    since: int


REQUEST_SPECS: Final[dict[str, RequestSpec]] = {
    "ping": RequestSpec(args=NoArgs, result=PingResult, role="viewer", audited=False, since=0),
    "whoami": RequestSpec(args=NoArgs, result=WhoAmI, role="viewer", audited=False, since=0),
    "state": RequestSpec(args=NoArgs, result=NodeState, role="viewer", audited=False, since=0),
    "sim_inject": RequestSpec(
        args=SimInjectArgs, result=Said, role="operator", audited=True, since=0
    ),
    "audit": RequestSpec(args=AuditArgs, result=AuditResult, role="viewer", audited=False, since=2),
    "drain": RequestSpec(
        args=DrainArgs, result=StateChange, role="operator", audited=True, since=3
    ),
    "resume": RequestSpec(
        args=ResumeArgs, result=StateChange, role="operator", audited=True, since=3
    ),
    "reassign": RequestSpec(
        args=ReassignArgs, result=StateChange, role="operator", audited=True, since=3
    ),
    "restart": RequestSpec(
        args=RestartArgs, result=RestartResult, role="operator", audited=True, since=4
    ),
}


def decode_args(request: Request) -> msgspec.Struct:
    """The request's arguments as the op's typed struct, or ProtocolError naming the problem."""
    spec = REQUEST_SPECS.get(request.op)
    if spec is None:
        raise ProtocolError("unknown_op", f"unknown request {clip(request.op)!r}")
    try:
        return msgspec.convert(request.args, spec.args)
    except msgspec.ValidationError as exc:
        raise ProtocolError("bad_args", f"{clip(request.op)}: {clip(str(exc))}") from None
