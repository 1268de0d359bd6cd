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
from collections.abc import Iterable
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


#: Clocks-event ("throttle") reasons, the one table of them: the name a reason has in the
#: protocol, in ``GpuReading.clock_reasons`` and in the metrics' ``reason`` label (NVML's
#: ``nvmlClocksEventReason*``, decoded by ``agents.gpu.clocks``), its NVML bit, and the words an
#: operator reads wherever it is shown (node view, alerts, events, ``status``, the agent's own
#: table): one vocabulary, so a reason reads the same in every view.
CLOCK_REASONS: Final[dict[str, tuple[int, str]]] = {
    "gpu_idle": (0x001, "idle"),
    "applications_clocks_setting": (0x002, "application clocks"),
    "sw_power_cap": (0x004, "power cap"),
    "hw_slowdown": (0x008, "HW slowdown"),
    "sync_boost": (0x010, "sync boost"),
    "sw_thermal_slowdown": (0x020, "thermal (SW)"),
    "hw_thermal_slowdown": (0x040, "thermal (HW)"),
    "hw_power_brake_slowdown": (0x080, "power brake (HW)"),
    "display_clock_setting": (0x100, "display clocks"),
}


def clock_reason_words(names: Iterable[str]) -> str:
    """Reasons as an operator says them, in NVML's bit order; a name not in the table (a newer
    driver's, ``bit_0x...``) as it came, last, so none is hidden."""
    unknown = 1 << 62
    ordered = sorted(names, key=lambda n: CLOCK_REASONS.get(n, (unknown, ""))[0])
    return ", ".join(CLOCK_REASONS[n][1] if n in CLOCK_REASONS else n for n in ordered)


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


#: A GPU above this utilization counts as still working, process listed or not.
BUSY_UTIL_PERCENT: Final = 5


def at_work(r: GpuReading) -> bool:
    """Whether work is still on the GPU: a process listed, or busy with none listed (work in
    another PID namespace lists no process). The one rule for a drain waiting for the GPUs and
    a reset refusing a busy one, on the agent, and for the console checking before it asks."""
    return not r.lost and bool(r.processes or (r.util_gpu or 0) > BUSY_UTIL_PERCENT)


class HostReading(msgspec.Struct, kw_only=True, frozen=True):
    """The host at one tick. Rates are per second since the previous tick (None on the first);
    the slow cadence's fields (per core, swap, disk, network) since the previous slow read."""

    cpu_percent: float | None
    cpu_per_core: list[float] | None  # slow cadence
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
    #: draining: unix time the drain was given until; past it with work still running the
    #: node stays DRAINING (DRAINED means no work) and the agent says so once.
    deadline: float | None = None
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

    def columns(self) -> tuple[str, str, str, str, str]:
        """When (UTC), who, what, the result, and why: the reason given, then what the agent
        said; each clipped (escaped, bounded), as text from a peer must be."""
        import datetime as dt

        at = dt.datetime.fromtimestamp(self.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = self.args.get("reason")
        why = "; ".join(str(x) for x in (reason, self.message) if x)
        return at, clip(self.who, 64), clip(self.op, 64), clip(self.result, 64), clip(why, 400)

    def line(self) -> str:
        """One line for a person (both sides print the log this way)."""
        return clip("  ".join(self.columns()).rstrip(), 400)


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
    #: From 1 per agent run, samples only: consecutive samples have consecutive numbers, so a
    #: gap between two a client received is a sample it missed. (Agents before this rule
    #: numbered events from the same counter: there a gap may be an event.)
    seq: int
    ts: float  # unix time at the agent
    host: HostReading
    gpus: list[GpuReading]
    replay: bool = False  # True while the agent sends its buffered history


class Event(_Frame, tag="event", kw_only=True, frozen=True):
    #: From 1 per agent run, events only (their own count, apart from the samples'): with
    #: ``ts`` and ``kind`` it tells an event retold on a reconnect from a new one.
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


#: ``ProtocolError.code`` of a well-formed frame of a type, or holding a named value, that this
#: side does not know. From a peer of a newer minor that is an addition to skip (older peers
#: must ignore what they do not know); from a peer of the same minor or older it is an error.
UNKNOWN_KIND: Final = "unknown_kind"
_UNKNOWN_KIND_RE: Final = re.compile(r"^Invalid (value '.*' - at `\$\.t`|enum value )")


def decode(line: bytes) -> Frame:
    """Parse one line (with or without its newline) into a frame, or raise ProtocolError."""
    if len(line) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {len(line)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        frame: Frame = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        text = str(exc)
        # A frame type or a named value (event kind, ops state...) that this side does not
        # know: maybe a newer minor's addition, which an older reader skips (``UNKNOWN_KIND``).
        code = UNKNOWN_KIND if _UNKNOWN_KIND_RE.search(text) else "invalid"
        raise ProtocolError(code, f"invalid frame: {clip(text)}") from None
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


# ---------------------------------------------------------------------------------------------
# Prometheus exposition (issue 7)
#
# What an agent with ``[metrics] listen`` set serves on ``/metrics``, and what the console's
# Prometheus source reads back: one table, so the two sides cannot drift. Readings dcgm-exporter
# also exports keep its names, units and labels (``DCGM_FI_DEV_*``), so that Grafana dashboards
# and alert rules written for it work unchanged; ours, and any of ours whose meaning differs from
# DCGM's (PCIe throughput: a rate here, a cumulative KB counter there), are ``gpufleet_*``.
#
# Rules both sides rely on:
# - A value the hardware did not give (NotSupported, a lost GPU) is absent: no series, never 0.
#   A lost GPU has ``gpufleet_gpu_lost 1`` and nothing else.
# - The readings (every ``scope="gpu"`` metric and the ``gpufleet_host_*`` ones) come from the
#   agent's newest sample, and only while it is fresh: younger than ``STALE_INTERVALS`` sampling
#   intervals. Past that, the agent serves what it knows without a sample (its info, its ops
#   state, the inventory's limits, the newest sample's time and ``gpufleet_sample_fresh 0``),
#   so Prometheus marks the readings stale instead of keeping old numbers as live.
# - Serving a scrape reads no hardware: it renders what the sampler already holds.
# - Text format 0.0.4 only (dcgm-exporter's), whatever the scraper asks for: OpenMetrics would
#   require ``_total`` on counters, which dcgm's counter names do not have.

MetricKind = Literal["gauge", "counter"]
MetricScope = Literal["gpu", "node"]

#: Labels on every per-GPU series, in dcgm-exporter's spelling and order (``gpu`` is NVML's
#: index, ``device`` is ``nvidia<index>``, ``Hostname`` the agent's node name), then ours:
#: ``pool`` and the ops ``state`` (schedulable, draining, drained). A label with no value (a node
#: in no pool) is left empty, which Prometheus treats as absent.
GPU_LABELS: Final = (
    "gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "pool", "state"
)  # fmt: skip
#: Labels on every per-node series.
NODE_LABELS: Final = ("Hostname", "pool", "state")

#: Port the agent's exporter is documented with: beside dcgm-exporter's 9400, so a site's
#: firewall rules and service discovery find it near the one they know, but not on it, so both
#: can run on a node while dashboards move over. The exporter is off unless configured.
METRICS_PORT: Final = 9401
#: Sampling intervals after which the newest sample no longer counts as current (the console's
#: stale rule, design.md §4).
STALE_INTERVALS: Final = 3.0
#: Bytes in a mebibyte: dcgm-exporter's framebuffer unit, and the screen's.
MIB: Final = 1 << 20


class MetricSpec(msgspec.Struct, kw_only=True, frozen=True):
    """One exported metric: its name and type as Prometheus sees them, the unit of its value,
    and the reading it is computed from (so a reader of the table knows what a value means)."""

    name: str
    kind: MetricKind
    help: str
    unit: str  # MHz, C, W, mJ, %, MiB, bytes, bytes/s, s, count, bool (0 or 1), bitmask
    source: str  # the protocol field(s) it comes from, and any conversion
    scope: MetricScope
    #: Labels beyond ``GPU_LABELS`` / ``NODE_LABELS`` (an info metric's fields).
    extra_labels: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return (GPU_LABELS if self.scope == "gpu" else NODE_LABELS) + self.extra_labels

    @property
    def dcgm(self) -> bool:
        """Named as dcgm-exporter names the same reading."""
        return self.name.startswith("DCGM_FI_")


def _gpu(name: str, kind: MetricKind, unit: str, source: str, help: str) -> MetricSpec:
    return MetricSpec(name=name, kind=kind, help=help, unit=unit, source=source, scope="gpu")


def _node(
    name: str, kind: MetricKind, unit: str, source: str, help: str, extra: tuple[str, ...] = ()
) -> MetricSpec:
    return MetricSpec(
        name=name, kind=kind, help=help, unit=unit, source=source, scope="node", extra_labels=extra
    )


METRICS: Final[tuple[MetricSpec, ...]] = (
    # -- per GPU, dcgm-exporter's names (etc/default-counters.csv and DCGM's field list) --------
    _gpu("DCGM_FI_DEV_SM_CLOCK", "gauge", "MHz", "GpuReading.sm_clock_mhz",
         "SM clock frequency (in MHz)."),
    _gpu("DCGM_FI_DEV_MEM_CLOCK", "gauge", "MHz", "GpuReading.mem_clock_mhz",
         "Memory clock frequency (in MHz)."),
    _gpu("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "C", "GpuReading.temp_mem_c",
         "Memory temperature (in C)."),
    _gpu("DCGM_FI_DEV_GPU_TEMP", "gauge", "C", "GpuReading.temp_c", "GPU temperature (in C)."),
    _gpu("DCGM_FI_DEV_POWER_USAGE", "gauge", "W", "GpuReading.power_mw / 1000",
         "Power draw (in W)."),
    _gpu("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "mJ", "GpuReading.energy_mj",
         "Total energy consumption since boot (in mJ)."),
    _gpu("DCGM_FI_DEV_GPU_UTIL", "gauge", "%", "GpuReading.util_gpu", "GPU utilization (in %)."),
    _gpu("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "%", "GpuReading.util_mem",
         "Memory utilization (in %)."),
    _gpu("DCGM_FI_DEV_XID_ERRORS", "gauge", "count", "Event(kind='xid').xid, newest per GPU",
         "Value of the last XID error encountered (0: none since the agent started)."),
    _gpu("DCGM_FI_DEV_FB_FREE", "gauge", "MiB",
         "(GpuReading.mem_total - mem_used - mem_reserved) / 2**20",
         "Framebuffer memory free (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_USED", "gauge", "MiB", "GpuReading.mem_used / 2**20",
         "Framebuffer memory used (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_TOTAL", "gauge", "MiB", "GpuReading.mem_total / 2**20",
         "Total framebuffer memory (in MiB)."),
    _gpu("DCGM_FI_DEV_FB_RESERVED", "gauge", "MiB", "GpuReading.mem_reserved / 2**20",
         "Framebuffer memory reserved by the driver (in MiB)."),
    _gpu("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "count",
         "GpuReading.ecc_uncorrected_volatile",
         "Total number of double-bit volatile ECC errors."),
    _gpu("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "count",
         "GpuReading.remapped_uncorrectable",
         "Number of remapped rows for uncorrectable errors"),
    _gpu("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "count",
         "GpuReading.remapped_correctable", "Number of remapped rows for correctable errors"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "bool", "GpuReading.remap_failure",
         "Whether remapping of rows has failed"),
    _gpu("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "bool", "GpuReading.remap_pending",
         "Whether remapping of rows is pending (the GPU needs a reset)"),
    _gpu("DCGM_FI_DEV_PSTATE", "gauge", "count", "GpuReading.pstate",
         "Performance state (P-State) 0-15. 0=highest"),
    _gpu("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "bitmask",
         "GpuReading.clock_reasons, encoded as NVML's nvmlClocksEventReason* bit mask",
         "Current clocks event reasons (bit mask of NVML's nvmlClocksEventReason* values)."),
    # -- per GPU, ours ----------------------------------------------------------------------------
    _gpu("gpufleet_gpu_lost", "gauge", "bool", "GpuReading.lost",
         "1 when the GPU stopped answering the driver (GpuIsLost); its readings are then absent."),
    MetricSpec(
        name="gpufleet_gpu_clock_event_active", kind="gauge", unit="bool", scope="gpu",
        source="GpuReading.clock_reasons, one series per reason present",
        help="1 for each clocks event reason holding the GPU's clocks back, by name "
        "(sw_power_cap is normal under load; the thermal ones and hw_slowdown are alarms).",
        extra_labels=("reason",),
    ),
    _gpu("gpufleet_gpu_last_xid_timestamp_seconds", "gauge", "s", "Event(kind='xid').ts",
         "Unix time (agent's clock) of the XID in DCGM_FI_DEV_XID_ERRORS; absent if none."),
    _gpu("gpufleet_gpu_processes", "gauge", "count", "len(GpuReading.processes)",
         "Processes the driver lists on the GPU (0 does not mean idle: containers hide theirs)."),
    _gpu("gpufleet_gpu_pcie_link_width", "gauge", "count", "GpuReading.pcie_width",
         "Current PCIe link width (lanes)."),
    _gpu("gpufleet_gpu_pcie_link_width_max", "gauge", "count", "GpuInfo.pcie_max_width",
         "Maximum PCIe link width of the GPU (lanes)."),
    _gpu("gpufleet_gpu_pcie_tx_bytes_per_second", "gauge", "bytes/s",
         "GpuReading.pcie_tx_kbs * 1024 (NVML's KB/s)",
         "PCIe transmit throughput over NVML's last sample window (bytes per second)."),
    _gpu("gpufleet_gpu_pcie_rx_bytes_per_second", "gauge", "bytes/s",
         "GpuReading.pcie_rx_kbs * 1024 (NVML's KB/s)",
         "PCIe receive throughput over NVML's last sample window (bytes per second)."),
    _gpu("gpufleet_gpu_temperature_slowdown_celsius", "gauge", "C", "GpuInfo.temp_slowdown_c",
         "Temperature at which the GPU slows its clocks down (in C)."),
    _gpu("gpufleet_gpu_temperature_shutdown_celsius", "gauge", "C", "GpuInfo.temp_shutdown_c",
         "Temperature at which the GPU shuts down (in C)."),
    _gpu("gpufleet_gpu_memory_temperature_max_celsius", "gauge", "C", "GpuInfo.temp_mem_max_c",
         "Maximum operating temperature of the GPU's memory (in C)."),
    _gpu("gpufleet_gpu_power_limit_watts", "gauge", "W", "GpuInfo.power_limit_mw / 1000",
         "Enforced power limit (in W)."),
    # -- per node ---------------------------------------------------------------------------------
    _node("gpufleet_node_state_info", "gauge", "bool", "NodeState: state, pool, reason, who",
          "Always 1: the node's ops state (schedulable, draining, drained) in its labels, with "
          "the reason and who set it.", ("reason", "who")),
    _node("gpufleet_node_state_since_timestamp_seconds", "gauge", "s", "NodeState.since",
          "Unix time (agent's clock) the ops state last changed."),
    _node("gpufleet_node_gpus", "gauge", "count", "len(Inventory.gpus)",
          "GPUs the agent found on the node."),
    _node("gpufleet_sample_timestamp_seconds", "gauge", "s", "Sample.ts",
          "Unix time (agent's clock) of the newest sample: its age is the data's age."),
    _node("gpufleet_sample_interval_seconds", "gauge", "s", "Hello.interval_s",
          "Seconds between the agent's samples."),
    _node("gpufleet_sample_fresh", "gauge", "bool", "Sample.ts within STALE_INTERVALS intervals",
          "1 while the newest sample is current; 0 when sampling stalled (readings withheld)."),
    _node("gpufleet_agent_info", "gauge", "bool",
          "Hello.software, Inventory (restart_targets comma-joined)",
          "Always 1: the agent's version, protocol, GPU backend, driver and scheduler, and the "
          "restart targets it allows (comma-separated).",
          ("version", "protocol", "backend", "driver_version", "cuda_version", "scheduler",
           "restart_targets")),
    _node("gpufleet_inventory_timestamp_seconds", "gauge", "s",
          "when the agent started or its GPU inventory last changed (a GPU came back)",
          "Unix time (agent's clock) of the static facts served (GPU identities and limits, "
          "agent info): a new value means they may have changed."),
    _node("gpufleet_host_cpu_utilization_percent", "gauge", "%", "HostReading.cpu_percent",
          "Host CPU utilization over the last interval, all cores (in %)."),
    _node("gpufleet_host_load1", "gauge", "count", "HostReading.load[0]", "1-minute load average."),
    _node("gpufleet_host_load5", "gauge", "count", "HostReading.load[1]", "5-minute load average."),
    _node("gpufleet_host_load15", "gauge", "count", "HostReading.load[2]",
          "15-minute load average."),
    _node("gpufleet_host_memory_total_bytes", "gauge", "bytes", "HostReading.mem_total",
          "Host memory (bytes)."),
    _node("gpufleet_host_memory_used_bytes", "gauge", "bytes", "HostReading.mem_used",
          "Host memory used (bytes)."),
    _node("gpufleet_host_memory_available_bytes", "gauge", "bytes", "HostReading.mem_available",
          "Host memory available to start new work (bytes)."),
    _node("gpufleet_host_swap_total_bytes", "gauge", "bytes", "HostReading.swap_total",
          "Swap space (bytes)."),
    _node("gpufleet_host_swap_used_bytes", "gauge", "bytes", "HostReading.swap_used",
          "Swap space used (bytes)."),
    _node("gpufleet_host_disk_read_bytes_per_second", "gauge", "bytes/s",
          "HostReading.disk_read_bps", "Disk read rate over the last slow interval."),
    _node("gpufleet_host_disk_write_bytes_per_second", "gauge", "bytes/s",
          "HostReading.disk_write_bps", "Disk write rate over the last slow interval."),
    _node("gpufleet_host_network_receive_bytes_per_second", "gauge", "bytes/s",
          "HostReading.net_rx_bps", "Network receive rate over the last slow interval."),
    _node("gpufleet_host_network_transmit_bytes_per_second", "gauge", "bytes/s",
          "HostReading.net_tx_bps", "Network transmit rate over the last slow interval."),
    _node("gpufleet_host_uptime_seconds", "gauge", "s", "HostReading.uptime_s",
          "Seconds since the host booted."),
)  # fmt: skip

#: The table by metric name.
METRIC_SPECS: Final[dict[str, MetricSpec]] = {m.name: m for m in METRICS}
