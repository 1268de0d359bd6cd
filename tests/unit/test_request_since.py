"""Which requests an agent of an older minor knows, from the one declaration the protocol
makes of it (``RequestSpec.since``): the console refuses to send it the others."""

from __future__ import annotations

import pytest

from agents.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, REQUEST_SPECS
from console.sources.delivery import knows


def test_every_request_appeared_in_a_minor_of_this_major() -> None:
    assert all(0 <= spec.since <= PROTOCOL_MINOR for spec in REQUEST_SPECS.values())


@pytest.mark.parametrize(
    ("minor", "known", "unknown"),
    [
        (1, {"ping", "state", "sim_inject"}, {"audit", "drain", "restart"}),
        (3, {"audit", "drain", "resume", "reassign"}, {"restart"}),
        (4, {"restart"}, set()),
    ],
)
def test_an_older_agent_is_not_sent_what_its_minor_lacks(
    minor: int, known: set[str], unknown: set[str]
) -> None:
    agent = (PROTOCOL_MAJOR, minor)
    assert all(knows(agent, op) for op in known)
    assert not any(knows(agent, op) for op in unknown)


def test_an_agent_not_yet_heard_from_is_asked() -> None:
    assert all(knows(None, op) for op in REQUEST_SPECS)
