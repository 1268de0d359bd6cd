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
``requests`` (the closed set of operations and their arguments), ``metrics`` (the Prometheus
exposition) and ``messages`` (how a GPU's faults are worded, in events and alerts alike).
Everything is re-exported here: importers say ``from agents.protocol import X``.
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
from agents.protocol.messages import (
    ecc_message,
    ecc_rose_message,
    gpu_back_message,
    gpu_lost_message,
    remap_pending_message,
    slowdown_ended_message,
    slowdown_message,
    xid_message,
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
    CLOCK_REASONS,
    IDLE_UTIL_PERCENT,
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
    computing,
    slowdown_reasons,
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
    "CLOCK_REASONS",
    "GPU_LABELS",
    "IDLE_UTIL_PERCENT",
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
    "POOL_NAME",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "PROTOCOL_VERSION",
    "REQUEST_SPECS",
    "STALE_INTERVALS",
    "UNKNOWN_KIND",
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
    "SimInjectArgs",
    "WhoAmI",
    "at_work",
    "check_version",
    "clip",
    "clock_reason_words",
    "computing",
    "decode",
    "decode_args",
    "ecc_message",
    "ecc_rose_message",
    "encode",
    "gpu_back_message",
    "gpu_lost_message",
    "parse_since",
    "parse_version",
    "remap_pending_message",
    "slowdown_ended_message",
    "slowdown_message",
    "slowdown_reasons",
    "to_builtins",
    "xid_message",
]
