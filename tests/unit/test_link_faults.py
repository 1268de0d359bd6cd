"""A link that meets a fault of gpufleet's own code (a bug: KeyError, TypeError...) shows it
as such, ``fault`` with where the traceback is, never as a node ``unreachable``; the traceback
is in the console log, once; the fleet's own failures are logged at the level an operator
needs. Nothing connects: asyncssh.connect is replaced by an agent that says hello and sends
one event, and the bug is injected by making a function of ours raise."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from pathlib import Path

import asyncssh
import pytest

from agents.protocol import PROTOCOL_VERSION, Event, Hello, ProtocolError, encode
from console import cli
from console.model.inventory import parse_inventory
from console.sources.ssh import link
from console.sources.ssh.fleetlinks import FleetLinks
from console.sources.ssh.link import LinkFailure, LinkOptions, classify
from tests.conftest import until

NODE = parse_inventory('[[group]]\nname = "g"\nnodes = "n1"\n', "f").nodes


@pytest.fixture
def console_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None) -> Path:
    """The per-user console log as the console sets it up (``_log_to_file``), under
    ``tmp_path``; pytest's own handlers put back after (``root_logging``)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = Path(cli._log_to_file())
    assert path == tmp_path / "state" / "gpufleet" / "console.log"
    return path


class _Stream:
    """The agent's side of the channel: what it sends, then silence (never closed)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int) -> bytes:
        if self._data:
            data, self._data = self._data, b""
            return data
        await asyncio.Event().wait()
        return b""


class _Sink:
    def write(self, data: bytes) -> None:
        pass


class _AgentConn:
    """An SSH connection to a node whose agent says hello and sends one event."""

    def __init__(self) -> None:
        self.closed = False

    async def __aenter__(self) -> _AgentConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    async def open_unix_connection(self, path: str) -> tuple[_Stream, _Sink]:
        hello = Hello(proto=PROTOCOL_VERSION, software="agent", peer="agent", interval_s=1.0)
        event = Event(seq=1, ts=1.0, kind="xid", gpu=0, xid=79, message="XID 79")
        return _Stream(encode(hello) + encode(event)), _Sink()


def _links(tmp_path: Path) -> FleetLinks:
    options = LinkOptions(
        known_hosts=tmp_path / "kh", ssh_config=[], backoff_initial=0.01, backoff_max=0.05
    )
    return FleetLinks(NODE, options)


async def test_a_bug_in_frame_handling_is_a_fault_with_its_traceback_not_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, console_log: Path
) -> None:
    """The model's frame handling raising KeyError on every event: the node is ``fault``,
    saying what and where the log is; its alert is a fault, not ``unreachable``; the feed's
    line says it too; the traceback (through the function that raised) is in the console log
    once, however often the link tries again, and it does try again."""
    conns: list[_AgentConn] = []

    async def connect(host: str, **kw: object) -> _AgentConn:
        conns.append(_AgentConn())
        return conns[-1]

    def frame_handling_with_a_bug(node: str, frame: object, now: float) -> None:
        raise KeyError("gpu9")

    monkeypatch.setattr(asyncssh, "connect", connect)
    links = _links(tmp_path)
    monkeypatch.setattr(links.fleet, "apply", frame_handling_with_a_bug)
    view = links.fleet.nodes["n1"]
    async with links:
        await until(lambda: view.link == "fault", "the fault on the node")
        await until(lambda: len(conns) >= 3, "the link to try again")
        words = f"internal error: KeyError: 'gpu9', see the log at {console_log}"
        assert view.link_reason == words
        assert [(a.kind, a.severity, a.message) for a in view.alerts] == [
            ("fault", "critical", words)
        ]
        fault = links.status(0.0).fault
        assert fault == f"{words} (n1)"
        assert all(c.closed for c in conns[:-1]), "a faulty session's connection was kept"
    text = await asyncio.to_thread(console_log.read_text)
    assert text.count("Traceback (most recent call last)") == 1, text
    assert "in frame_handling_with_a_bug" in text and "KeyError: 'gpu9'" in text
    assert (
        f"ERROR gpufleet.console.sources.ssh.link: node=n1 {words} (reconnecting with backoff)"
        in text
    )
    assert "traceback as logged first for node=n1" in text, "a retry's fault not logged"
    assert "unreachable" not in text
    assert "INFO gpufleet.console.sources.ssh.link: node=n1 SSH connected to " in text
    assert "node=n1 SSH connected again to " in text


class _Pauses:
    """``asyncio`` as the link sees it, but for ``sleep``: each pause it asks for is noted
    and not waited, so the backoff is read exactly instead of timed."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.asked.append(delay)
        await asyncio.sleep(0)


async def test_a_session_ending_in_a_fault_does_not_reset_the_backoff(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every session reaches the agent and meets the same bug: were that a session that
    worked, the link would reconnect every second, for ever; it backs off instead, to
    ``backoff_max``."""

    async def connect(host: str, **kw: object) -> _AgentConn:
        return _AgentConn()

    def frame_handling_with_a_bug(node: str, frame: object, now: float) -> None:
        raise AttributeError("'NoneType' object has no attribute 'gpus'")

    pauses = _Pauses()
    monkeypatch.setattr(asyncssh, "connect", connect)
    monkeypatch.setattr(link, "asyncio", pauses)
    monkeypatch.setattr(random, "uniform", lambda low, high: 1.0)  # no jitter
    options = LinkOptions(
        known_hosts=tmp_path / "kh", ssh_config=[], backoff_initial=1.0, backoff_max=8.0
    )
    links = FleetLinks(NODE, options)
    monkeypatch.setattr(links.fleet, "apply", frame_handling_with_a_bug)
    async with links:
        await until(lambda: len(pauses.asked) >= 6, "six tries")
        assert links.links["n1"].sessions >= 6, "each session reached the agent"
    assert pauses.asked[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_a_bug_in_the_links_own_loop_stops_it_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, console_log: Path
) -> None:
    """Reporting a failure itself raising (a bug in classify): the link cannot go on safely,
    so it ends, and the node says so, with the traceback in the log; its task ends without an
    exception left for nobody to read."""

    async def connect(host: str, **kw: object) -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    def classify_with_a_bug(*args: object, **kw: object) -> LinkFailure:
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(asyncssh, "connect", connect)
    monkeypatch.setattr(link, "classify", classify_with_a_bug)
    links = _links(tmp_path)
    view = links.fleet.nodes["n1"]
    async with links:
        task = links._tasks[0]
        await until(task.done, "the link to stop")
        assert task.exception() is None
        assert view.link == "fault"
        assert view.link_reason == (
            "internal error: TypeError: 'NoneType' object is not subscriptable, see the log at "
            f"{console_log}; the link stopped (restart the console to reconnect it)"
        )
    text = await asyncio.to_thread(console_log.read_text)
    assert "in classify_with_a_bug" in text and "(the link stopped)" in text


@pytest.mark.parametrize(
    ("exc", "state"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (socket.gaierror(-2, "Name or service not known"), "unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (EOFError(), "unreachable"),
        (asyncssh.ConnectionLost("Connection lost"), "unreachable"),
        (asyncssh.PermissionDenied("denied"), "auth_failed"),
        (asyncssh.ChannelOpenError(2, "open failed"), "agent_down"),
        (asyncssh.KeyImportError("Invalid private key"), "unreachable"),
        (ProtocolError("version", "protocol 9.0 is not 1.x"), "protocol_mismatch"),
        (ProtocolError("malformed", "malformed frame"), "agent_down"),
        (LinkFailure("agent_down", "the agent closed the stream"), "agent_down"),
        (KeyError("gpu9"), "fault"),
        (TypeError("unsupported operand"), "fault"),
        (AttributeError("'NoneType' object has no attribute 'gpus'"), "fault"),
        (ValueError("not enough values to unpack"), "fault"),
        (AssertionError(), "fault"),
    ],
)
def test_the_fleets_failures_keep_their_states_and_our_bugs_are_faults(
    exc: BaseException, state: str
) -> None:
    """Network, SSH, the operator's keys and the agent's protocol: as they always were;
    anything else is ours, said as such."""
    failure = classify(exc, NODE[0])
    assert failure.state == state
    if state == "fault":
        assert failure.reason.startswith(f"internal error: {type(exc).__name__}")
        assert "see the log" in failure.reason


async def test_a_node_down_is_logged_at_info_once_and_then_at_debug(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that refuses connections is routine (the screen shows it, it mends itself):
    INFO the first time, DEBUG on every retry after, never WARNING; each line names the
    node, in the message and on the record."""
    tries = 0

    async def connect(host: str, **kw: object) -> None:
        nonlocal tries
        tries += 1
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(asyncssh, "connect", connect)
    caplog.set_level(logging.DEBUG, "gpufleet.console.sources.ssh.link")
    async with _links(tmp_path):
        await until(lambda: tries >= 4, "a few retries")
    said = [r for r in caplog.records if "unreachable: connection refused" in r.getMessage()]
    assert len(said) >= 3
    assert [r.levelno for r in said[:3]] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    assert all(r.getMessage().startswith("node=n1 ") and r.__dict__["node"] == "n1" for r in said)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_refused_login_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What only an operator can mend (a login refused) is logged at WARNING, once."""
    tries = 0

    async def connect(host: str, **kw: object) -> None:
        nonlocal tries
        tries += 1
        raise asyncssh.PermissionDenied("Permission denied")

    monkeypatch.setattr(asyncssh, "connect", connect)
    caplog.set_level(logging.DEBUG, "gpufleet.console.sources.ssh.link")
    async with _links(tmp_path):
        await until(lambda: tries >= 3, "a few retries")
    said = [r for r in caplog.records if "auth_failed" in r.getMessage()]
    assert [r.levelno for r in said[:2]] == [logging.WARNING, logging.DEBUG]
