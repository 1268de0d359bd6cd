"""The handshake every side speaks: what each sends first, which first frames are accepted as
the peer's hello, and how a refusal reads."""

from __future__ import annotations

import pytest

from agents.protocol import (
    NO_HELLO,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    Hello,
    ProtocolError,
    Request,
    decode,
    encode,
    fatal_error,
    is_mismatch,
    our_hello,
    read_hello,
)


def test_our_hello_speaks_this_builds_version_and_survives_the_wire() -> None:
    agent = our_hello("agent", "gpufleet-agent 9", node="n1", interval_s=0.5)
    assert decode(encode(agent)) == agent
    assert (agent.proto, agent.peer, agent.node, agent.interval_s) == (
        PROTOCOL_VERSION,
        "agent",
        "n1",
        0.5,
    )
    console = our_hello("console", "gpufleet 9", history=False)
    assert (console.history, console.stream, console.node) == (False, True, None)


@pytest.mark.parametrize("minor", [0, PROTOCOL_MINOR, PROTOCOL_MINOR + 7])
def test_a_hello_of_our_major_is_accepted_whatever_its_minor(minor: int) -> None:
    hello = Hello(proto=f"{PROTOCOL_MAJOR}.{minor}", software="x", peer="agent")
    greeting = read_hello(hello, "the agent")
    assert greeting.hello == hello
    assert greeting.version == (PROTOCOL_MAJOR, minor)


def test_another_frame_first_is_no_hello_and_says_what_came() -> None:
    with pytest.raises(ProtocolError) as raised:
        read_hello(Request(id=1, op="ping"), "the client")
    assert raised.value.code == NO_HELLO
    assert "the client sent request first" in raised.value.message
    assert not is_mismatch(raised.value.code), "a broken peer, not one to upgrade"


@pytest.mark.parametrize("proto", [f"{PROTOCOL_MAJOR + 1}.0", "banana"])
def test_another_major_or_no_version_is_a_mismatch_naming_both(proto: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        read_hello(Hello(proto=proto, software="agent 9", peer="agent"), "the agent")
    assert is_mismatch(raised.value.code)
    assert proto in raised.value.message


def test_a_refusal_is_a_fatal_error_frame_that_keeps_its_code() -> None:
    frame = fatal_error("version", "protocol 2.0 is not compatible")
    assert decode(encode(frame)) == frame
    assert frame.fatal and is_mismatch(frame.code)
