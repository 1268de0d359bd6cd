"""Every node's link, running: what the screen, ``status`` and the demo table share.

One ``NodeLink`` task per inventory node, all feeding one ``FleetState``, with a bound on SSH
handshakes in flight, fleet-wide and per jump host (sshd's MaxStartups drops connections past
about 10 at once, and a jump host is one sshd for every node behind it). Requests go to a
node's live session by name. Headless: the TUI drives the model's clock and refresh; this
only keeps the links up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from agents.protocol import Response
from console.fleet import DOWN_STATES, FleetState
from console.inventory import NodeEntry
from console.link import LinkOptions, NodeLink
from console.source import SSH, FeedStatus, data_age

#: SSH handshakes in flight at once, fleet-wide (pdsh's default fan-out; a jump host named
#: only in ~/.ssh/config, which the per-jump bound cannot see, still gets retries).
CONNECTING_AT_ONCE = 32
#: ... and through one jump host: its sshd's MaxStartups (10:30:100 by default) starts
#: dropping unauthenticated connections past 10.
CONNECTING_PER_JUMP = 10


class FleetLinks:
    spec = SSH

    def __init__(
        self,
        entries: Iterable[NodeEntry],
        options: LinkOptions,
        *,
        fleet: FleetState | None = None,
        concurrency: int = CONNECTING_AT_ONCE,
    ) -> None:
        entries = list(entries)
        self.fleet = fleet if fleet is not None else FleetState(entries)
        gate = asyncio.Semaphore(concurrency)
        jumps = {e.jump: asyncio.Semaphore(CONNECTING_PER_JUMP) for e in entries if e.jump}
        self.links = {
            e.name: NodeLink(e, self.fleet, options, gate, via=jumps.get(e.jump or ""))
            for e in entries
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(link.run()) for link in self.links.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> FleetLinks:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def settle(self, wait: float) -> list[str]:
        """Wait until every node has answered (a live sample on this connection) or failed,
        for ``wait`` seconds at most; return the nodes that did neither."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            nodes = self.fleet.nodes
            pending = [  # this one's links: a fleet model may be shared (the verbs' rounds)
                name
                for name in self.links
                if not nodes[name].answered and nodes[name].link not in DOWN_STATES
            ]
            if not pending or loop.time() >= deadline:
                return pending
            await asyncio.sleep(0.05)

    def status(self, now: float) -> FeedStatus:
        return FeedStatus(self.spec, f"({len(self.links)} links)", None, data_age(self.fleet, now))

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        """One request to one node's agent (raises NotDelivered, see ``NodeLink.request``)."""
        return await self.links[node].request(op, args, wait)
