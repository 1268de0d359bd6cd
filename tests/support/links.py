"""A node's link to a real agent through the test's sshd (tests/integration/sshd.py): its
inventory entry, its options, and a link running in the background."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from console.model.fleet import FleetState
from console.model.inventory import NodeEntry
from console.sources.ssh.link import LinkOptions, NodeLink
from tests.integration.sshd import Sshd

FAST = ("--backend", "sim", "--gpus", "2", "--interval", "0.1")


def entry(sshd: Sshd, socket: str) -> NodeEntry:
    return NodeEntry(
        name="127.0.0.1", group="g", pool="p", hostname=None, user="root", port=sshd.port,
        jump=None, identity=None, socket=socket, scheduler_name="n1",
    )  # fmt: skip


def options(sshd: Sshd, **kw: object) -> LinkOptions:
    base: dict[str, object] = {
        "known_hosts": sshd.known_hosts,
        "client_keys": [str(sshd.client_key_path)],
        "ssh_config": [],
        "backoff_initial": 0.2,
        "backoff_max": 1.0,
        # The fallback runs this agent's attach; a node would have gpufleet-agent on PATH.
        "attach_command": f"{sys.executable} -m agents attach",
    }
    return LinkOptions(**{**base, **kw})  # type: ignore[arg-type]


class Running:
    """A NodeLink running in the background for the length of a test, with the model's
    clock ticking as the console's would, and every link state it passed through kept."""

    def __init__(self, node: NodeEntry, opts: LinkOptions) -> None:
        self.fleet = FleetState([node])
        self.link = NodeLink(node, self.fleet, opts, asyncio.Semaphore(4))
        self.view = self.fleet.nodes[node.name]
        self.seen: list[str] = []
        self.fleet.subscribe(self._record)
        self.task = asyncio.create_task(self.link.run())
        self.ticker = asyncio.create_task(self._tick())

    def shows(self, link: str) -> Callable[[], bool]:
        """The screen's view: the link state as of the latest flush."""
        return lambda: self.seen[-1:] == [link]

    def _record(self, _changed: set[str]) -> None:
        if not self.seen or self.seen[-1] != self.view.link:
            self.seen.append(self.view.link)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.fleet.tick(loop.time())
            self.fleet.flush()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in (self.task, self.ticker):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
