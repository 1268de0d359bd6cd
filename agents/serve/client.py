"""A small blocking client of the agent's socket, for the agent's own commands and for tests.

The console has its own asyncio client over SSH; this one serves ``watch``, ``request`` and
``demo`` on the node itself, where a plain socket is all there is.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal

from agents import __version__
from agents.protocol import (
    Error,
    Frame,
    FrameSplitter,
    GpufleetError,
    Hello,
    ProtocolError,
    Request,
    Response,
    decode,
    encode,
    our_hello,
    read_hello,
)


class AgentUnreachable(GpufleetError):
    """No agent answers at the socket; the message says what to check."""


class AgentTimeout(GpufleetError):
    """The agent did not answer in time: it is stalled, or the socket is someone else's."""


class ConnectionClosed(GpufleetError):
    """The agent closed the connection; ``error`` is its last word, if it said one."""

    def __init__(self, message: str, error: Error | None = None) -> None:
        super().__init__(message)
        self.error = error


def connect_unix(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise AgentUnreachable(f"no agent at {path} (is gpufleet-agent running?)") from None
        if exc.errno == errno.EACCES:
            raise AgentUnreachable(
                f"permission denied on {path}: join the socket's group (ls -l {path})"
            ) from None
        raise AgentUnreachable(f"cannot connect to {path}: {exc.strerror}") from None
    return sock


class AgentClient:
    def __init__(
        self,
        path: str,
        *,
        history: bool = True,
        stream: bool = True,
        peer: Literal["console", "tool"] = "tool",
        timeout: float = 10.0,
        read_timeout: float | None = 30.0,
    ) -> None:
        """``timeout`` bounds connecting and the handshake; ``read_timeout`` each later wait
        for a frame (None: wait as long as it takes, as ``watch`` does)."""
        self.sock = connect_unix(path, timeout)
        self._splitter = FrameSplitter()
        self._lines: deque[bytes | None] = deque()
        self._ids = itertools.count(1)
        try:
            self.hello: Hello = read_hello(self.recv(), "the agent").hello
            software = f"gpufleet-agent-client {__version__}"
            hello = our_hello(peer, software, history=history, stream=stream)
            try:
                self.send(hello)
            except ConnectionClosed:
                # The agent said hello and hung up (too many clients, say): its reason is the
                # next frame, which recv() raises as ConnectionClosed.
                self.recv()
                raise ConnectionClosed("the agent closed the connection") from None
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(read_timeout)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, frame: Frame) -> None:
        try:
            self.sock.sendall(encode(frame))
        except TimeoutError:
            raise AgentTimeout("the agent is not reading its socket") from None
        except (BrokenPipeError, ConnectionResetError):
            raise ConnectionClosed("the agent closed the connection") from None

    def recv(self) -> Frame:
        """The next frame; ConnectionClosed at EOF or reset, AgentTimeout past the timeout."""
        while not self._lines:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                waited = self.sock.gettimeout()
                raise AgentTimeout(f"no word from the agent in {waited:g} s") from None
            except ConnectionResetError:
                raise ConnectionClosed("the agent reset the connection") from None
            if not data:
                raise ConnectionClosed("the agent closed the connection")
            self._lines.extend(self._splitter.feed(data))
        line = self._lines.popleft()
        if line is None:
            raise ProtocolError("too_large", "the agent sent a frame over the size limit")
        frame = decode(line)
        if isinstance(frame, Error) and frame.fatal:
            raise ConnectionClosed(f"agent: {frame.message} ({frame.code})", frame)
        return frame

    def frames(self) -> Iterator[Frame]:
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                return

    def request(self, op: str, **args: Any) -> Response:
        """Send a request and wait for its response; frames in between are skipped."""
        rid = next(self._ids)
        self.send(Request(id=rid, op=op, args=args))
        while True:
            frame = self.recv()
            if isinstance(frame, Response) and frame.id == rid:
                return frame
