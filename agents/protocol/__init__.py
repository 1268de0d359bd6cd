"""The wire between a node's agent and the console: typed frames, one per line of JSON.

This package is the whole contract. The agent and the console both import it and nothing
else from each other, so a change here is a protocol change: bump ``PROTOCOL_MINOR`` (in
``frames``) for additions a peer may ignore, ``PROTOCOL_MAJOR`` for anything an older peer
would misread.

Conversation, as the agent sees it::

    agent  -> Hello                       (first frame, always)
    client -> Hello                       (first frame, always; a major mismatch ends it)
    agent  -> Inventory, Sample(replay=True) x history, Event(replay=True) x recent events,
              then live Sample / Event frames
    client -> Request ...                 agent -> Response (same id)

Readings the hardware did not give (NotSupported, GPU lost, no baseline yet) are ``None``:
never 0, never a sentinel string, so a reader can always tell "zero" from "unknown".

The package's modules, each one concern: ``errors`` (what is raised, and how a peer's text is
echoed), ``readings`` (what a node reports), ``frames`` (the frames, versions, encoding),
``handshake`` (each side's hello, accepting the peer's, refusing it), ``requests`` (the closed
set of operations and their arguments) and ``metrics`` (the Prometheus exposition). Everything
is re-exported here: importers say ``from agents.protocol import X``.
"""

from agents.protocol.errors import (
    MAX_ECHO,
    GpufleetError,
    ProtocolError,
    clip,
)
from agents.protocol.frames import (
    MAX_BAD_FRAMES,
    MAX_FRAME_BYTES,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    UNKNOWN_KIND,
    VERSION_MISMATCH,
    Error,
    Event,
    Frame,
    FrameSplitter,
    Hello,
    Inventory,
    Request,
    Response,
    Sample,
    check_version,
    decode,
    encode,
    parse_version,
    to_builtins,
)
from agents.protocol.handshake import (
    NO_HELLO,
    Greeting,
    Side,
    fatal_error,
    is_mismatch,
    our_hello,
    read_hello,
)
from agents.protocol.metrics import (
    GPU_LABELS,
    METRIC_SPECS,
    METRICS,
    METRICS_PORT,
    MIB,
    NODE_LABELS,
    STALE_INTERVALS,
    MetricKind,
    MetricScope,
    MetricSpec,
)
from agents.protocol.readings import (
    ALARMING_REASONS,
    BUSY_UTIL_PERCENT,
    CLOCK_REASONS,
    AuditEntry,
    EventKind,
    GpuInfo,
    GpuProcess,
    GpuReading,
    HostInfo,
    HostReading,
    NodeState,
    OpsState,
    Role,
    at_work,
    clock_reason_words,
)
from agents.protocol.requests import (
    MAX_AUDIT_READ,
    MAX_REASON,
    POOL_NAME,
    REQUEST_SPECS,
    AuditArgs,
    DrainArgs,
    NoArgs,
    ReassignArgs,
    RequestSpec,
    RestartArgs,
    ResumeArgs,
    SimInjectArgs,
    WhoAmI,
    decode_args,
    parse_since,
)

__all__ = [
    "ALARMING_REASONS",
    "BUSY_UTIL_PERCENT",
    "CLOCK_REASONS",
    "GPU_LABELS",
    "MAX_AUDIT_READ",
    "MAX_BAD_FRAMES",
    "MAX_ECHO",
    "MAX_FRAME_BYTES",
    "MAX_REASON",
    "METRICS",
    "METRICS_PORT",
    "METRIC_SPECS",
    "MIB",
    "NODE_LABELS",
    "NO_HELLO",
    "POOL_NAME",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "PROTOCOL_VERSION",
    "REQUEST_SPECS",
    "STALE_INTERVALS",
    "UNKNOWN_KIND",
    "VERSION_MISMATCH",
    "AuditArgs",
    "AuditEntry",
    "DrainArgs",
    "Error",
    "Event",
    "EventKind",
    "Frame",
    "FrameSplitter",
    "GpuInfo",
    "GpuProcess",
    "GpuReading",
    "GpufleetError",
    "Greeting",
    "Hello",
    "HostInfo",
    "HostReading",
    "Inventory",
    "MetricKind",
    "MetricScope",
    "MetricSpec",
    "NoArgs",
    "NodeState",
    "OpsState",
    "ProtocolError",
    "ReassignArgs",
    "Request",
    "RequestSpec",
    "Response",
    "RestartArgs",
    "ResumeArgs",
    "Role",
    "Sample",
    "Side",
    "SimInjectArgs",
    "WhoAmI",
    "at_work",
    "check_version",
    "clip",
    "clock_reason_words",
    "decode",
    "decode_args",
    "encode",
    "fatal_error",
    "is_mismatch",
    "our_hello",
    "parse_since",
    "parse_version",
    "read_hello",
    "to_builtins",
]
