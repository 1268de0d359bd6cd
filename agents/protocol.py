"""The wire between a node's agent and the console: typed frames, one per line of JSON.

This module is the whole contract. The agent and the console both import it and nothing else
from each other, so a change here is a protocol change: bump ``PROTOCOL_MINOR`` for additions a
peer may ignore, ``PROTOCOL_MAJOR`` for anything an older peer would misread.

Conversation, as the agent sees it::

    agent  -> Hello                       (first frame, always)
    client -> Hello                       (first frame, always; a major mismatch ends it)
    agent  -> Inventory, Sample(replay=True) x history, Event(replay=True) x recent events,
              then live Sample / Event frames
    client -> Request ...                 agent -> Response (same id)

Readings the hardware did not give (NotSupported, GPU lost, no baseline yet) are ``None``:
never 0, never a sentinel string, so a reader can always tell "zero" from "unknown".
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal
from unicodedata import category as _category

import msgspec

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 4  # 1.1 Event.replay; 1.2 audit; 1.3 drain, resume, reassign;
#                            1.4 restart, Inventory.scheduler and restart_targets,
#                            NodeState.resume_after_boot
PROTOCOL_VERSION: Final = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"

#: Largest frame either side accepts, newline included. A sample of 8 GPUs with a few
#: processes each is a few kB; this leaves room for hundreds of processes without letting a
#: peer make us buffer without bound.
MAX_FRAME_BYTES: Final = 1 << 20

#: Consecutive undecodable frames after which the receiver gives up on the peer.
MAX_BAD_FRAMES: Final = 5

OpsState = Literal["schedulable", "draining", "drained"]
Role = Literal["viewer", "operator"]
EventKind = Literal[
    "xid", "ecc", "remap_pending", "slowdown", "gpu_lost", "gpu_back", "state", "notice"
]


#: Clocks-event reasons (``GpuReading.clock_reasons``) that mean heat or an external brake is
#: holding the GPU back, as opposed to its own power budget (``sw_power_cap``, the normal state
#: of a busy GPU): the agent raises a ``slowdown`` event for them, the console an alert.
ALARMING_REASONS: Final = frozenset(
    {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


class GpufleetError(Exception):
    """Root of every error gpufleet raises on purpose; its message is fit to show a person."""


#: Longest message we build from text a peer sent (op names, field names, versions): enough to
#: recognise it, too short to bloat replies or forge log lines.
MAX_ECHO: Final = 200


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` safe to echo back or log: control characters escaped, length bounded."""
    if not text.isprintable():  # escape only what is not printable: "ü" stays "ü"
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ProtocolError(GpufleetError):
    """A frame that could not be read; ``code`` is the machine-readable reason.

    The message often quotes what the peer sent, so it is clipped here, once for every caller.
    """

    def __init__(self, code: str, message: str) -> None:
        message = clip(message, 2 * MAX_ECHO)
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# Building blocks (not frames themselves)


class GpuInfo(msgspec.Struct, kw_only=True, frozen=True):
    """What does not change while the agent runs: read once at start (and on re-probe)."""

    index: int
    uuid: str | None
    name: str | None
    serial: str | None = None
    pci_bus_id: str | None = None
    memory_total: int | None = None  # bytes
    power_limit_mw: int | None = None  # enforced limit, milliwatts
    temp_slowdown_c: int | None = None
    temp_shutdown_c: int | None = None
    temp_mem_max_c: int | None = None
    mig_enabled: bool | None = None
    persistence_mode: bool | None = None
    ecc_enabled: bool | None = None
    pcie_max_width: int | None = None
    pcie_max_gen: int | None = None
    sm_clock_max_mhz: int | None = None


class HostInfo(msgspec.Struct, kw_only=True, frozen=True):
    hostname: str
    kernel: str
    cpu_count: int
    memory_total: int  # bytes
    boot_id: str | None


class GpuProcess(msgspec.Struct, kw_only=True, frozen=True):
    """A process using a GPU, joined with the host's view of it.

    ``user`` and ``command`` are ``None`` when the PID is not visible from the agent's PID
    namespace (containers) or exited between the two reads.
    """

    pid: int
    used_memory: int | None  # bytes
    kind: Literal["compute", "graphics"] = "compute"
    user: str | None = None
    command: str | None = None


class GpuReading(msgspec.Struct, kw_only=True, frozen=True):
    """One GPU at one tick. Units are NVML's own, named in the field: mW, MHz, bytes, °C."""

    index: int
    lost: bool = False
    util_gpu: int | None = None  # percent
    util_mem: int | None = None  # percent
    mem_used: int | None = None
    mem_total: int | None = None
    mem_reserved: int | None = None
    temp_c: int | None = None
    temp_mem_c: int | None = None  # HBM, slow cadence
    power_mw: int | None = None
    energy_mj: int | None = None  # since driver load, slow cadence
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    clock_reasons: list[str] | None = None  # decoded names, see agents.gpu.clocks
    pstate: int | None = None
    ecc_uncorrected_volatile: int | None = None
    remapped_correctable: int | None = None
    remapped_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_tx_kbs: int | None = None  # slow cadence
    pcie_rx_kbs: int | None = None  # slow cadence
    pcie_width: int | None = None
    processes: list[GpuProcess] | None = None


class HostReading(msgspec.Struct, kw_only=True, frozen=True):
    """The host at one tick. Rates are per second since the previous tick (None on the first)."""

    cpu_percent: float | None
    cpu_per_core: list[float] | None
    load: tuple[float, float, float] | None
    mem_total: int
    mem_used: int
    mem_available: int
    swap_total: int
    swap_used: int
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    uptime_s: float
    boot_id: str | None


class NodeState(msgspec.Struct, kw_only=True, frozen=True):
    """The node's operational state, owned and persisted by the agent."""

    state: OpsState = "schedulable"
    pool: str | None = None
    reason: str | None = None
    who: str | None = None
    since: float | None = None  # unix time of the last change
    deadline: float | None = None  # draining: unix time it counts as drained regardless
    #: restart node: the boot id it was rebooted from; the agent resumes the node when it
    #: starts on another boot (drain, reboot, back in service: what "restart" means).
    resume_after_boot: str | None = None


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One line of the node's audit log: every action, accepted or refused."""

    ts: float
    who: str
    uid: int
    op: str
    args: dict[str, Any]
    result: Literal["ok", "refused", "failed"]
    message: str | None = None
    before: NodeState | None = None
    after: NodeState | None = None
    request_id: int | None = None

    def line(self) -> str:
        """One line for a person (both sides print the log this way): when (UTC), who,
        what, the result, and why: the reason given, then what the agent said."""
        import datetime as dt

        at = dt.datetime.fromtimestamp(self.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = self.args.get("reason")
        why = "; ".join(str(x) for x in (reason, self.message) if x)
        return clip(f"{at}  {self.who}  {self.op}  {self.result}  {why}".rstrip(), 400)


# ---------------------------------------------------------------------------------------------
# Frames: a tagged union on the "t" field


class _Frame(msgspec.Struct, tag_field="t", kw_only=True, frozen=True):
    pass


class Hello(_Frame, tag="hello", kw_only=True, frozen=True):
    """First frame from each side. ``proto`` is "MAJOR.MINOR"."""

    proto: str
    software: str
    peer: Literal["agent", "console", "tool"]
    node: str | None = None  # agent: its node name
    interval_s: float | None = None  # agent: sampling interval
    history: bool = True  # client: all the buffered samples first (False: the newest only)
    stream: bool = True  # client: send live samples and events


class Inventory(_Frame, tag="inventory", kw_only=True, frozen=True):
    node: str
    backend: Literal["nvml", "sim", "none"]
    backend_note: str | None = None  # why there are no GPUs, when there are none
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    host: HostInfo
    gpus: list[GpuInfo]
    #: The ops state. Always set by a serving agent; None only from a one-shot reader
    #: (``gpufleet-agent once``) that could not read the state directory.
    state: NodeState | None
    scheduler: str | None = None  # "none", "slurm", "kubernetes"; None from a one-shot reader
    restart_targets: list[str] = []  # what ``restart`` accepts on this node


class Sample(_Frame, tag="sample", kw_only=True, frozen=True):
    seq: int
    ts: float  # unix time at the agent
    host: HostReading
    gpus: list[GpuReading]
    replay: bool = False  # True while the agent sends its buffered history


class Event(_Frame, tag="event", kw_only=True, frozen=True):
    seq: int
    ts: float
    kind: EventKind
    gpu: int | None = None
    xid: int | None = None
    count: int | None = None  # ECC: the counter's new value
    message: str
    state: NodeState | None = None  # kind == "state"
    replay: bool = False  # True for an event retold to a client that connected after it


class Request(_Frame, tag="request", kw_only=True, frozen=True):
    """An operation by name. ``args`` is checked against ``REQUEST_ARGS[op]`` by the agent."""

    id: int
    op: str
    args: dict[str, Any] = {}


class Response(_Frame, tag="response", kw_only=True, frozen=True):
    id: int
    ok: bool
    result: dict[str, Any] | None = None
    code: str | None = None  # machine-readable reason when not ok
    error: str | None = None  # one line for a person when not ok


class Error(_Frame, tag="error", kw_only=True, frozen=True):
    """Something went wrong with the connection itself. ``fatal`` means the sender closes."""

    code: str
    message: str
    fatal: bool = False


Frame = Hello | Inventory | Sample | Event | Request | Response | Error

# ---------------------------------------------------------------------------------------------
# Requests and their arguments. Later issues add actions here; the set is closed.


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
    """Take the node out of service: DRAINING until its GPUs are free (or ``timeout``
    seconds pass), then DRAINED."""

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


class RequestSpec(msgspec.Struct, frozen=True):
    args: type[msgspec.Struct]
    role: Role  # the least role allowed to make it
    audited: bool  # whether it changes anything and so goes to the audit log


REQUEST_SPECS: Final[dict[str, RequestSpec]] = {
    "ping": RequestSpec(NoArgs, "viewer", audited=False),
    "whoami": RequestSpec(NoArgs, "viewer", audited=False),
    "state": RequestSpec(NoArgs, "viewer", audited=False),
    "sim_inject": RequestSpec(SimInjectArgs, "operator", audited=True),
    "audit": RequestSpec(AuditArgs, "viewer", audited=False),
    "drain": RequestSpec(DrainArgs, "operator", audited=True),
    "resume": RequestSpec(ResumeArgs, "operator", audited=True),
    "reassign": RequestSpec(ReassignArgs, "operator", audited=True),
    "restart": RequestSpec(RestartArgs, "operator", audited=True),
}


class WhoAmI(msgspec.Struct, frozen=True):
    uid: int
    user: str
    groups: list[str]
    role: Role


# ---------------------------------------------------------------------------------------------
# Encoding and decoding

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    """One frame as one line, newline included."""
    data = _encoder.encode(frame)
    if len(data) + 1 > MAX_FRAME_BYTES:
        raise ProtocolError(
            "too_large", f"frame of {len(data) + 1} bytes exceeds {MAX_FRAME_BYTES}"
        )
    return data + b"\n"


def decode(line: bytes) -> Frame:
    """Parse one line (with or without its newline) into a frame, or raise ProtocolError."""
    if len(line) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {len(line)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        frame: Frame = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise ProtocolError("invalid", f"invalid frame: {clip(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("malformed", f"malformed frame: {clip(str(exc))}") from None
    except RecursionError:  # a small frame can nest deep enough to exhaust the stack
        raise ProtocolError("malformed", "malformed frame: nested too deeply") from None
    return frame


_VERSION_RE: Final = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")


def parse_version(proto: str) -> tuple[int, int]:
    m = _VERSION_RE.fullmatch(proto)
    if m is None:
        raise ProtocolError("version", f"unreadable protocol version {clip(proto)!r}")
    return int(m.group(1)), int(m.group(2))


def check_version(hello: Hello) -> None:
    """Raise unless the peer speaks our major version (minors are compatible both ways)."""
    major, _ = parse_version(hello.proto)
    if major != PROTOCOL_MAJOR:
        raise ProtocolError(
            "version",
            f"protocol {hello.proto} from {clip(hello.software)!r} is not compatible with "
            f"{PROTOCOL_VERSION}: upgrade the older side",
        )


def decode_args(request: Request) -> msgspec.Struct:
    """The request's arguments as the op's typed struct, or ProtocolError naming the problem."""
    spec = REQUEST_SPECS.get(request.op)
    if spec is None:
        raise ProtocolError("unknown_op", f"unknown request {clip(request.op)!r}")
    try:
        return msgspec.convert(request.args, spec.args)
    except msgspec.ValidationError as exc:
        raise ProtocolError("bad_args", f"{clip(request.op)}: {clip(str(exc))}") from None


def to_builtins(obj: Any) -> Any:
    """A struct as plain JSON-able data (for results, audit args and --json output)."""
    return msgspec.to_builtins(obj)


class FrameSplitter:
    """Cuts a byte stream into frames without ever holding more than one frame's worth.

    Sans-IO so both sides (asyncio streams, threads, tests) share it. ``feed`` returns complete
    lines; an over-long line is swallowed up to its newline and reported once as ``None`` so
    the caller can answer with an error and carry on reading.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:], out)
                return out
            chunk = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                self._buf.clear()
                continue
            if len(self._buf) + len(chunk) + 1 > self._limit:
                self._buf.clear()
                out.append(None)
                continue
            self._buf += chunk
            line = bytes(self._buf)
            self._buf.clear()
            if line.strip():
                out.append(line)

    def _append(self, rest: bytes, out: list[bytes | None]) -> None:
        if self._discarding:
            return
        self._buf += rest
        if len(self._buf) >= self._limit:
            self._buf.clear()
            self._discarding = True
            out.append(None)

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buf)
