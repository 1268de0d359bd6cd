"""The frames themselves, a tagged union on the ``t`` field, and how they travel: one line of
JSON each, versioned, bounded, cut from a byte stream by ``FrameSplitter``."""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import msgspec

from agents.protocol.errors import ProtocolError, clip
from agents.protocol.readings import (
    EventKind,
    GpuInfo,
    GpuReading,
    HostInfo,
    HostReading,
    NodeState,
)

PROTOCOL_MAJOR: Final = 1
PROTOCOL_MINOR: Final = 4  # 1.1 Event.replay; 1.4 Inventory.scheduler and restart_targets,
#                            NodeState.resume_after_boot; the requests each minor brought:
#                            ``RequestSpec.since`` (requests.py)
PROTOCOL_VERSION: Final = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"

#: Largest frame either side accepts, newline included. A sample of 8 GPUs with a few
#: processes each is a few kB; this leaves room for hundreds of processes without letting a
#: peer make us buffer without bound.
MAX_FRAME_BYTES: Final = 1 << 20

#: Consecutive undecodable frames after which the receiver gives up on the peer.
MAX_BAD_FRAMES: Final = 5


class _Frame(msgspec.Struct, tag_field="t", kw_only=True, frozen=True):
    pass


#: Who speaks: the agent, the console, or a tool (the agent's own commands, a test).
Side = Literal["agent", "console", "tool"]


class Hello(_Frame, tag="hello", kw_only=True, frozen=True):
    """First frame from each side. ``proto`` is "MAJOR.MINOR"."""

    proto: str
    software: str
    peer: Side
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

#: ``ProtocolError.code`` (and a refusal's ``Error.code``) of a version this side cannot
#: speak: a mismatch, one side to upgrade (see ``handshake``).
VERSION_MISMATCH: Final = "version"


def parse_version(proto: str) -> tuple[int, int]:
    m = _VERSION_RE.fullmatch(proto)
    if m is None:
        raise ProtocolError(VERSION_MISMATCH, f"unreadable protocol version {clip(proto)!r}")
    return int(m.group(1)), int(m.group(2))


def check_version(hello: Hello) -> None:
    """Raise unless the peer speaks our major version (minors are compatible both ways)."""
    major, _ = parse_version(hello.proto)
    if major != PROTOCOL_MAJOR:
        raise ProtocolError(
            VERSION_MISMATCH,
            f"protocol {hello.proto} from {clip(hello.software)!r} is not compatible with "
            f"{PROTOCOL_VERSION}: upgrade the older side",
        )


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
