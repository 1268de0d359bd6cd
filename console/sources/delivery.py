"""Whether a request reached a node's agent: what any transport raises when it did not, and
which requests an agent of a given protocol minor knows. Kept apart from the SSH link so that
the verbs (``console.ops.actions``) can handle both without loading SSH."""

from __future__ import annotations

from typing import Final

from agents.protocol import REQUEST_SPECS, GpufleetError


class NotDelivered(GpufleetError):
    """A request that never reached the agent, or whose answer never came back: the caller
    must say so, and must not guess at the outcome. ``maybe``: it was sent, so it may have
    been applied (the answer was lost); otherwise it certainly was not."""

    def __init__(self, message: str, *, maybe: bool = False) -> None:
        super().__init__(message)
        self.maybe = maybe


class AgentTooOld(GpufleetError):
    """A request the node's agent is too old to know: not sent (an older agent would only
    answer "unknown request"); the message says which versions and what to do."""


#: The protocol minor (of this major) in which each request first appeared, as the protocol
#: declares it (``RequestSpec.since``). Sent to an agent that speaks an older minor, it would
#: come back as "unknown request" (and, from an operator, land in the node's audit log as
#: refused): the console says instead that the agent is too old.
REQUEST_SINCE: Final[dict[str, int]] = {op: spec.since for op, spec in REQUEST_SPECS.items()}


def knows(protocol: tuple[int, int] | None, op: str) -> bool:
    """Whether an agent speaking ``protocol`` knows the request ``op`` (one not yet heard
    from is given the benefit of the doubt: it is asked, and answers for itself)."""
    since = REQUEST_SINCE.get(op)
    return protocol is None or since is None or protocol[1] >= since
