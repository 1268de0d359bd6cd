"""The agent's memory across clients and restarts: a client that leaves, and a stopped agent
in a process that hosts others (the demo fleet, the soak's node hosts), must be freed by
reference counting alone. What they hold is mostly bytes (the encoded history, up to 4 MB at
8 GPUs), which the cyclic collector's thresholds do not count, so left to that collector it
stayed until a rare full collection: the soak's node hosts grew 265 to 420 MB/h.

The agents are the real daemon on simulated GPUs, in this process (the assertions are about
its objects), behind their real unix sockets.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import types
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.protocol import (
    PROTOCOL_VERSION,
    FrameSplitter,
    Hello,
    Request,
    Sample,
    decode,
    encode,
)
from agents.serve.daemon import Agent
from agents.serve.server import ClientConn
from console.demo import demo_fleet
from tests.conftest import until
from tests.integration.inproc import running_agent

pytestmark = pytest.mark.integration

INTERVAL = 0.05
HISTORY = 1.0  # 20 samples: the ring turns over in a second


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    """Only reference counting frees anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture
async def agent(short_tmp: Path) -> AsyncIterator[Agent]:
    async with running_agent(short_tmp, interval=INTERVAL, history=HISTORY) as running:
        yield running.agent


class Viewer:
    """A console's side of the socket: hello, then frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.splitter = FrameSplitter()
        self.pending: list[bytes | None] = []

    @classmethod
    async def connect(cls, agent: Agent) -> Viewer:
        reader, writer = await asyncio.open_unix_connection(str(agent.server.path))
        writer.write(encode(Hello(proto=PROTOCOL_VERSION, software="test", peer="console")))
        return cls(reader, writer)

    async def until_live(self) -> None:
        """Read the hello, the inventory and the replay, up to the first live sample."""
        while True:
            while not self.pending:
                data = await asyncio.wait_for(self.reader.read(65536), 30)
                assert data, "the agent closed the stream"
                self.pending.extend(self.splitter.feed(data))
            line = self.pending.pop(0)
            assert line is not None
            frame = decode(line)
            if isinstance(frame, Sample) and not frame.replay:
                return

    async def leave(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def stop_reading(self) -> None:
        """Shut our reading side: the agent's next write fails (EPIPE) while its reads still
        see no end of stream, the order a loaded machine can give a client that leaves."""
        sock: socket.socket = self.writer.get_extra_info("socket")
        sock.shutdown(socket.SHUT_RD)


def only_client(agent: Agent) -> weakref.ref[ClientConn]:
    (client,) = agent.server._clients
    return weakref.ref(client)


async def test_a_client_that_leaves_is_freed_without_the_cyclic_collector(
    agent: Agent, no_cyclic_collector: None
) -> None:
    """The agent cancels a leaving client's writer, and the cancelled task keeps its
    CancelledError, whose traceback holds the writer's frame: the client must not hold the
    task too. Once a streaming client and once one that left before reading anything."""
    viewer = await Viewer.connect(agent)
    await viewer.until_live()
    streaming = only_client(agent)
    await viewer.leave()
    await until(lambda: not agent.server._clients, "the agent noticing the client left")
    await until(lambda: streaming() is None, "the client that left freed", 10)

    silent = await Viewer.connect(agent)
    await until(lambda: len(agent.server._clients) == 1, "the second client connected")
    early = only_client(agent)
    await silent.leave()
    await until(lambda: early() is None, "the client that left before reading freed", 10)


async def test_a_client_cut_by_a_failed_write_is_freed_without_the_cyclic_collector(
    agent: Agent, no_cyclic_collector: None
) -> None:
    """A write to a peer that has gone fails inside the transport, which keeps the error for
    the reader and for the writer's next drain; its traceback holds the frames that wrote and
    read, and so the client. Failed once in CI as a client that left before reading."""
    viewer = await Viewer.connect(agent)
    await viewer.until_live()
    cut = only_client(agent)
    viewer.stop_reading()
    await until(lambda: not agent.server._clients, "the agent's write failing")
    await viewer.leave()
    await until(lambda: cut() is None, "the client cut by a failed write freed", 10)
    # The transport keeps the error and its frames, and those frames' callers held the batch
    # that failed to go (up to a whole outbox): cleared, though the frames themselves stay.
    holding = [
        f
        for f in gc.get_objects()
        if isinstance(f, types.FrameType)
        and f.f_code.co_name in ("write", "writelines")
        and f.f_locals
    ]
    assert not holding, [(f.f_code.co_filename, f.f_code.co_name) for f in holding]


async def test_a_client_keeps_nothing_of_the_history_it_was_sent(agent: Agent) -> None:
    """A console stays connected for days: once its replay is written, a sample that leaves
    the ring must be freed, not kept for it by the snapshot it was sent from."""
    oldest = agent.sampler.replay[0]
    viewer = await Viewer.connect(agent)
    try:
        await viewer.until_live()  # the replay, ``oldest`` first, has been written
        await until(
            lambda: all(frame is not oldest for frame in agent.sampler.replay),
            "the ring moving past the oldest sample sent",
        )
        assert sys.getrefcount(oldest) == 2, "something still holds a sample the ring let go"
    finally:
        await viewer.leave()


async def test_an_agent_restarted_in_a_demo_fleet_leaves_nothing_of_its_buffers(
    no_cyclic_collector: None,
) -> None:
    """A stopped agent is cyclic garbage (its handler, server and scheduler call back into
    it); its buffered history must be released once another agent takes its place."""
    async with demo_fleet(1, 8) as fleet:
        name = fleet.names[0]
        await until(lambda: fleet.agents[name].sampler.latest is not None, "a first sample")
        before = fleet.agents[name]
        newest = before.sampler.replay[-1]
        await fleet.stop_agent(name)
        assert newest in before.sampler.replay, "read after the stop, as the soak reads it"
        await fleet.start_agent(name, seed=0)
        assert fleet.agents[name] is not before
        del before
        assert sys.getrefcount(newest) == 2, "the stopped agent's history is still held"


async def test_a_client_that_never_reads_is_paced_by_its_replies(agent: Agent) -> None:
    """A client that pipelines requests and reads nothing back: the agent's writes to it stop
    at the transport's high-water mark, its replies collect in its outbox, and at half that
    queue the agent stops reading from it (``Outbox.room``), so the rest of the flood waits
    in the client's own socket. On Python 3.12 and 3.13 up to 3.12.8 and 3.13.1 the
    transport's ``writelines`` never paused the writer (CPython gh-127655): every reply went
    into the transport's buffer at once, the outbox never filled, and the agent read all of
    it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, str(agent.server.path))
    n = 20_000  # 1.2 MB of requests, 0.8 MB of replies: far past every buffer on the way
    hello = Hello(proto=PROTOCOL_VERSION, software="test", peer="console", stream=False)
    flood = encode(hello) + b"".join(encode(Request(id=i, op="ping")) for i in range(n))
    sending = asyncio.create_task(loop.sock_sendall(sock, flood))
    try:
        await until(lambda: agent.server._clients, "the agent taking the client")
        (client,) = agent.server._clients
        c = agent.config.clients
        await until(
            lambda: len(client.outbox) > c.max_queued_other // 2 or sending.done(),
            "the agent holding back a client that reads nothing",
        )
        transport = client.writer.transport
        buffered = transport.get_write_buffer_size()
        assert not sending.done(), (
            f"the agent read all {n} requests; {len(client.outbox)} replies queued, "
            f"{buffered} bytes in its transport's buffer"
        )
        # What the transport holds: up to its high-water mark, and the batch that crossed it
        # (at most what the outbox may hold).
        assert buffered <= transport.get_write_buffer_limits()[1] + c.max_queued_bytes
    finally:
        sending.cancel()
        sock.close()
