"""The console's memory across reconnections: a node's ended SSH session must become
collectable, with the heap frozen as the screen freezes it. Real sshd, a real agent that ends
the session itself (it closes a connection past its refusal limit, and stays up), asyncssh."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import asyncssh
import pytest

from console.model.heap import HeapFreezer
from console.sources.ssh.link import NodeLink
from tests.conftest import AgentProc, until
from tests.integration.sshd import Sshd
from tests.support.links import FAST, Running, entry, options

pytestmark = pytest.mark.integration

#: An agent that closes a client's connection at its first refused request.
CLOSES_AT_ONCE = "[clients]\nmax_refusals = 1\n"


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """Whatever a test froze goes back to the collector, for the tests after it."""
    yield
    gc.unfreeze()
    gc.collect()


def record_connections(
    link: NodeLink, monkeypatch: pytest.MonkeyPatch
) -> list[weakref.ref[asyncssh.SSHClientConnection]]:
    """A weak reference to each SSH connection the link makes, in order."""
    made: list[weakref.ref[asyncssh.SSHClientConnection]] = []
    connect = link._connect

    async def recording() -> asyncssh.SSHClientConnection:
        conn = await connect()
        made.append(weakref.ref(conn))
        return conn

    monkeypatch.setattr(link, "_connect", recording)
    return made


async def end_the_session(run: Running) -> None:
    """The agent refuses an unknown request and, at its limit of one, closes the connection;
    it stays up, so the link reconnects at once (a LinkFailure raised inside the session)."""
    answer = await run.link.request("no_such_request", {})
    assert answer.code == "unknown_op"
    await until(lambda: run.link.sessions == 2 and run.view.link == "live", "the second session")


async def test_a_link_keeps_nothing_of_a_session_once_it_has_reconnected(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = agent_factory(*FAST, config=CLOSES_AT_ONCE).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    made = record_connections(run.link, monkeypatch)
    try:
        await until(lambda: run.view.link == "live", "live")
        await end_the_session(run)
        gc.collect()
        assert made[0]() is None, "the ended session's connection is still referenced"
        assert made[-1]() is not None
    finally:
        await run.stop()


async def test_a_session_frozen_with_the_heap_is_collected_at_the_next_freeze(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen freezes the heap once the fleet has answered, taking every node's session
    out of the collector's reach; once the session ends, the freezer's next step (past its
    threshold of nodes) collects it and freezes what is left."""
    agent = agent_factory(*FAST, config=CLOSES_AT_ONCE).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    made = record_connections(run.link, monkeypatch)
    links: dict[str, Any] = {run.view.name: run.link}
    heap = HeapFreezer(run.fleet, links, refreeze_nodes=1, refreeze_every=0.0)
    try:
        await until(lambda: run.view.link == "live", "live")
        assert heap.step(), "frozen once the fleet has answered"
        assert not heap.step(), "and not again while no session has ended"
        await end_the_session(run)
        assert heap.stale_nodes() == 1
        gc.collect()
        assert made[0]() is not None, "frozen, the ended session is out of the collector's reach"
        assert heap.step(), "frozen again: a node ended the session it had at the freeze"
        gc.collect()
        assert made[0]() is None, "the ended session is collected"
        assert made[-1]() is not None
        assert heap.stale_nodes() == 0
        assert not heap.step()
        assert run.view.link == "live"
    finally:
        await run.stop()
