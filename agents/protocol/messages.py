"""How a GPU's faults are worded: the agent's events (``Event.message``) and the console's
alerts say the same fault the same way, so an operator who reads one in the alerts view and
the other in the node's events, or in ``gpufleet-agent watch``, sees one fault, not two.

An event is news (it happened, or it changed: a counter's rise, a slowdown's end), an alert a
standing condition (it is so now): where the two differ, the function says which it words.
Headless and dependency-free, as the rest of the protocol package: both sides import it.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.protocol.readings import clock_reason_words


def _gpu(index: int) -> str:
    return f"GPU {index}"


def xid_message(gpu: int, xid: int) -> str:
    """An XID the driver reported for the GPU: the event, and the alert while it is recent."""
    return f"{_gpu(gpu)}: XID {xid}"


def gpu_lost_message(gpu: int, *, news: bool = False) -> str:
    """The GPU does not answer the driver: the alert while it is so, or with ``news`` the
    event that it happened, which says what lost means."""
    said = f"{_gpu(gpu)} is lost"
    return f"{said} (not answering the driver)" if news else said


def gpu_back_message(gpu: int) -> str:
    """The event of a lost GPU answering again (its alert simply ends)."""
    return f"{_gpu(gpu)} answers again"


def ecc_message(gpu: int, count: int) -> str:
    """The alert: the GPU's volatile uncorrected ECC errors, counted (``1 ... error``)."""
    return f"{_gpu(gpu)}: {count} uncorrected ECC error{'' if count == 1 else 's'}"


def ecc_rose_message(gpu: int, before: int, after: int) -> str:
    """The event: the volatile uncorrected ECC counter rose between two readings."""
    return f"{_gpu(gpu)}: volatile uncorrected ECC errors {before} -> {after}"


def remap_pending_message(gpu: int) -> str:
    """A row remapping waits for a reset: the event when it starts, the alert while it waits."""
    return f"{_gpu(gpu)}: row remapping pending, needs a reset"


def slowdown_message(gpu: int, reasons: Iterable[str]) -> str:
    """The GPU's clocks held back by the reasons (``slowdown_reasons``), in an operator's
    words: the event when it starts, the alert while it lasts."""
    return f"{_gpu(gpu)}: clocks slowed down by {clock_reason_words(reasons)}"


def slowdown_ended_message(gpu: int) -> str:
    """The event of a slowdown ending (its alert simply ends)."""
    return f"{_gpu(gpu)}: slowdown ended"
