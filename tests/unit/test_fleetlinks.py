"""How FleetLinks bounds SSH handshakes: fleet-wide, and per jump host (one sshd, whose
MaxStartups drops connections past 10, for every node behind it), and how they end: always,
and in a bounded time. Nothing connects here: asyncssh.connect is replaced where a test needs
a handshake that ends exactly when the test says."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import Counter
from pathlib import Path

import asyncssh
import pytest

from console.model.inventory import parse_inventory
from console.sources.ssh.fleetlinks import CONNECTING_PER_JUMP, FleetLinks, snapshot
from console.sources.ssh.link import CONNECTING_PER_HOST, LinkOptions, handshake_words, stop_links
from tests.conftest import until

FLEET = """
[[group]]
name = "a"
nodes = "a[1-3]"
jump = "bastion-a"
[[group]]
name = "b"
nodes = "b[1-2]"
jump = "bastion-b"
[[group]]
name = "direct"
nodes = "d[1-2]"
"""


class _Conn:
    """What a completed handshake hands back, for the race below: an SSH connection whose
    agent never answers (so a link that goes on with it never ends by itself)."""

    closed = False

    async def __aenter__(self) -> _Conn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    async def open_unix_connection(self, path: str) -> None:
        await asyncio.Event().wait()


class Handshakes:
    """A stand-in for asyncssh.connect whose handshakes wait until ``release``, then are
    refused: ``in_flight`` counts those under way by jump host ("" for none), ``most`` the
    most ever under way at once in all."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight: Counter[str] = Counter()
        self.most = 0

    async def connect(self, host: str, **kw: object) -> _Conn:
        via = str(kw.get("tunnel") or "")
        self.in_flight[via] += 1
        self.most = max(self.most, self.in_flight.total())
        try:
            await self.release.wait()
        finally:
            self.in_flight[via] -= 1
        raise ConnectionRefusedError(111, "Connect call failed")

    def under_way(self) -> dict[str, int]:
        return dict(+self.in_flight)


async def test_nodes_behind_one_jump_host_share_its_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Twelve nodes behind bastion-a: CONNECTING_PER_JUMP of their handshakes at once, never
    more; the nodes behind bastion-b and those of their own sshd are not held up by them."""
    handshakes = Handshakes()
    monkeypatch.setattr(asyncssh, "connect", handshakes.connect)
    nodes = parse_inventory(FLEET.replace("a[1-3]", "a[01-12]"), "f").nodes
    links = FleetLinks(nodes, LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[]))
    links.start()
    try:
        expected = {"bastion-a": CONNECTING_PER_JUMP, "bastion-b": 2, "": 2}
        await until(lambda: handshakes.under_way() == expected, f"handshakes {expected}", 5)
        assert handshakes.most == CONNECTING_PER_JUMP + 4, "more than the bound at once"
    finally:
        handshakes.release.set()
        await links.stop()


async def test_all_nodes_share_one_fleet_wide_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Seven nodes, behind two jump hosts and none: three handshakes at once in all."""
    handshakes = Handshakes()
    monkeypatch.setattr(asyncssh, "connect", handshakes.connect)
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[])
    links = FleetLinks(parse_inventory(FLEET, "f").nodes, options, concurrency=3)
    links.start()
    try:
        await until(lambda: handshakes.in_flight.total() == 3, "three handshakes under way", 5)
        assert handshakes.most == 3, "more than the fleet-wide bound at once"
    finally:
        handshakes.release.set()
        await links.stop()


def _one_node(tmp_path: Path) -> FleetLinks:
    nodes = parse_inventory('[[group]]\nname = "g"\nnodes = "n1"\n', "f").nodes
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[], backoff_initial=0.01)
    return FleetLinks(nodes, options)


@pytest.mark.parametrize("outcome", ["refused", "connected"])
async def test_a_cancel_that_lands_as_the_handshake_completes_still_stops_the_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcome: str
) -> None:
    """The race behind a `status` that never ended: the handshake completes (refused, or a
    connection) in the same turn of the loop as stop() cancels the link. Python 3.11's
    asyncio.wait_for (here as inside asyncssh.connect) then returns the outcome and swallows
    the cancellation. Driven exactly: the handshake's future is resolved, then stop() runs
    before the loop turns. The link must end, not try again, and stop() must return."""
    loop = asyncio.get_running_loop()
    handshakes: list[asyncio.Future[_Conn]] = []
    handed: list[_Conn] = []  # what wait_for gave the link despite the cancel (3.11 does)

    async def connect(host: str, **kw: object) -> _Conn:
        handshake: asyncio.Future[_Conn] = loop.create_future()
        handshakes.append(handshake)
        conn = await asyncio.wait_for(handshake, 60)
        handed.append(conn)
        return conn

    monkeypatch.setattr(asyncssh, "connect", connect)
    links = _one_node(tmp_path)
    links.start()
    task = links._tasks[0]
    await until(lambda: handshakes, "the handshake to start")
    conn = _Conn()
    if outcome == "refused":
        handshakes[0].set_exception(ConnectionRefusedError(111, "Connect call failed"))
    else:
        handshakes[0].set_result(conn)
    async with asyncio.timeout(20):  # today's stop() waits here for ever
        await links.stop()
    assert task.done() and task.cancelled()
    assert len(handshakes) == 1, "the link tried again after it was stopped"
    # 3.11's wait_for hands the connection over and swallows the cancel: the link must close
    # it. From 3.12 wait_for raises the cancel instead and the link never has the connection.
    assert conn.closed or not handed, "the late connection was kept open"


async def test_stop_is_bounded_even_for_a_link_that_ignores_every_cancel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a library under the link does with a cancellation, stop() returns after its
    two graces and says what it left behind."""
    release = asyncio.Event()

    async def connect(host: str, **kw: object) -> _Conn:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(asyncssh, "connect", connect)
    links = _one_node(tmp_path)
    links.start()
    task = links._tasks[0]
    await until(lambda: links.links["n1"].tried, "the handshake to start")
    with caplog.at_level(logging.WARNING, "gpufleet.console.sources.ssh.link"):
        async with asyncio.timeout(20):
            await stop_links(links.links.values(), [task], grace=0.1)
    assert not task.done()
    assert "1 link(s) did not stop" in caplog.text
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task  # the stop flag ends it the moment the library lets go


@pytest.mark.parametrize(
    ("config", "jump", "chain"),
    [
        ("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", None, "a -> b -> a"),
        ("Host b\n  ProxyJump ops@c:2222\nHost c\n  ProxyJump b\n", "b", "a -> b -> c -> b"),
    ],
)
async def test_a_proxyjump_loop_through_ssh_config_is_said_not_followed(
    tmp_path: Path, config: str, jump: str | None, chain: str
) -> None:
    """A ProxyJump chain that comes back on itself (through ssh_config, from the node or from
    the inventory's jump) is named, hop by hop, on the node: not followed until Python's
    recursion limit. Nothing is contacted: the loop is found before any connection."""
    path = tmp_path / "ssh_config"
    path.write_text(config)
    group = '[[group]]\nname = "g"\nnodes = "a"\n' + (f'jump = "{jump}"\n' if jump else "")
    nodes = parse_inventory(group, "f").nodes
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[str(path)])
    fleet = await snapshot(nodes, options, wait=10)
    assert (fleet.nodes["a"].link, fleet.nodes["a"].link_reason) == (
        "unreachable",
        f"ProxyJump loops through ssh_config: {chain}: fix the ProxyJump (or the inventory's "
        "jump) of one of these hosts",
    )


@pytest.mark.parametrize("hostname", ["gpu01..lab", "x" * 64 + ".lab"])
async def test_a_host_name_no_resolver_can_encode_is_unreachable_not_our_fault(
    tmp_path: Path, hostname: str
) -> None:
    """An empty label or one over 63 characters: the resolver cannot even encode the name
    (UnicodeError from the IDNA codec, a ValueError). That is the operator's inventory, said as
    such: ``unreachable`` with what to fix, never ``fault`` (gpufleet's own bug)."""
    group = f'[[group]]\nname = "g"\nnodes = "a"\nhostname = "{hostname}"\n'
    nodes = parse_inventory(group, "f").nodes
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[])
    fleet = await snapshot(nodes, options, wait=10)
    view = fleet.nodes["a"]
    assert view.link == "unreachable", view.link_reason
    assert view.link_reason.startswith(f"cannot resolve {hostname}: not a valid host name")


async def test_handshakes_to_one_sshd_are_bounded_whatever_the_node_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Thirty node names that ssh_config sends to one sshd (HostName and Port alike; a shared
    sshd, a load balancer, a bastion without a jump entry): at most CONNECTING_PER_HOST of
    their handshakes are in flight at once, though the fan-out would allow 32; a node of its
    own sshd is not held up by them."""
    config = tmp_path / "ssh_config"
    config.write_text("Host n*\n  HostName 10.0.0.9\n  Port 2200\nHost solo\n  HostName 10.0.0.8\n")
    release = asyncio.Event()
    in_flight: list[str] = []  # the node names given (asyncssh resolves ssh_config itself)
    most = 0

    async def connect(host: str, **kw: object) -> _Conn:
        nonlocal most
        in_flight.append(host)
        most = max(most, len(in_flight))
        try:
            await release.wait()
        finally:
            in_flight.remove(host)
        raise ConnectionRefusedError(111, "Connect call failed")

    monkeypatch.setattr(asyncssh, "connect", connect)
    nodes = parse_inventory(
        '[[group]]\nname = "g"\nnodes = "n[01-30]"\n[[group]]\nname = "s"\nnodes = "solo"\n', "f"
    ).nodes
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[str(config)])
    links = FleetLinks(nodes, options)
    links.start()
    try:
        # A link resolves its destination and then, in the same step unless a bound holds it,
        # starts its handshake: once all have resolved, every one is in flight or held.
        await until(lambda: all(v.destination for v in links.links.values()), "resolved")
        assert {n: links.links[n].destination for n in ("n01", "n30", "solo")} == {
            "n01": "10.0.0.9:2200", "n30": "10.0.0.9:2200", "solo": "10.0.0.8:22",
        }  # fmt: skip
        assert sum(link.tried for link in links.links.values()) == CONNECTING_PER_HOST + 1
        assert "solo" in in_flight, "a node of another sshd waited behind them"
        assert most == CONNECTING_PER_HOST + 1, "more than the bound to one sshd at once"
    finally:
        release.set()
        await links.stop()


async def test_nodes_held_by_their_sshds_bound_are_told_to_widen_the_wait_not_the_fan_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Thirty node names behind one sshd, whose handshakes never end within the wait: twenty
    never get their turn, held by the bound per sshd, which --fan-out does not lift. Their
    reason says so and what does help (the wait)."""
    config = tmp_path / "ssh_config"
    config.write_text("Host n*\n  HostName 10.0.0.9\n  Port 2200\n")
    never = asyncio.Event()

    async def connect(host: str, **kw: object) -> _Conn:
        await never.wait()
        raise AssertionError("never answered")

    monkeypatch.setattr(asyncssh, "connect", connect)
    nodes = parse_inventory('[[group]]\nname = "g"\nnodes = "n[01-30]"\n', "f").nodes
    options = LinkOptions(known_hosts=tmp_path / "kh", ssh_config=[str(config)])
    links = FleetLinks(nodes, options)
    links.start()
    try:
        await until(lambda: all(v.destination for v in links.links.values()), "resolved")
        links.give_up(list(links.links), 5, 0.0)
        views = links.fleet.nodes.values()
        untried = {v.link_said for v in views if v.link == "not_tried"}
        assert untried == {  # as a verb's line says it: the state once, then the reason
            f"not_tried: 20 of 30 nodes got no turn for a handshake in 5 s (32 at a time, "
            f"{CONNECTING_PER_HOST} to any one sshd: 20 nodes waited on 10.0.0.9:2200); widen "
            "--connect-wait (--fan-out does not lift the bound per sshd)"
        }
        assert sum(v.link == "unreachable" for v in views) == CONNECTING_PER_HOST
    finally:
        await links.stop()


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('10.0.0.7', 22)"),
         "connection refused by 10.0.0.7 on port 22: is sshd running there, on that port?"),
        (TimeoutError(), "no SSH answer from 10.0.0.7:22 in 10 s: is the node up, and is that "
         "its sshd?"),
        (socket.gaierror(-2, "Name or service not known"),
         "cannot resolve 10.0.0.7: check the name (or its HostName in ssh_config)"),
        (OSError(errno.EHOSTUNREACH, "No route to host"),
         "no route to 10.0.0.7: is the node up, and the network to it?"),
        (ConnectionResetError(104, "Connection reset by peer"),
         "10.0.0.7:22 closed the connection during the SSH handshake: see its sshd's log"),
        (asyncssh.ConnectionLost("Connection lost"),
         "10.0.0.7:22 closed the connection during the SSH handshake: see its sshd's log"),
    ],
)  # fmt: skip
def test_a_failed_handshake_is_said_in_an_operators_words(exc: Exception, words: str) -> None:
    """What the screen and `status` show for a handshake that failed: what happened and what
    to look at, never `[Errno 111] Connect call failed (...)` (that goes to the log)."""
    assert handshake_words(exc, "10.0.0.7:22", 10.0) == words


def test_a_fault_of_our_own_on_any_link_is_the_feeds_fault_on_the_source_line() -> None:
    """One bug can strike every node: the line above the table says it once, as the
    console's, with how many nodes it struck, rather than leaving a fleet of red rows to
    be read as failing nodes. Other failures are the nodes', not the feed's."""
    links = FleetLinks(parse_inventory(FLEET, "f").nodes, LinkOptions())
    links.fleet.set_link("a2", "unreachable", "connection refused", 1.0)
    assert links.status(1.0).fault is None
    words = "internal error: KeyError: 'gpu9', see the log at /tmp/console.log"
    for name in ("b1", "d2", "a3"):
        links.fleet.set_link(name, "fault", words, 1.0)
    assert links.status(1.0).fault == f"{words} (a3 and 2 other nodes)"
    assert f"FAULT: {words} (a3 and 2 other nodes)" in links.status(1.0).line()
