"""Errors gpufleet raises on purpose, and the one rule for echoing a peer's text in them."""

from __future__ import annotations

from typing import Final


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
