"""sd_notify over a real AF_UNIX datagram socket, as systemd provides it; a no-op without one."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.serve.sdnotify import Notifier


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a filesystem path, and the NOTIFY_SOCKET value for it."""
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in the abstract namespace, written "@name" as systemd does."""
    name = f"gpufleet-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    yield sock, "@" + name
    sock.close()


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_status_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    assert n.enabled
    try:
        n.ready("serving 8 GPUs")
        assert recv(sock) == ["READY=1", "STATUS=serving 8 GPUs"]
        n.watchdog()
        assert recv(sock) == ["WATCHDOG=1"]
        n.status("reloading")
        assert recv(sock) == ["STATUS=reloading"]
        n.stopping()
        assert recv(sock) == ["STOPPING=1"]
    finally:
        n.close()


def test_abstract_socket(abstract_listener: tuple[socket.socket, str]) -> None:
    sock, addr = abstract_listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    assert n.enabled
    try:
        n.ready("up")
        assert recv(sock) == ["READY=1", "STATUS=up"]
        n.watchdog()
        assert recv(sock) == ["WATCHDOG=1"]
        n.stopping()
        assert recv(sock) == ["STOPPING=1"]
    finally:
        n.close()


def test_reads_os_environ_by_default(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, addr = listener
    monkeypatch.setenv("NOTIFY_SOCKET", addr)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    try:
        assert n.watchdog_interval == 2.0
        n.watchdog()
        assert recv(sock) == ["WATCHDOG=1"]
    finally:
        n.close()


def test_close_then_notify_reopens(listener: tuple[socket.socket, str]) -> None:
    sock, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    n.watchdog()
    n.close()
    n.close()  # twice is fine
    n.stopping()
    assert recv(sock) == ["WATCHDOG=1"]
    assert recv(sock) == ["STOPPING=1"]
    n.close()


def test_socket_gone_is_not_an_error(short_tmp: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(short_tmp / "gone")})
    try:
        n.ready("x")  # systemd went away: carry on
        n.watchdog()
    finally:
        n.close()


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("30000000", 15.0), ("2000000", 1.0), ("1", 0.5e-6), ("0", None), ("", None), ("abc", None)],
)
def test_watchdog_interval_is_half_the_timeout(usec: str, expected: float | None) -> None:
    n = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": usec})
    assert n.watchdog_interval == expected


def test_watchdog_interval_for_our_pid() -> None:
    env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 5.0


def test_watchdog_interval_none_when_watchdog_is_for_another_process() -> None:
    other = os.getppid() if os.getppid() != os.getpid() else os.getpid() + 1
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(other)}
    assert Notifier(env).watchdog_interval is None


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier({}), Notifier({"NOTIFY_SOCKET": ""}), Notifier()):
        assert not n.enabled
        n.ready("x")
        n.watchdog()
        n.status("y")
        n.stopping()
        n.notify("A=1")
        n.close()
