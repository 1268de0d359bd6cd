"""The blocking client's failure modes, against a hand-made peer on a real socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.protocol import PROTOCOL_VERSION, Error, Hello, encode
from agents.serve.client import AgentClient, AgentTimeout, AgentUnreachable, ConnectionClosed


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_tmp / "peer.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    yield path, srv
    srv.close()


def _serve_once(srv: socket.socket, *frames: bytes, then_close: bool = False) -> threading.Thread:
    """Accept one client, say ``frames``, read its hello, and then stay silent (or close)."""

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"".join(frames))
            conn.recv(65536)
            if not then_close:
                while conn.recv(65536):  # read, never answer, until the client gives up
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


HELLO = encode(Hello(proto=PROTOCOL_VERSION, software="stub", peer="agent"))


def test_silent_agent_is_a_timeout_not_a_traceback(listener: tuple[str, socket.socket]) -> None:
    path, srv = listener
    _serve_once(srv, HELLO)
    with (
        AgentClient(path, stream=False, read_timeout=0.2) as c,
        pytest.raises(AgentTimeout, match=r"no word from the agent in 0.2 s"),
    ):
        c.request("ping")


def test_agent_closing_is_connection_closed(listener: tuple[str, socket.socket]) -> None:
    path, srv = listener
    _serve_once(srv, HELLO, then_close=True)
    with AgentClient(path, stream=False) as c, pytest.raises(ConnectionClosed):
        c.request("ping")


def test_fatal_error_frame_carries_the_agents_reason(listener: tuple[str, socket.socket]) -> None:
    path, srv = listener
    bye = encode(Error(code="version", message="protocol 9.0 is not 1.0", fatal=True))
    _serve_once(srv, HELLO, bye)
    with pytest.raises(ConnectionClosed) as closed:
        AgentClient(path, stream=False).recv()
    assert closed.value.error is not None
    assert closed.value.error.code == "version"
    assert "protocol 9.0" in str(closed.value)


def test_newer_major_agent_is_refused_by_the_client(listener: tuple[str, socket.socket]) -> None:
    path, srv = listener
    _serve_once(srv, encode(Hello(proto="2.0", software="agent 9", peer="agent")))
    with pytest.raises(Exception, match=r"protocol 2.0 .* is not compatible with 1\."):
        AgentClient(path, stream=False)


def test_no_socket_says_where_it_looked(short_tmp: Path) -> None:
    with pytest.raises(AgentUnreachable, match=r"no agent at .*nothing.sock"):
        AgentClient(str(short_tmp / "nothing.sock"))
