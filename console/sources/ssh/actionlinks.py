"""Requests over SSH to the nodes acted on, and to no other: what the screen acts through
when its live view comes from Prometheus rather than from a link to every node.

A node's link is opened on the first request to it (an action, its audit log) and kept until
the screen closes, so that a second action, or the re-read after a lost answer, does not pay
the handshake again; an operator acts on tens of nodes, not on the thousands shown. Each link
feeds a small model of its own (one node, no history): the view on screen stays Prometheus',
so one row never shows two sources at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

from agents.protocol import Response
from console.model.fleet import DOWN_STATES, AlertRules, FleetState
from console.model.inventory import NodeEntry
from console.sources.delivery import NotDelivered
from console.sources.ssh.link import LinkOptions, NodeLink, one_shot, stop_links

#: Seconds a request waits for its node's link to come up before it is not delivered.
CONNECT_WAIT_S: Final = 15.0


class ActionLinks:
    def __init__(
        self,
        entries: Iterable[NodeEntry],
        options: LinkOptions,
        *,
        connect_wait: float = CONNECT_WAIT_S,
    ) -> None:
        self._entries = {e.name: e for e in entries}
        self._options = one_shot(options)  # nothing here draws the agent's buffered samples
        self._connect_wait = connect_wait
        self._gate: asyncio.Semaphore | None = None
        self._hosts: dict[str, asyncio.Semaphore] = {}  # per destination sshd (NodeLink)
        self.links: dict[str, NodeLink] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _link(self, node: str) -> NodeLink:
        """The node's link, started if there is none, and started again if it is down: a
        node that failed an earlier request gets a fresh try now, not after its backoff."""
        link = self.links.get(node)
        if link is not None and link.fleet.nodes[node].link in DOWN_STATES:
            link.stop()  # a cancellation alone can be lost (NodeLink.stop)
            self._tasks.pop(node).cancel()
            link = None
        if link is None:
            if self._gate is None:
                self._gate = asyncio.Semaphore(self._options.fan_out)
            entry = self._entries[node]
            fleet = FleetState([entry], AlertRules(history=1))
            link = self.links[node] = NodeLink(
                entry, fleet, self._options, self._gate, hosts=self._hosts
            )
            self._tasks[node] = asyncio.create_task(link.run())
        return link

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        """As ``FleetLinks.request``, connecting to the node first if need be (raises
        NotDelivered when it cannot be reached in time: nothing was sent)."""
        link = self._link(node)
        view = link.fleet.nodes[node]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, self._connect_wait)
        while True:  # the link's first answer, or its failure
            if view.answered or view.link in DOWN_STATES or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if not view.answered:
            raise NotDelivered(f"{node}: not sent, the node is {view.link_said}")
        return await link.request(op, args, wait)

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        await stop_links(self.links.values(), tasks)
        self.links = {}
