"""Every node's link, running: what the screen, ``status`` and the demo table share.

One ``NodeLink`` task per inventory node, all feeding one ``FleetState``, with a bound on SSH
handshakes in flight, fleet-wide, per jump host and per destination sshd (host:port after
ssh_config): sshd's MaxStartups drops connections past about 10 at once, and a jump host, a
load balancer or one sshd serving many node names is one sshd for every node behind it.
Requests go to a node's live session by name. Headless: the TUI drives the model's clock and
refresh; this only keeps the links up.

A fault of gpufleet's own code in a link (``console.sources.ssh.link.classify``: ``fault``) shows on
its node and, as the feed's fault, above the table, naming where the traceback is: one bug can
strike every node, and the operator should see it is the console's, once, not a fleet of failing
nodes. Its traceback is logged once for the fleet (``InternalErrors``, shared).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from agents.protocol import Response
from console.logs import InternalErrors
from console.model.fleet import DOWN_STATES, FleetState
from console.model.inventory import NodeEntry
from console.present.words import plural
from console.sources.spec import SSH, FeedStatus, data_age
from console.sources.ssh.link import CONNECTING_AT_ONCE as CONNECTING_AT_ONCE
from console.sources.ssh.link import (
    CONNECTING_PER_HOST,
    LinkOptions,
    NodeLink,
    one_shot,
    stop_links,
)

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
        concurrency: int | None = None,
    ) -> None:
        """``concurrency``: handshakes in flight fleet-wide, by default ``options.fan_out``."""
        entries = list(entries)
        self.fleet = fleet if fleet is not None else FleetState(entries)
        self.fan_out = concurrency or options.fan_out
        gate = asyncio.Semaphore(self.fan_out)
        jumps = {e.jump: asyncio.Semaphore(CONNECTING_PER_JUMP) for e in entries if e.jump}
        hosts: dict[str, asyncio.Semaphore] = {}  # per destination sshd, filled as links resolve
        errors = InternalErrors()
        self.links = {
            e.name: NodeLink(
                e,
                self.fleet,
                options,
                gate,
                via=jumps.get(e.jump or ""),
                hosts=hosts,
                errors=errors,
            )
            for e in entries
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(link.run()) for link in self.links.values()]

    async def stop(self) -> None:
        """End every link, in a bounded time (``stop_links``)."""
        tasks, self._tasks = self._tasks, []
        await stop_links(self.links.values(), tasks)

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

    def give_up(self, pending: list[str], wait: float, now: float) -> None:
        """Call the nodes ``settle`` left pending what they are: ``unreachable`` if their
        handshake started (saying so if their sshd kept dropping it), ``not_tried`` if their
        turn never came (the fan-out busy with others for the whole wait), with the count and
        what to widen: never unreachable, since nothing is known of them."""
        untried = [name for name in pending if not self.links[name].tried]
        for name in pending:
            link = self.links[name]
            if link.tried:
                why = f"no answer in {wait:g} s"
                if link.drops:
                    why = f"{why}: {link.dropped_reason()}"
                self.fleet.set_link(name, "unreachable", why, now)
        # A link that resolved its sshd and never started waited on that sshd's own bound
        # (it gives its fleet-wide slot back meanwhile): a wider --fan-out would not help it.
        held = Counter(d for n in untried if (d := self.links[n].destination) is not None)
        bounds, widen = f"{self.fan_out} at a time", "--connect-wait or --fan-out"
        if held:
            (busiest, _), others = held.most_common(1)[0], len(held) - 1
            where = busiest + (f" and {plural(others, 'other')}" if others else "")
            bounds += (
                f", {CONNECTING_PER_HOST} to any one sshd: "
                f"{plural(held.total(), 'node')} waited on {where}"
            )
            if held.total() == len(untried):
                widen = "--connect-wait (--fan-out does not lift the bound per sshd)"
        why = (
            f"{len(untried)} of {len(self.links)} nodes got no turn for a handshake "
            f"in {wait:g} s ({bounds}); widen {widen}"
        )
        for name in untried:
            self.fleet.set_link(name, "not_tried", why, now)

    def status(self, now: float) -> FeedStatus:
        where = f"({len(self.links)} links)"
        return FeedStatus(self.spec, where, self.fault(), data_age(self.fleet, now))

    def fault(self) -> str | None:
        """A fault of ours in any of these links (its node ``fault``, or stale on its way
        there), as the feed's: the first one's words and how many nodes have one; None if
        none does."""
        faults = []
        for name in self.links:
            view = self.fleet.nodes[name]
            if view.link == "fault":
                faults.append((name, view.link_reason))
            elif view.lost is not None and view.lost[0] == "fault":
                faults.append((name, view.lost[1]))
        if not faults:
            return None
        (first, words), others = faults[0], len(faults) - 1
        return f"{words} ({first}" + (f" and {plural(others, 'other node')})" if others else ")")

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        """One request to one node's agent (raises NotDelivered, see ``NodeLink.request``)."""
        return await self.links[node].request(op, args, wait)


async def snapshot(
    entries: list[NodeEntry],
    options: LinkOptions,
    *,
    wait: float,
    concurrency: int | None = None,
) -> FleetState:
    """Connect to every node, until each has answered or failed (or ``wait`` runs out).

    A snapshot takes a node's first failure as its answer: retrying is for the live screen.
    A node whose handshake never started (the fan-out was busy with others for the whole
    wait) is ``not_tried``, never ``unreachable``: nothing is known of it."""
    links = FleetLinks(entries, one_shot(options), concurrency=concurrency)
    async with links:
        links.give_up(await links.settle(wait), wait, time.monotonic())
    return links.fleet
