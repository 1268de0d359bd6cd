"""The agent's unix socket: any number of clients, none able to slow the others.

Each client has a reader task (its requests, handled in order) and a writer task (frames from
its own ``Outbox``). Publishing a sample appends the already-encoded bytes to every outbox and
returns; nothing on the sampling path ever waits for a client. A client whose outbox overflows
is told why and disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import logging
import os
import socket
import stat
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import __version__
from agents.config import AgentConfig, socket_mode
from agents.ops.requests import Caller, RequestHandler
from agents.protocol import (
    MAX_BAD_FRAMES,
    NO_HELLO,
    Error,
    Event,
    Frame,
    FrameSplitter,
    GpufleetError,
    Hello,
    Inventory,
    ProtocolError,
    Request,
    Response,
    Sample,
    decode,
    encode,
    fatal_error,
    is_mismatch,
    our_hello,
    read_hello,
)
from agents.serve.identity import Peer, peer_of, role_of
from agents.serve.outbox import Outbox

log = logging.getLogger(f"gpufleet.{__name__}")

CLOSE_GRACE = 5.0  # seconds a closing client has to read its last frame
REFUSAL_LOG_INTERVAL = 10.0  # seconds between summaries of refused connections, per user


#: Frames that may be suspended rather than finished or running: never cleared here, since
#: clearing a suspended one would close its coroutine.
_SUSPENDABLE = (
    inspect.CO_COROUTINE
    | inspect.CO_GENERATOR
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


def _forget_frames(exc: BaseException | None) -> None:
    """Let go of what a connection error's frames hold. The transport keeps the error it met
    for the reader, the writer's next drain and its closed future (which keeps the traceback
    apart, so dropping ``__traceback__`` does not free it), in a cycle with the transport.
    Those frames lead back through their callers (``f_back``) to the frame that wrote or
    read; so no such frame holds a client (the writer task holds it by a weak reference), and
    here the finished frames are cleared: those in the traceback, and their callers up to the
    first coroutine's (the bytes that failed to go: a whole outbox, or a history). What is
    left is a small cycle of the transport's objects, which the collector's counts do see.

    Call it in the frame that caught the error, with no await between: every other frame of
    the traceback has finished then, and the one running is skipped."""
    if exc is None:
        return
    tb = exc.__traceback__
    traceback.clear_frames(tb)
    deepest = None
    while tb is not None:
        deepest, tb = tb.tb_frame, tb.tb_next
    caller = deepest.f_back if deepest is not None else None
    while caller is not None and not caller.f_code.co_flags & _SUSPENDABLE:
        try:
            caller.clear()
        except RuntimeError:  # still running, and so are its callers
            break
        caller = caller.f_back
    exc.__traceback__ = None


class SocketError(GpufleetError):
    """The socket cannot be bound; the message names the path and the remedy."""


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_parent(parent: Path) -> None:
    """The socket's directory must be ours alone to write: anyone else who can write there
    could swap the socket for a link between bind and chmod, or squat its name."""
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        st = parent.stat()
    except OSError as exc:
        raise SocketError(f"cannot create {parent}: {_os_reason(exc)}") from None
    if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
        raise SocketError(
            f"{parent} can be written by other users; put the socket in a directory only this "
            "user can write (the systemd unit uses /run/gpufleet)"
        )


def bind_socket(path: Path, mode: int, group: str | None) -> socket.socket:
    """A listening socket at ``path`` that only its owner and ``group`` can connect to.

    The mode is set through the umask at bind time, so there is no moment at which the socket
    exists with looser permissions; a stale socket from a crashed agent is replaced, a live one
    or a non-socket file at the path is an error.
    """
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SocketError(
                f"socket group {group!r} does not exist (agent.socket_group)"
            ) from None
    _check_parent(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"{path} exists and is not a socket; not replacing it")
        if _socket_in_use(path):
            raise SocketError(f"another agent is already serving on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        if gid >= 0:
            os.chown(path, -1, gid, follow_symlinks=False)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot bind {path}: {_os_reason(exc)}") from None
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    return sock


@dataclass
class _Refusals:
    """Refusals of one (reason, uid) since its first was logged in full."""

    since: float
    user: str
    count: int = 0


class RefusalLog:
    """Logs refused connections without letting a flood of them flood the log.

    One user opening a thousand connections past their limit would otherwise write a thousand
    warnings in under a second (and a log that big is a way to fill the disk). The first
    refusal per (reason, uid) is logged in full; further ones are counted, and once per
    ``interval`` one line says how many there were. A quiet interval ends the run, so the
    next refusal is logged in full again. ``flush(final=True)`` says what is still counted,
    so no refusal is missing from the log's totals when the agent stops.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._runs: dict[tuple[str, int], _Refusals] = {}

    def refused(self, peer: Peer, reason: str) -> None:
        key = (reason, peer.uid)
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Refusals(since=self._clock(), user=peer.user)
            self._log.warning(
                "client %s pid=%s refused: %s (further refusals of it summarised every %g s)",
                peer,
                peer.pid,
                reason,
                self.interval,
            )
        else:
            run.count += 1

    def flush(self, final: bool = False) -> float | None:
        """Summarise every run whose interval is over (every run, if ``final``); a run with
        nothing new in its interval is closed. Returns the seconds until the next run is due,
        or None when no run is open."""
        now = self._clock()
        for key, run in list(self._runs.items()):
            if not final and now - run.since < self.interval:
                continue
            reason, uid = key
            if run.count:
                self._log.warning(
                    "refused %d more connections from uid %d (%s) in the last %.0f s: %s",
                    run.count,
                    uid,
                    run.user,
                    now - run.since,
                    reason,
                )
            if run.count and not final:
                self._runs[key] = _Refusals(since=now, user=run.user)
            else:
                del self._runs[key]
        if not self._runs:
            return None
        return max(0.0, min(run.since for run in self._runs.values()) + self.interval - now)


@dataclass(eq=False)
class ClientConn:
    """One connected client: who it is, what it asked for, and its queue."""

    peer: Peer
    caller: Caller
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    outbox: Outbox
    wants_stream: bool = False
    closing: bool = False
    writer_task: asyncio.Task[None] | None = None
    greeted: bool = False
    #: What is left to write of the inventory, history and events it was sent at subscribing.
    history: deque[bytes] = field(default_factory=deque)
    bad_frames: int = 0  # consecutive
    refusals: int = 0  # requests refused for role, in all

    def __str__(self) -> str:
        return f"client {self.peer} pid={self.peer.pid}"

    def is_closing(self) -> bool:
        return self.closing


class AgentServer:
    def __init__(
        self,
        *,
        config: AgentConfig,
        node: str,
        inventory: Callable[[], Inventory],
        history: Callable[[bool], Iterable[bytes]],
        handler: RequestHandler,
        interval: float,
    ) -> None:
        self._config = config
        self._node = node
        self._inventory = inventory
        self._history = history
        self._handler = handler
        self._interval = interval
        self._clients: set[ClientConn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._refusals = RefusalLog(log)
        self._refusal_timer: asyncio.TimerHandle | None = None
        self.path = Path(config.agent.socket)

    async def start(self) -> None:
        a = self._config.agent
        sock = bind_socket(self.path, socket_mode(a.socket_mode), a.socket_group)
        self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            self._disconnect(client, fatal_error("shutdown", "agent stopping"))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_GRACE + 1)
        for task in self._tasks:
            task.cancel()
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
        self._refusals.flush(final=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- publishing: never waits -----------------------------------------------------------

    def publish(self, frame: Sample | Event | Inventory) -> None:
        """Queue a frame for every streaming client; encoded once, never waits.

        Samples may be dropped for a client that is behind; events and inventories may not.
        """
        data = encode(frame)
        is_sample = isinstance(frame, Sample)
        for client in list(self._clients):
            if client.wants_stream:
                if is_sample:
                    client.outbox.put_sample(data)
                else:
                    client.outbox.put(data)
                self._check(client)

    def _check(self, client: ClientConn) -> None:
        if client.outbox.overflowed and not client.closing:
            log.warning("%s too far behind (%s): disconnecting", client, client.outbox.overflowed)
            self._disconnect(client, fatal_error("too_slow", client.outbox.overflowed))

    # -- one connection ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _admit(self, peer: Peer) -> str | None:
        """Why this peer may not connect now, or None. Root always may (someone must be able
        to get in to fix things); everyone else shares the global limit and a per-user one, so
        one group member cannot take every place."""
        if peer.uid == 0:
            return None
        c = self._config.clients
        if len(self._clients) >= c.max_clients:
            return f"too many clients ({c.max_clients})"
        mine = sum(1 for other in self._clients if other.peer.uid == peer.uid)
        if mine >= c.max_clients_per_user:
            return f"too many connections from {peer.user} ({c.max_clients_per_user})"
        return None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Greet, admit or refuse. No frame that writes to the socket may hold the client
        (see _forget_frames), so the greeting is written here, before there is one."""
        sock: socket.socket = writer.get_extra_info("socket")
        # Off the loop: with LDAP or sssd behind it, a user lookup can take a while.
        peer = await asyncio.to_thread(peer_of, sock)
        software = f"gpufleet-agent {__version__}"
        writer.write(
            encode(our_hello("agent", software, node=self._node, interval_s=self._interval))
        )
        refusal = self._admit(peer)
        if refusal is None:
            await self._session(peer, reader, writer)
            return
        self._refused(peer, refusal)
        writer.write(encode(fatal_error("busy", refusal)))
        # Half-close and read what the client sends (its hello) before closing: closing with
        # its bytes unread would reset the connection, and the client would lose the reason
        # we just gave it.
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            writer.write_eof()
            async with asyncio.timeout(CLOSE_GRACE):
                while await reader.read(65536):
                    pass
        await self._close_writer(writer, None)

    def _refused(self, peer: Peer, reason: str) -> None:
        self._refusals.refused(peer, reason)
        if self._refusal_timer is None:
            loop = asyncio.get_running_loop()
            self._refusal_timer = loop.call_later(self._refusals.interval, self._flush_refusals)

    def _flush_refusals(self) -> None:
        self._refusal_timer = None
        due = self._refusals.flush()
        if due is not None:
            loop = asyncio.get_running_loop()
            self._refusal_timer = loop.call_later(due, self._flush_refusals)

    async def _session(
        self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        c = self._config.clients
        outbox = Outbox(
            max_samples=c.max_queued_samples,
            max_other=c.max_queued_other,
            max_bytes=c.max_queued_bytes,
            max_behind=c.max_behind,
        )
        caller = Caller(peer, role_of(peer, self._config.roles))
        client = ClientConn(peer, caller, reader, writer, outbox)
        self._clients.add(client)
        log.info("%s connected as %s", client, caller.role)
        try:
            await self._serve(client)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug of ours: say so to the client and the log, keep serving
            log.exception("%s: internal error", client)
            self._disconnect(
                client, fatal_error("internal", "internal error in the agent; see its log")
            )
        finally:
            self._disconnect(client, None)
            # A read that failed re-raised the transport's error here: its traceback now
            # holds this frame and so the client.
            _forget_frames(reader.exception())
            log.info("%s disconnected", client)

    async def _serve(self, client: ClientConn) -> None:
        c = self._config.clients
        splitter = FrameSplitter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.hello_timeout
        while not client.closing:
            if not client.greeted:
                limit: float | None = deadline
            elif client.wants_stream:
                limit = None  # a streaming client may listen quietly forever
            else:
                limit = loop.time() + c.idle_timeout
            try:
                async with asyncio.timeout_at(limit):
                    data = await client.reader.read(65536)
            except TimeoutError:
                if client.greeted:
                    self._disconnect(client, fatal_error("idle", f"idle for {c.idle_timeout:g} s"))
                else:
                    self._disconnect(client, fatal_error(NO_HELLO, "no hello"))
                return
            if not data:
                return
            for line in splitter.feed(data):
                await self._on_line(client, line)
                if client.is_closing():  # a fatal frame ends the batch too
                    return

    async def _on_line(self, client: ClientConn, line: bytes | None) -> None:
        """One frame from a client. Bad frames are answered and counted; a run of them, or
        anything bad before the handshake, ends the connection."""
        try:
            if line is None:
                raise ProtocolError("too_large", "frame exceeds the maximum frame size")
            frame = decode(line)
        except ProtocolError as exc:
            client.bad_frames += 1
            if client.bad_frames >= MAX_BAD_FRAMES or not client.greeted:
                self._disconnect(client, fatal_error(exc.code, exc.message))
            else:
                client.outbox.put(encode(Error(code=exc.code, message=exc.message)))
            return
        client.bad_frames = 0
        if not client.greeted:
            self._on_hello(client, frame)
        elif isinstance(frame, Request):
            await self._on_request(client, frame)
        else:
            kind = type(frame).__name__.lower()
            message = f"a client may not send {kind} frames now; ignored"
            client.outbox.put(encode(Error(code="unexpected", message=message)))

    async def _on_request(self, client: ClientConn, request: Request) -> None:
        # Pace the client by its own reading: a client that sends and never reads fills its
        # socket, not our memory. Then yield, so a burst of requests cannot starve sampling.
        await client.outbox.room()
        if client.is_closing():
            return
        response = await self._handler.handle(client.caller, request)
        try:
            data = encode(response)
        except ProtocolError as exc:  # a result too large to send: say so instead
            data = encode(Response(id=request.id, ok=False, code="too_large", error=exc.message))
        client.outbox.put(data)
        self._check(client)
        if response.code in ("forbidden", "unknown_op"):
            client.refusals += 1
            limit = self._config.clients.max_refusals
            if client.refusals >= limit:
                self._disconnect(client, fatal_error("forbidden", f"{limit} requests refused"))
        await asyncio.sleep(0)

    def _on_hello(self, client: ClientConn, frame: Frame) -> None:
        try:
            greeting = read_hello(frame, "the client")
        except ProtocolError as exc:
            if is_mismatch(exc.code):
                log.warning("%s: %s", client, exc.message)
            self._disconnect(client, fatal_error(exc.code, exc.message))
            return
        client.greeted = True
        self._start_stream(client, greeting.hello)

    def _start_stream(self, client: ClientConn, hello: Hello) -> None:
        """Start the client's writer. Runs without awaiting, so the inventory and history
        snapshot and the live subscription join with no gap and no duplicate: whatever is
        published from here on lands in the outbox, written only after the snapshot."""
        if hello.stream:
            client.history.append(encode(self._inventory()))
            client.history.extend(self._history(hello.history))
            client.wants_stream = True
            client.outbox.hold()  # no live sample dropped before the history is out
        client.writer_task = self._spawn(
            self._write(client.writer, client.history, client.outbox, weakref.ref(client))
        )

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        first: deque[bytes],
        outbox: Outbox,
        client: weakref.ref[ClientConn],
    ) -> None:
        """Write the snapshot, then the outbox. Each snapshot frame is let go once written:
        a client connected for hours must not keep the history it was sent (up to 900
        samples, 4 MB at 8 GPUs) after the ring has moved on.

        Holds the client only by a weak reference: a write that fails leaves frames that lead
        back here in the transport's keeping (see _forget_frames).

        The outbox goes out as one ``write``, never ``writelines``: ``drain`` waits only once
        the transport has paused us, and on Python 3.12 and 3.13 up to 3.12.8 and 3.13.1
        the socket transport's own ``writelines`` buffers without ever pausing (CPython
        gh-127655, PSF-2024-14). ``drain`` would then never wait, the outbox never fill,
        ``Outbox.room`` never hold the reading back, and a client that does not read would
        pile its replies up in the transport's buffer, unbounded. A ``write`` pauses on every
        version; one join is what ``writelines`` cost on 3.11 too."""
        try:
            while first:  # paced by the client, while live frames collect in its outbox
                writer.write(first.popleft())
                await writer.drain()
            while not outbox.closed:
                writer.write(b"".join(await outbox.take()))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            _forget_frames(exc)
            self._cut(client)
        finally:
            first.clear()

    def _cut(self, client: weakref.ref[ClientConn]) -> None:
        """Disconnect a client whose writes failed, if it is still about."""
        conn = client()
        if conn is not None:
            self._disconnect(conn, None)

    def _disconnect(self, client: ClientConn, error: Error | None) -> None:
        self._clients.discard(client)  # even if already closing: never leak its place
        if client.closing:
            return
        client.closing = True
        # Cut off in the middle of its history, the client gets the responses and events
        # still queued, not the live samples: those follow the end of the history, and after
        # a part of it they would read as a stream that went on with samples missing.
        pending = client.outbox.close(samples=not client.history)
        client.history.clear()
        task, client.writer_task = client.writer_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # its frame holds the client weakly: nothing here is cyclic
        self._spawn(self._close_writer(client.writer, error, pending))

    async def _close_writer(
        self, writer: asyncio.StreamWriter, error: Error | None, pending: list[bytes] | None = None
    ) -> None:
        """Send what was still queued and why we close (when there is a why), then close; a
        client that will not read gets cut after a grace period.

        Frame by frame, and the list emptied: a write that fails keeps its frames (see
        _forget_frames), which would otherwise hold the whole batch."""
        frames = pending if pending is not None else []
        if error is not None:
            frames.append(encode(error))
        with contextlib.suppress(ConnectionError, OSError):
            for data in frames:
                if writer.is_closing():  # a write failed: the rest cannot go
                    break
                writer.write(data)
            writer.close()
        frames.clear()
        try:
            await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)
        except (TimeoutError, ConnectionError, OSError):
            writer.transport.abort()
