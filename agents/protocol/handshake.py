"""The handshake, for every side that speaks it: the agent's server, its blocking client and
the console's SSH link.

Each side's first frame is its ``Hello``; the agent speaks first, the client answers, and a
peer whose major differs from ours is refused, naming both versions. The three read and write
in their own ways (a blocking socket, asyncio streams, an SSH channel), so this is sans-IO:
what a side sends, what it accepts as the peer's hello, and the fatal ``Error`` a refusal
ends with are decided here, once, and each side only moves the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agents.protocol.errors import ProtocolError
from agents.protocol.frames import (
    PROTOCOL_VERSION,
    VERSION_MISMATCH,
    Error,
    Frame,
    Hello,
    Side,
    check_version,
    parse_version,
)

#: ``Error.code`` / ``ProtocolError.code`` of a peer whose first frame was not its hello, or
#: that said nothing in time.
NO_HELLO: Final = "handshake"


def our_hello(
    side: Side,
    software: str,
    *,
    node: str | None = None,
    interval_s: float | None = None,
    history: bool = True,
    stream: bool = True,
) -> Hello:
    """This side's first frame, at this build's protocol version. ``node`` and
    ``interval_s`` are the agent's to say; ``history`` and ``stream`` a client's."""
    return Hello(
        proto=PROTOCOL_VERSION,
        software=software,
        peer=side,
        node=node,
        interval_s=interval_s,
        history=history,
        stream=stream,
    )


@dataclass(frozen=True, slots=True)
class Greeting:
    """A peer's hello, accepted: what it said, and its version as numbers."""

    hello: Hello
    version: tuple[int, int]


def read_hello(frame: Frame, sender: str) -> Greeting:
    """The peer's first frame, which must be its hello in our major. Raises ProtocolError:
    ``NO_HELLO`` when it is another frame, ``VERSION_MISMATCH`` (naming both versions and
    which side to upgrade) when the majors differ. ``sender`` names the peer in the message
    ("the agent", "the client")."""
    if not isinstance(frame, Hello):
        kind = type(frame).__name__.lower()
        raise ProtocolError(NO_HELLO, f"{sender} sent {kind} first, not hello")
    check_version(frame)
    return Greeting(frame, parse_version(frame.proto))


def fatal_error(code: str, message: str) -> Error:
    """The fatal frame a side ends the connection with, saying why, before it closes."""
    return Error(code=code, message=message, fatal=True)


def is_mismatch(code: str | None) -> bool:
    """Whether a refusal (an ``Error`` frame or a ProtocolError) is about versions: one side
    to upgrade, not a peer that is broken or down."""
    return code == VERSION_MISMATCH
