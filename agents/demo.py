"""``gpufleet-agent demo``: a real agent on simulated H100s, and a client printing its stream.

Everything lives in a private temporary directory (socket, state, audit log), so it needs no
root and leaves nothing behind. Faults are injected now and then through the same request
path an operator's console uses, so the events show up in the stream as they would for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import threading
import time
from pathlib import Path

import click

from agents.config import AgentConfig, AgentSection, SimSection
from agents.gpu.sim import SimBackend
from agents.protocol import GpufleetError, Inventory, Said, result_as
from agents.render import frame_line
from agents.serve.client import AgentClient, ConnectionClosed
from agents.serve.daemon import Agent

FAULTS = ("overheat", "xid79", "ecc", "lost", "busy", "clear")


def run_demo(*, gpus: int, seed: int, seconds: float | None, fault_every: float) -> None:
    with tempfile.TemporaryDirectory(prefix="gpufleet-demo-") as tmp:
        cfg = AgentConfig(
            agent=AgentSection(
                node_name="demo-node",
                socket=str(Path(tmp) / "agent.sock"),
                state_dir=str(Path(tmp) / "state"),
                backend="sim",
            ),
            sim=SimSection(gpus=gpus, seed=seed),
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_main(cfg, seconds, fault_every, seed))


async def _main(cfg: AgentConfig, seconds: float | None, fault_every: float, seed: int) -> None:
    backend = SimBackend(cfg.sim.gpus, seed=cfg.sim.seed, node="demo-node")
    agent = Agent(cfg, backend)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    serving = asyncio.create_task(agent.serving.wait())
    await asyncio.wait({task, serving}, return_when=asyncio.FIRST_COMPLETED)
    serving.cancel()
    if task.done():  # it failed before serving: raise its error (one line, from the CLI)
        await task
        return
    click.echo(f"agent serving {cfg.sim.gpus} simulated H100s on {cfg.agent.socket}; Ctrl-C stops")
    done = threading.Event()
    printer = threading.Thread(
        target=_print_stream, args=(cfg.agent.socket, fault_every, seed, done), daemon=True
    )
    printer.start()
    try:
        deadline = None if seconds is None else time.monotonic() + seconds
        while not task.done() and not done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


def _print_stream(path: str, fault_every: float, seed: int, done: threading.Event) -> None:
    rng = random.Random(seed)  # noqa: S311  (simulation, not security)
    injector = AgentClient(path, stream=False)
    next_fault = time.monotonic() + fault_every
    gpus = 0
    try:
        with AgentClient(path, history=False) as client:
            click.echo(frame_line(client.hello))
            for frame in client.frames():
                click.echo(frame_line(frame))
                if isinstance(frame, Inventory):
                    gpus = len(frame.gpus)
                if gpus and fault_every > 0 and time.monotonic() >= next_fault:
                    next_fault += fault_every
                    fault, gpu = rng.choice(FAULTS), rng.randrange(gpus)
                    reply = injector.request("sim_inject", fault=fault, gpu=gpu)
                    said = result_as(reply, Said).message if reply.ok else reply.error
                    click.echo(f"demo     injected {fault} on GPU {gpu}: {said}")
    except ConnectionClosed:
        pass
    except BrokenPipeError:  # `demo | head`: the reader left
        pass
    except GpufleetError as exc:  # this runs on a thread: report here, in one line
        click.echo(f"gpufleet-agent: error: {exc}", err=True)
    finally:
        injector.close()
        done.set()
