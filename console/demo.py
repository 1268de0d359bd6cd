"""``gpufleet demo``: a fleet of simulated nodes on this machine, reached over real SSH.

Everything a real fleet has, made up on the spot in a private temporary directory: N agents
(the agent's own daemon, on simulated H100s, one unix socket each), an SSH server (asyncssh) on
127.0.0.1 with a throwaway host key and client key, a known_hosts file that trusts that host key
alone, and an inventory naming the nodes. The console then reaches them exactly as it reaches a
real fleet: SSH, host-key check, key auth, direct-streamlocal to each agent's socket. No root, no
GPU, no configuration.

The agents are the real daemon (``agents.serve.daemon.Agent``), imported here because the demo plays
the nodes' part too; the console proper imports only the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from agents.config import AgentConfig, AgentSection
from agents.gpu.sim import DEMO_SPELLS, SimBackend
from agents.serve.daemon import Agent

#: Scripted incidents for ``--faults``: (seconds after start, node index, what).
INCIDENTS = (
    (8.0, 2, "overheat"),
    (14.0, 4, "xid79"),
    (20.0, 6, "ecc"),
    (26.0, 1, "die"),  # the node's agent goes away ...
    (46.0, 1, "revive"),  # ... and comes back
)


class DemoServer(asyncssh.SSHServer):
    """Key auth for the demo's one client key; streamlocal only to the demo's sockets (none
    for a server that only runs commands, as the fan-in benchmark's exec baseline does)."""

    def __init__(self, client_key: asyncssh.SSHKey, sockets: frozenset[str] = frozenset()) -> None:
        self._client = client_key.export_public_key()
        self._sockets = sockets

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.export_public_key() == self._client

    def unix_connection_requested(self, dest_path: str) -> bool:
        return dest_path in self._sockets


@dataclass
class DemoFleet:
    root: Path
    inventory: Path
    names: list[str]
    agents: dict[str, Agent]
    tasks: dict[str, asyncio.Task[None]]
    stops: dict[str, asyncio.Event]
    server: asyncssh.SSHAcceptor
    gpus: int

    def node_config(self, name: str) -> AgentConfig:
        return AgentConfig(
            agent=AgentSection(
                node_name=name,
                socket=str(self.root / "run" / f"{name}.sock"),
                state_dir=str(self.root / "state" / name),
                backend="sim",
            )
        )

    async def start_agent(self, name: str, seed: int) -> None:
        """Start the node's agent, or a new one in place of its stopped one, whose buffers
        are released then (``Sampler.release``), once whoever drives the fleet has read
        them after the stop (the soak notes what the stopped agent buffered)."""
        before = self.agents.get(name)
        backend = SimBackend(self.gpus, seed=seed, node=name, spells=DEMO_SPELLS)
        agent = Agent(self.node_config(name), backend)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        ready = asyncio.create_task(agent.serving.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            await task  # its error, as one line from the CLI
        self.agents[name], self.tasks[name], self.stops[name] = agent, task, stop
        if before is not None:
            before.sampler.release()

    async def stop_agent(self, name: str) -> None:
        self.stops[name].set()
        await self.tasks[name]

    def inject(self, name: str, fault: str, gpu: int) -> str:
        backend = self.agents[name].backend
        assert isinstance(backend, SimBackend)
        return backend.inject(fault, gpu)

    async def close(self) -> None:
        self.server.close()
        for name in list(self.tasks):
            if not self.tasks[name].done():
                await self.stop_agent(name)


async def start_fleet(root: Path, nodes: int, gpus: int, first: int = 1) -> DemoFleet:
    """Agents, SSH server, keys, known_hosts and inventory under ``root``. Nodes are numbered
    from ``first`` (several fleets side by side, as the fan-in benchmark runs them)."""
    (root / "run").mkdir(mode=0o700, parents=True)
    names = [f"demo{i:02d}" for i in range(first, first + nodes)]
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = root / "client_key"
    key_path.write_bytes(client_key.export_private_key())
    key_path.chmod(0o600)
    sockets = frozenset(str(root / "run" / f"{n}.sock") for n in names)
    server = await asyncssh.create_server(
        lambda: DemoServer(client_key, sockets),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    known = root / "known_hosts"
    known.write_text(
        f"[127.0.0.1]:{port} {host_key.export_public_key('openssh').decode().strip()}\n"
    )
    half = (nodes + 1) // 2
    groups = [("train", names[:half]), ("infer", names[half:])]
    inventory = root / "fleet.toml"
    inventory.write_text(
        "# The demo fleet: every node is an agent on this machine, behind one SSH server.\n"
        f'[defaults]\nhostname = "127.0.0.1"\nport = {port}\nuser = "demo"\n'
        f'identity = "{key_path}"\nknown_hosts = "{known}"\n'
        f'socket = "{root / "run"}/{{name}}.sock"\n'
        + "".join(
            f'\n[[group]]\nname = "{pool}"\npool = "{pool}"\nnodes = "{",".join(members)}"\n'
            for pool, members in groups
            if members
        )
    )
    fleet = DemoFleet(root, inventory, names, {}, {}, {}, server, gpus)
    for i, name in enumerate(names):
        await fleet.start_agent(name, seed=i)
    return fleet


async def run_incidents(fleet: DemoFleet, say: Callable[[str], None], rng: random.Random) -> None:
    """The scripted faults, in order, on the nodes that exist."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for at, index, what in INCIDENTS:
        if index >= len(fleet.names):
            continue
        await asyncio.sleep(max(0.0, started + at - loop.time()))
        name = fleet.names[index]
        if what == "die":
            await fleet.stop_agent(name)
            say(f"{name}: its agent stopped")
        elif what == "revive":
            await fleet.start_agent(name, seed=index)
            say(f"{name}: its agent is back")
        else:
            say(f"{name}: {fleet.inject(name, what, rng.randrange(fleet.gpus))}")


@contextlib.asynccontextmanager
async def demo_fleet(nodes: int, gpus: int, first: int = 1) -> AsyncIterator[DemoFleet]:
    with tempfile.TemporaryDirectory(prefix="gpufleet-demo-") as tmp:
        fleet = await start_fleet(Path(tmp), nodes, gpus, first)
        try:
            yield fleet
        finally:
            await fleet.close()
