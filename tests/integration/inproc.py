"""The real agent daemon on simulated GPUs run in the test's own process and event loop,
behind its real unix socket: for tests whose assertions are about the agent's own objects
(what it frees, what it queues) rather than what a separate process says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agents.config import AgentConfig, AgentSection, ClientsSection
from agents.gpu.sim import SimBackend
from agents.serve.daemon import Agent
from tests.conftest import until


@dataclass
class Running:
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_agent(
    root: Path, *, interval: float, history: float, clients: ClientsSection | None = None
) -> AsyncIterator[Running]:
    """An agent serving on ``root``/agent.sock with its ring already full, as if it had been
    up for a while (filled by recording readings at once, not by waiting for ticks)."""
    config = AgentConfig(
        agent=AgentSection(
            node_name="n1",
            socket=str(root / "agent.sock"),
            state_dir=str(root / "state"),
            backend="sim",
            interval=interval,
            history=history,
        ),
        clients=clients or ClientsSection(),
    )
    agent = Agent(config, SimBackend(8, seed=1, node="n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await until(lambda: agent.serving.is_set() or task.done(), "the agent serving")
    sampler = agent.sampler
    while len(sampler.replay) < (sampler.replay.maxlen or 0):
        sampler.record(sampler.read())
    try:
        yield Running(agent, stop, task)
    finally:
        stop.set()
        await task
