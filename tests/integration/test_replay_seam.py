"""A client's history and its live stream join with no sample missing, however slowly it reads
the history, and however its session ends. The soak lost one sample of one agent run at such a
seam (demo36, seq 1579), reproduced in a probe (a 25-node node host stalled every 20 s): a
console cut off by a stall reconnects while the agent has just sent the newest sample on the
dead session; the agent is stopped (restarted) while the new session's history is still being
written, and flushed the live samples queued meanwhile after the part of the history sent, so
the console read history to 867, then 1045: 1044, never seen live, looked delivered-past.
Besides, past ``max_queued_samples`` the oldest live sample queued behind a slow history, the
one that joins the two, was dropped.

The real daemon on simulated GPUs, in this process (so that its ring can be filled at once, as
if it had been up for a while), behind its real unix socket; the client a raw stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.config import ClientsSection
from agents.protocol import PROTOCOL_VERSION, FrameSplitter, Hello, Sample, decode, encode
from agents.serve.daemon import Agent
from tests.conftest import until
from tests.integration.inproc import Running, running_agent

pytestmark = pytest.mark.integration

INTERVAL = 0.05
#: 900 samples of 8 GPUs, about 4 MB: far more than a socket buffers, so the agent's writer
#: waits on the client while the live samples queue.
HISTORY = 45.0
QUEUED = 2  # live samples a client may have queued before the oldest is dropped


@pytest.fixture
async def running(short_tmp: Path) -> AsyncIterator[Running]:
    clients = ClientsSection(max_queued_samples=QUEUED)
    async with running_agent(short_tmp, interval=INTERVAL, history=HISTORY, clients=clients) as r:
        yield r


@pytest.fixture
def agent(running: Running) -> Agent:
    return running.agent


def newest(agent: Agent) -> int:
    latest = agent.sampler.latest
    assert latest is not None
    return latest.seq


async def connect_and_wait(agent: Agent) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A console that asks for the history and does not read it while the agent samples on:
    the history waits in the socket, the live samples in the client's queue."""
    reader, writer = await asyncio.open_unix_connection(str(agent.server.path))
    writer.write(encode(Hello(proto=PROTOCOL_VERSION, software="test", peer="console")))
    await until(lambda: agent.server._clients, "the client connected")
    began = newest(agent)
    await until(lambda: newest(agent) >= began + 3 * QUEUED, "samples made meanwhile")
    return reader, writer


async def test_a_history_cut_off_is_not_followed_by_live_samples(running: Running) -> None:
    """The agent stops (a restart) while a console is still reading its history: it gets the
    part written and the reason, no live sample after it."""
    reader, writer = await connect_and_wait(running.agent)
    try:
        running.stop.set()
        stopped = asyncio.ensure_future(running.task)
        data = bytearray()
        while chunk := await reader.read(1 << 16):
            data += chunk
        await stopped
        frames = [decode(line) for line in FrameSplitter().feed(bytes(data)) if line is not None]
        samples = [f for f in frames if isinstance(f, Sample)]
        replayed = [s.seq for s in samples if s.replay]
        live = [s.seq for s in samples if not s.replay]
        assert replayed, "the part of the history written before the stop"
        assert replayed == list(range(replayed[0], replayed[-1] + 1))
        assert replayed[-1] < newest(running.agent) - 1, "the history was cut off"
        assert live == [], f"history to {replayed[-1]}, then live samples {live}"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_live_samples_queued_behind_a_slow_history_are_all_sent(agent: Agent) -> None:
    reader, writer = await connect_and_wait(agent)
    try:
        splitter = FrameSplitter()
        last_replayed = None
        while True:
            data = await asyncio.wait_for(reader.read(1 << 16), 30)
            assert data, "the agent closed the stream"
            lines = splitter.feed(data)
            frames = [decode(line) for line in lines if line is not None]
            samples = [f for f in frames if isinstance(f, Sample)]
            live = [s for s in samples if not s.replay]
            replayed = [s for s in samples if s.replay]
            if replayed:
                last_replayed = replayed[-1].seq
            if live:
                assert last_replayed is not None
                assert live[0].seq == last_replayed + 1, (
                    f"the history ended at {last_replayed}, the live stream began at {live[0].seq}"
                )
                return
    finally:
        writer.close()
        await writer.wait_closed()
