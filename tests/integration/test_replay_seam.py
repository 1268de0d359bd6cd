"""A client's history and its live stream join with no sample missing, however slowly it reads
the history. The soak lost one sample of one agent run at such a seam (demo36, seq 1579): a
client's live samples queue while its history is written, and past ``max_queued_samples`` the
oldest of them, the one that joins the two, was dropped, which no reader can tell from the end
of the history.

The real daemon on simulated GPUs, in this process (so that its ring can be filled at once, as
if it had been up for a while), behind its real unix socket; the client a raw stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.config import AgentConfig, AgentSection, ClientsSection
from agents.daemon import Agent
from agents.gpu.sim import SimBackend
from agents.protocol import PROTOCOL_VERSION, FrameSplitter, Hello, Sample, decode, encode
from tests.conftest import until

pytestmark = pytest.mark.integration

INTERVAL = 0.05
#: 900 samples of 8 GPUs, about 4 MB: far more than a socket buffers, so the agent's writer
#: waits on the client while the live samples queue.
HISTORY = 45.0
QUEUED = 2  # live samples a client may have queued before the oldest is dropped


@pytest.fixture
async def agent(short_tmp: Path) -> AsyncIterator[Agent]:
    config = AgentConfig(
        agent=AgentSection(
            node_name="n1",
            socket=str(short_tmp / "agent.sock"),
            state_dir=str(short_tmp / "state"),
            backend="sim",
            interval=INTERVAL,
            history=HISTORY,
        ),
        clients=ClientsSection(max_queued_samples=QUEUED),
    )
    agent = Agent(config, SimBackend(8, seed=1, node="n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await until(lambda: agent.serving.is_set() or task.done(), "the agent serving")
    sampler = agent.sampler
    while len(sampler.replay) < (sampler.replay.maxlen or 0):  # up for a while: a full ring
        sampler.record(sampler.read())
    try:
        yield agent
    finally:
        stop.set()
        await task


def newest(agent: Agent) -> int:
    latest = agent.sampler.latest
    assert latest is not None
    return latest.seq


async def test_live_samples_queued_behind_a_slow_history_are_all_sent(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent.server.path))
    try:
        writer.write(encode(Hello(proto=PROTOCOL_VERSION, software="test", peer="console")))
        await until(lambda: agent.server._clients, "the client connected")
        began = newest(agent)
        # Not reading: the history waits in the socket while the agent samples on.
        await until(lambda: newest(agent) >= began + 3 * QUEUED, "samples made meanwhile")
        splitter = FrameSplitter()
        last_replayed = None
        while True:
            data = await reader.read(1 << 16)
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
