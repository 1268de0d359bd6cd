"""The console's link to a node: real sshd on loopback, a real agent on a unix socket, and
asyncssh in between, as on a real fleet."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh
import psutil
import pytest

from agents.ops.store import AuditLog
from agents.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, Response, Sample
from agents.serve.client import AgentClient
from console.model.fleet import FleetState, LinkState
from console.model.inventory import NodeEntry
from console.ops.actions import run_action
from console.sources.delivery import NotDelivered
from console.sources.ssh.fleetlinks import FleetLinks, snapshot
from console.sources.ssh.link import PACE_BURST, PACE_FACTOR, LinkOptions, NodeLink
from tests.conftest import REPO, AgentProc, until, wait_for
from tests.integration.netns import netns
from tests.integration.sshd import Sshd, start_sshd
from tests.support.links import FAST, Running, entry, options

pytestmark = pytest.mark.integration


class Rereading:
    """One node's link as ``run_action`` uses it, noting every request, and doing ``then``
    just before the first ``state`` request: the moment the console starts reading the node
    again after an answer was lost."""

    def __init__(self, link: NodeLink, then: Callable[[], Awaitable[None]]) -> None:
        self.link = link
        self.then = then
        self.sent: list[str] = []

    async def request(
        self, node: str, op: str, args: dict[str, object], wait: float = 30.0
    ) -> Response:
        self.sent.append(op)
        if op == "state" and self.sent.count("state") == 1:
            await self.then()
        return await self.link.request(op, args, wait)


async def test_stream_reaches_the_fleet_over_ssh(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(lambda: run.view.link == "live" and len(run.view.history) > 5, "live samples")
        assert run.view.inventory is not None
        assert run.view.inventory.backend == "sim"
        assert len(run.view.sample.gpus if run.view.sample else []) == 2
        assert run.view.interval == pytest.approx(0.1)
    finally:
        await run.stop()


async def test_a_one_shot_snapshot_skips_the_history_and_takes_the_newest_as_live(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """``status`` and the verbs connect without the agent's buffered samples, and count a
    node as answered on its newest sample, sent at once (not an interval later)."""
    agent = agent_factory("--backend", "sim", "--gpus", "2", "--interval", "0.1").start()
    with AgentClient(agent.socket, history=False) as warm:  # let the agent buffer 2 s
        wait_for(
            lambda: (f := warm.recv()) is not None and getattr(f, "seq", 0) > 20, "2 s buffered", 10
        )
    fleet = await snapshot([entry(sshd, agent.socket)], options(sshd), wait=10)
    view = fleet.nodes["127.0.0.1"]
    assert view.answered
    assert len(view.history) < 5, "the newest sample (and any live since), not the 20-sample buffer"
    assert view.sample is not None and not view.sample.replay


async def test_agent_not_running_is_agent_down(sshd: Sshd, short_tmp: Path) -> None:
    run = Running(entry(sshd, str(short_tmp / "nothing.sock")), options(sshd))
    try:
        await until(lambda: run.view.link == "agent_down", "agent_down")
        # streamlocal refused, then attach's own one line says why
        assert "no agent at" in run.view.link_reason
        assert "nothing.sock (is gpufleet-agent running?)" in run.view.link_reason
    finally:
        await run.stop()


async def test_unknown_host_key_is_refused_by_default(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    sshd.known_hosts.write_text("")
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(lambda: run.view.link == "hostkey_unknown", "hostkey_unknown")
        assert sshd.known_hosts.read_text() == "", "strict mode learns nothing"
    finally:
        await run.stop()


@pytest.mark.parametrize("host_keys", ["strict", "accept-new"])
async def test_a_host_key_of_another_type_is_a_changed_key(short_tmp: Path, host_keys: str) -> None:
    """known_hosts holds the host's ed25519 key; the server now offers only an RSA key. As
    OpenSSH says, the host key changed (in accept-new too: the host is not new), naming both
    types; not "Connection lost", which is what offering only the known type ends in."""
    server = start_sshd(short_tmp / "sshd", host_key_type="ssh-rsa")
    try:
        server.known_hosts.write_text(
            server.known_hosts_line(asyncssh.generate_private_key("ssh-ed25519"))
        )
        node = entry(server, str(short_tmp / "agent.sock"))
        fleet = await snapshot([node], options(server, host_keys=host_keys), wait=20)
    finally:
        server.stop()
    view = fleet.nodes[node.name]
    assert view.link == "hostkey_changed", view.link_reason
    assert "(known_hosts has ssh-ed25519; the server offers ssh-rsa)" in view.link_reason
    assert "ssh-rsa" not in server.known_hosts.read_text(), "a changed key was learned"


async def test_accept_new_learns_an_unknown_key_and_refuses_a_changed_one(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    sshd.known_hosts.write_text("")
    run = Running(entry(sshd, agent.socket), options(sshd, host_keys="accept-new"))
    try:
        await until(lambda: run.view.link == "live", "live after learning the key")
        assert sshd.known_hosts.read_text() == sshd.known_hosts_line()
    finally:
        await run.stop()
    other = asyncssh.generate_private_key("ssh-ed25519")
    sshd.known_hosts.write_text(sshd.known_hosts_line(other))  # as if the host key changed
    run = Running(entry(sshd, agent.socket), options(sshd, host_keys="accept-new"))
    try:
        await until(lambda: run.view.link == "hostkey_changed", "hostkey_changed")
        assert "does not match known_hosts" in run.view.link_reason
        assert sshd.known_hosts.read_text() == sshd.known_hosts_line(other), "not overwritten"
    finally:
        await run.stop()


async def test_a_host_key_changed_between_sessions_is_refused_on_reconnect(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """Live, then the host comes back with another key (reinstalled, or someone else): the
    link does not reconnect to it, and known_hosts is untouched (accept-new learns only keys
    never seen)."""
    agent = agent_factory(*FAST).start()
    trusted = sshd.known_hosts.read_text()
    run = Running(entry(sshd, agent.socket), options(sshd, host_keys="accept-new"))
    try:
        await until(lambda: run.view.link == "live", "live")
        await asyncio.to_thread(sshd.rekey)  # its sessions end with it
        await until(lambda: run.view.link == "hostkey_changed", "hostkey_changed")
        assert "does not match known_hosts" in run.view.link_reason
        assert sshd.known_hosts.read_text() == trusted
    finally:
        await run.stop()


async def test_wrong_client_key_is_auth_failed(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    agent = agent_factory(*FAST).start()
    stranger = short_tmp / "stranger_key"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    stranger.chmod(0o600)
    run = Running(entry(sshd, agent.socket), options(sshd, client_keys=[str(stranger)]))
    try:
        await until(lambda: run.view.link == "auth_failed", "auth_failed")
    finally:
        await run.stop()


async def test_nothing_listening_is_unreachable(sshd: Sshd, short_tmp: Path) -> None:
    sshd.stop()
    run = Running(entry(sshd, str(short_tmp / "x.sock")), options(sshd))
    try:
        await until(lambda: run.view.link == "unreachable", "unreachable")
        assert [a.kind for a in run.view.alerts] == ["unreachable"]
    finally:
        await run.stop()


async def test_a_server_that_never_greets_is_no_answer_not_a_drop(short_tmp: Path) -> None:
    """A port that takes the TCP connection and sends nothing: the handshake times out, and
    the reason says so. Not a connection dropped before the banner (sshd's MaxStartups), which
    is tried again and named as such."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    node = NodeEntry(
        name="quiet", group="g", pool="p", hostname="127.0.0.1", user="root", port=port,
        jump=None, identity=None, socket="/run/none.sock", scheduler_name="quiet",
    )  # fmt: skip
    opts = LinkOptions(
        known_hosts=short_tmp / "kh", ssh_config=[], connect_timeout=0.5, backoff_initial=60
    )
    run = Running(node, opts)
    try:
        await until(lambda: run.view.link == "unreachable", "the handshake to time out")
        assert run.view.link_reason == (
            f"no SSH answer from 127.0.0.1:{port} in 0.5 s: is the node up, and is that its sshd?"
        )
        assert run.link.drops == 0
    finally:
        await run.stop()
        silent.close()


async def test_agent_killed_and_restarted_is_recovered_without_restarting_the_link(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """Killed, the agent's stream ends: the node shows stale at once (its data is no longer
    coming) and, once the stale window passes with no agent, down with the reason; restarted,
    it is live again on the same console."""
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(run.shows("live"), "live, as the screen saw it")
        agent.stop(signal.SIGKILL)
        await until(run.shows("agent_down"), "the loss seen")
        assert run.seen[-3:] == ["live", "stale", "agent_down"], run.seen
        assert "agent" in run.view.link_reason
        assert [a.kind for a in run.view.alerts] == ["unreachable"]
        await asyncio.to_thread(agent.start)
        await until(lambda: run.view.link == "live", "live again")
        assert run.link.sessions >= 2
    finally:
        await run.stop()


async def test_attach_fallback_when_sshd_forbids_streamlocal(
    short_tmp: Path, agent_factory: Callable[..., AgentProc]
) -> None:
    """AllowStreamLocalForwarding no: the link runs `gpufleet-agent attach` on the node and
    the same stream arrives."""
    server = start_sshd(short_tmp / "sshd-nofwd", streamlocal=False)
    try:
        agent = agent_factory(*FAST).start()
        run = Running(entry(server, agent.socket), options(server))
        try:
            await until(lambda: run.view.link == "live" and len(run.view.history) > 3, "live")
            assert run.link.via_attach
            assert run.view.inventory is not None
            assert run.view.inventory.backend == "sim"
        finally:
            await run.stop()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("config", "key_options"),
    [
        # OpenSSH opens direct-streamlocal channels under the same local-forwarding permission
        # as TCP: these forbid it too, with AllowStreamLocalForwarding left at yes.
        ("AllowTcpForwarding no\n", ""),
        ("AllowTcpForwarding remote\n", ""),
        ("DisableForwarding yes\n", ""),
        ("", "restrict"),
        ("", "no-port-forwarding"),
    ],
)
async def test_attach_fallback_when_sshd_forbids_forwarding_otherwise(
    short_tmp: Path, agent_factory: Callable[..., AgentProc], config: str, key_options: str
) -> None:
    """What the README says about sshd on the nodes: every setting that refuses the
    streamlocal channel leaves the console live through `gpufleet-agent attach`."""
    server = start_sshd(short_tmp / "sshd-fwd", config=config, key_options=key_options)
    try:
        agent = agent_factory(*FAST).start()
        run = Running(entry(server, agent.socket), options(server))
        try:
            await until(lambda: run.view.link == "live" and len(run.view.history) > 3, "live")
            assert run.link.via_attach
        finally:
            await run.stop()
    finally:
        server.stop()


async def test_on_the_attach_fallback_a_down_agent_is_asked_less_often(
    short_tmp: Path, agent_factory: Callable[..., AgentProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try on the attach fallback runs `gpufleet-agent attach` on the node: while the
    agent is down the link waits attach_retry (x 0.5 to 1.5) between them, not agent_retry,
    and still comes back by itself on the same connection."""
    server = start_sshd(short_tmp / "sshd-nofwd", streamlocal=False)
    try:
        agent = agent_factory(*FAST).start()
        opts = options(server, agent_retry=0.2, attach_retry=1.0)
        run = Running(entry(server, agent.socket), opts)
        waits: list[float] = []
        wait = run.link._agent_retry_wait

        def noted() -> float:
            waits.append(wait())
            return waits[-1]

        monkeypatch.setattr(run.link, "_agent_retry_wait", noted)
        try:
            await until(lambda: run.view.link == "live", "live through attach")
            agent.stop(signal.SIGKILL)
            await until(lambda: len(waits) >= 3, "three tries at the stopped agent")
            assert all(0.5 <= w <= 1.5 for w in waits), waits
            await asyncio.to_thread(agent.start)
            await until(lambda: run.view.link == "live", "live again through attach")
            assert run.link.via_attach
        finally:
            await run.stop()
    finally:
        server.stop()


async def test_several_agents_through_sshd_history_first(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    """Three nodes (ssh-config aliases for one sshd), each agent's buffered history arriving
    before its live samples, all into one FleetState."""
    agents = [agent_factory(*FAST, "--node", f"node{i}", name=f"n{i}").start() for i in range(3)]
    for agent in agents:  # let each ring hold some history first
        with AgentClient(agent.socket, history=False) as c:
            got = 0
            for frame in c.frames():
                got += isinstance(frame, Sample)
                if got >= 5:
                    break
    config = short_tmp / "ssh_config"
    config.write_text(
        "".join(
            f"Host node{i}\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
            for i in range(3)
        )
    )
    entries = [
        NodeEntry(name=f"node{i}", group="g", pool="p", hostname=None, user=None, port=None,
                  jump=None, identity=None, socket=a.socket, scheduler_name=f"node{i}")
        for i, a in enumerate(agents)
    ]  # fmt: skip
    fleet = FleetState(entries)
    gate = asyncio.Semaphore(2)
    opts = options(sshd, ssh_config=[str(config)])
    tasks = [asyncio.create_task(NodeLink(e, fleet, opts, gate).run()) for e in entries]
    try:
        await until(
            lambda: all(v.link == "live" and len(v.history) >= 8 for v in fleet.nodes.values()),
            "all three live",
        )
        for view in fleet.nodes.values():
            flags = view.history.replayed()
            first_live = flags.index(False)
            assert first_live >= 5, f"{view.name}: history should come first"
            assert all(flags[:first_live])
            assert not any(flags[first_live:])
            seqs = view.history.seqs()
            assert seqs == sorted(set(seqs))
        assert len({v.inventory.gpus[0].uuid for v in fleet.nodes.values() if v.inventory}) == 3
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_frozen_link_is_noticed_within_the_keepalive_budget(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """Every sshd process stopped (SIGSTOP): the TCP connection stays up but nothing answers,
    as across a partition. Keepalive (1 s x 4) must call it within about 5 s, and the link must
    come back when sshd does."""
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    assert sshd.proc is not None
    try:
        await until(lambda: run.view.link == "live", "live")
        frozen = [psutil.Process(sshd.proc.pid), *psutil.Process(sshd.proc.pid).children(True)]
        for p in frozen:
            p.suspend()
        try:
            # A TCP timeout would take minutes: within the deadline, only keepalive calls it.
            await until(lambda: run.view.link not in ("live", "stale"), "the cut noticed", 15)
        finally:
            for p in frozen:
                p.resume()
        assert run.view.link == "unreachable"
        assert "keepalive" in run.view.link_reason, run.view.link_reason
        await until(lambda: run.view.link == "live", "live again after the thaw")
    finally:
        await run.stop()


async def test_a_partition_is_noticed_within_the_keepalive_budget_and_heals(
    short_tmp: Path, agent_factory: Callable[..., AgentProc]
) -> None:
    """The node's sshd in its own network namespace; an nftables table there drops every
    packet, as a dead switch would. The console must call the node stale, then unreachable
    within the keepalive budget (1 s x 4), and be live again when the rule goes, by itself."""
    with netns() as ns:
        server = start_sshd(short_tmp / "sshd", address=ns.node_addr, prefix=ns.exec_prefix())
        try:
            agent = agent_factory(*FAST).start()
            node = dataclasses.replace(entry(server, agent.socket), name="node-ns")
            node = dataclasses.replace(node, hostname=ns.node_addr)
            run = Running(node, options(server))
            try:
                await until(run.shows("live"), "live, as the screen saw it")
                await asyncio.to_thread(ns.cut)
                # A TCP timeout would take minutes: within the deadline, only keepalive calls it.
                await until(run.shows("unreachable"), "the partition noticed", 15)
                assert run.seen[-3:] == ["live", "stale", "unreachable"], run.seen
                assert "keepalive" in run.view.link_reason, run.view.link_reason
                await asyncio.to_thread(ns.heal)
                await until(lambda: run.view.link == "live", "live again after the heal")
                assert run.link.sessions >= 2
            finally:
                await run.stop()
        finally:
            server.stop()


async def test_half_the_fleet_partitioned_leaves_the_other_half_live(
    sshd: Sshd, short_tmp: Path, agent_factory: Callable[..., AgentProc]
) -> None:
    """Four nodes: two behind one network namespace (a rack whose switch dies), two on this
    host. The cut takes out exactly the rack, the others keep streaming throughout, and the
    rack comes back by itself when healed."""
    with netns() as ns:
        rack_sshd = start_sshd(short_tmp / "rack", address=ns.node_addr, prefix=ns.exec_prefix())
        try:
            agents = {f"n{i}": agent_factory(*FAST, name=f"n{i}").start() for i in range(4)}
            entries = []
            for name, agent in agents.items():
                rack = name in ("n0", "n1")
                server, host = (rack_sshd, ns.node_addr) if rack else (sshd, "127.0.0.1")
                entries.append(
                    dataclasses.replace(entry(server, agent.socket), name=name, hostname=host)
                )
            # One known_hosts and one set of keys for both servers, as an operator's would be.
            sshd.known_hosts.write_text(sshd.known_hosts_line() + rack_sshd.known_hosts_line())
            keys = [str(sshd.client_key_path), str(rack_sshd.client_key_path)]
            links = FleetLinks(entries, options(sshd, client_keys=keys))
            fleet = links.fleet

            def links_are(want: dict[str, str]) -> bool:
                fleet.tick(asyncio.get_running_loop().time())
                return all(fleet.nodes[n].link == state for n, state in want.items())

            async with links:
                await until(lambda: links_are(dict.fromkeys(agents, "live")), "all live")
                before = {n: fleet.nodes[n].sample for n in ("n2", "n3")}
                await asyncio.to_thread(ns.cut)
                down = {"n0": "unreachable", "n1": "unreachable", "n2": "live", "n3": "live"}
                await until(lambda: links_are(down), "the rack unreachable, the rest live", 15)
                for n, sample in before.items():
                    now = fleet.nodes[n].sample
                    assert sample is not None and now is not None and now.seq > sample.seq, n
                await asyncio.to_thread(ns.heal)
                await until(lambda: links_are(dict.fromkeys(agents, "live")), "all live again")
        finally:
            rack_sshd.stop()


async def test_missing_known_hosts_file_means_unknown_host(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    sshd.known_hosts.unlink()
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(lambda: run.view.link == "hostkey_unknown", "hostkey_unknown")
        assert not sshd.known_hosts.exists(), "strict mode writes nothing"
    finally:
        await run.stop()


async def test_malformed_known_hosts_is_named_as_such(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    sshd.known_hosts.write_text(sshd.known_hosts_line() + "truncated-line\n")
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(lambda: run.view.link == "hostkey_unknown", "hostkey_unknown")
        assert f"cannot use {sshd.known_hosts}" in run.view.link_reason
        assert "Invalid known hosts entry" in run.view.link_reason
    finally:
        await run.stop()


async def test_accept_new_refuses_a_changed_key_behind_an_ssh_config_alias(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    """The inventory says "node-a"; ~/.ssh/config says it is 127.0.0.1:PORT; known_hosts holds
    another key for [127.0.0.1]:PORT. That is a changed key, whatever the alias."""
    agent = agent_factory(*FAST).start()
    other = asyncssh.generate_private_key("ssh-ed25519")
    sshd.known_hosts.write_text(sshd.known_hosts_line(other))
    config = short_tmp / "ssh_config"
    config.write_text(f"Host node-a\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n")
    node = NodeEntry(
        name="node-a", group="g", pool="p", hostname=None, user=None, port=None, jump=None,
        identity=None, socket=agent.socket, scheduler_name="node-a",
    )  # fmt: skip
    run = Running(node, options(sshd, host_keys="accept-new", ssh_config=[str(config)]))
    try:
        await until(lambda: run.view.link == "hostkey_changed", "hostkey_changed")
        assert sshd.known_hosts.read_text() == sshd.known_hosts_line(other), "nothing learned"
    finally:
        await run.stop()


async def test_accept_new_refuses_a_revoked_key(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    key = sshd.host_key.export_public_key("openssh").decode().strip()
    sshd.known_hosts.write_text(f"@revoked * {key}\n")
    run = Running(entry(sshd, agent.socket), options(sshd, host_keys="accept-new"))
    try:
        await until(lambda: run.view.link == "hostkey_changed", "refused")
        assert sshd.known_hosts.read_text() == f"@revoked * {key}\n"
    finally:
        await run.stop()


async def test_an_agent_back_is_live_within_the_agent_retry_however_long_it_was_away(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the agent down, sshd answering: the link asks the agent again every
    ``agent_retry`` seconds (jittered, x 0.5 to 1.5) on the SSH connection it has, without
    backing off, so once the agent is back the node is live at the next try, and no retry
    costs an SSH handshake. (Before, the retries
    backed off from 1 s: after four failed tries the next came 8 to 24 s later.)"""
    agent = agent_factory(*FAST).start()
    opts = options(sshd, backoff_initial=1.0, backoff_max=60.0)  # the defaults
    run = Running(entry(sshd, agent.socket), opts)
    tries: list[str] = []
    connects: list[int] = []
    set_link, connect = run.fleet.set_link, run.link._connect

    def noted(node: str, link: LinkState, reason: str, now: float) -> None:
        if link == "agent_down":
            tries.append(reason)
        set_link(node, link, reason, now)

    async def counted() -> asyncssh.SSHClientConnection:
        connects.append(1)
        return await connect()

    monkeypatch.setattr(run.fleet, "set_link", noted)
    monkeypatch.setattr(run.link, "_connect", counted)
    try:
        await until(lambda: run.view.link == "live", "live")
        agent.stop(signal.SIGKILL)
        await until(lambda: len(tries) >= 4, "four tries at the stopped agent", limit=30)
        await asyncio.to_thread(agent.start)
        before = len(tries)  # once it serves: a loaded machine may take seconds to start it
        await until(lambda: run.view.link == "live", "live again")
        # At most the try already under way when the agent came back failed: the next one,
        # one agent_retry wait later on the same connection, reached it (no backoff, which
        # would have gone through a new connection).
        assert len(tries) - before <= 1, tries[before:]
        assert len(connects) == 1, "every try rode the one SSH connection"
        assert all("no agent at" in why for why in tries[1:]), tries
    finally:
        await run.stop()


async def test_backoff_keeps_growing_for_a_node_that_stays_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a node has worked, a later outage must still back off, not retry every second."""
    node = NodeEntry(
        name="n", group="g", pool="p", hostname=None, user=None, port=None, jump=None,
        identity=None, socket="/s", scheduler_name="n",
    )  # fmt: skip
    fleet = FleetState([node])
    link = NodeLink(node, fleet, LinkOptions(backoff_initial=1.0, backoff_max=60.0),
                    asyncio.Semaphore(1))  # fmt: skip
    delays: list[float] = []

    async def session() -> None:
        if not delays:
            link.sessions += 1  # the first session reached the agent, then broke
        raise OSError("connection refused")

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 6:
            raise asyncio.CancelledError

    monkeypatch.setattr(link, "_session", session)
    monkeypatch.setattr("console.sources.ssh.link.random.uniform", lambda a, b: 1.0)
    monkeypatch.setattr("console.sources.ssh.link.asyncio.sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await link.run()
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert fleet.nodes["n"].link == "unreachable"


async def test_requests_go_to_the_agent_on_the_live_session(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """The request path the screen's actions use: answers come back matched by id, an op the
    agent does not know is refused by the agent (not guessed at here), and with no session a
    request is not sent and says so."""
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(lambda: run.view.link == "live", "live")
        pong, who = await asyncio.gather(
            run.link.request("ping", {}), run.link.request("whoami", {})
        )
        assert pong.ok
        assert who.ok
        assert who.result is not None
        assert who.result["user"] == "root", "identity from sshd's peer credentials"
        refused = await run.link.request("cordon", {"reason": "test"})
        assert (refused.ok, refused.code) == (False, "unknown_op")
        agent.stop(signal.SIGKILL)
        await until(run.shows("agent_down"), "the agent gone")
        with pytest.raises(NotDelivered, match="not sent, the node is agent_down"):
            await run.link.request("ping", {})
    finally:
        await run.stop()


async def test_an_action_whose_answer_is_lost_is_unknown_and_read_again(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """The agent stops (SIGSTOP) with a drain on its way: the console gives up waiting, does
    not send the drain again, and reads the node's state once the agent answers again (here
    it is let go as the console starts reading): the drain did happen, and the result says
    so."""
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))

    async def let_go() -> None:
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGCONT)

    link = Rereading(run.link, let_go)
    sent = link.sent
    try:
        await until(lambda: run.view.link == "live", "live")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            [result] = await run_action(link, [run.view.name], "drain", {"reason": "r"}, wait=1)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        assert result.outcome == "unknown", result
        assert "no answer in 1 s; it may have happened" in result.message
        # The drain happened (draining or drained, as the simulated GPUs were busy or not).
        assert re.search(r"the node is now drain(ing|ed) \('r' by root\)$", result.message)
        assert sent == ["drain", "state"]
        entries = [e for e in AuditLog(agent.state_dir).entries() if e.op == "drain"]
        assert len(entries) == 1, "applied once"
    finally:
        await run.stop()


async def test_an_agent_killed_mid_action_and_restarted_by_hand_loses_nothing(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    """The agent is stopped with a drain on its way and then SIGKILLed, so the drain is never
    read; restarted by hand, it comes back schedulable. The console reports the drain as
    unknown with the node's state read back (schedulable: it did not happen), sends it only
    once, and the link recovers by itself."""
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))

    async def by_hand() -> None:  # as an operator would
        await asyncio.to_thread(agent.start)

    link = Rereading(run.link, by_hand)
    sent = link.sent
    try:
        await until(lambda: run.view.link == "live", "live")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        action = asyncio.create_task(run_action(link, [run.view.name], "drain", {"reason": "r"}))
        await until(lambda: sent == ["drain"], "the drain sent")
        agent.proc.kill()
        agent.proc.wait()
        [result] = await action
        assert result.outcome == "unknown", result
        assert "the link dropped before the answer" in result.message
        assert result.message.endswith("the node is now schedulable"), result.message
        assert sent[0] == "drain" and set(sent[1:]) == {"state"}, "the drain sent once only"
        assert not [e for e in AuditLog(agent.state_dir).entries() if e.op == "drain"]
        await until(lambda: run.view.link == "live", "live again, without a console restart")
    finally:
        await run.stop()


async def test_a_flooding_agent_is_paced_and_does_not_starve_the_others(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    """A broken agent sends samples as fast as its socket takes them (declaring 0.1 s); a
    normal one beside it samples at 0.1 s. The console takes the flood at no more than ten
    times its declared rate, and the normal node's samples keep arriving at theirs."""
    good = agent_factory(*FAST).start()
    sock, sent_file = short_tmp / "flood.sock", short_tmp / "flood.sent"
    flooder = subprocess.Popen(  # noqa: ASYNC220 started once, before the links
        [sys.executable, "-m", "tests.fakes.bad_agent", "flood", str(sock), str(sent_file)],
        cwd=REPO,
    )
    try:
        await until(sock.exists, "the flooder's socket")
        flood_entry = dataclasses.replace(
            entry(sshd, str(sock)), name="flood", hostname="127.0.0.1"
        )
        fleet = FleetState([entry(sshd, good.socket), flood_entry])
        links = FleetLinks([entry(sshd, good.socket), flood_entry], options(sshd), fleet=fleet)

        def seqs() -> dict[str, int]:  # samples taken so far, by the agents' numbering
            return {n: v.sample.seq if v.sample else 0 for n, v in fleet.nodes.items()}

        async with links:
            await until(lambda: all(v.link == "live" for v in fleet.nodes.values()), "both live")
            loop = asyncio.get_running_loop()
            start = loop.time()
            base = seqs()
            sent0 = int(sent_file.read_text() or 0)
            while loop.time() - start < 3.0:  # a fixed window to count in, not a wait
                fleet.flush()
                await asyncio.sleep(0.1)
            took = loop.time() - start
            got = {n: seq - base[n] for n, seq in seqs().items()}
            sent = int(sent_file.read_text()) - sent0
        assert sent > 5 * got["flood"], f"the flood was real: {sent} sent, {got['flood']} taken"
        assert got["flood"] <= PACE_FACTOR / 0.1 * took + PACE_BURST
        assert got["127.0.0.1"] >= 0.8 * took / 0.1, f"the good node kept pace: {got}"
    finally:
        flooder.kill()
        flooder.wait()


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("mute", "the agent said nothing in 1 s"),
        ("greet", "the agent sent nothing after its hello in 1 s"),
    ],
)
async def test_a_stalled_agent_is_down_and_the_others_stay_live(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path, mode: str, says: str
) -> None:
    """An agent that accepts the connection and then never speaks (or greets and then never
    speaks again) is shown down with the reason, and retried; the node beside it is live."""
    good = agent_factory(*FAST).start()
    sock = short_tmp / "stalled.sock"
    stalled = subprocess.Popen(  # noqa: ASYNC220 started once, before the links
        [sys.executable, "-m", "tests.fakes.bad_agent", mode, str(sock)], cwd=REPO
    )
    try:
        await until(sock.exists, "the stalled agent's socket")
        bad = dataclasses.replace(entry(sshd, str(sock)), name="stalled", hostname="127.0.0.1")
        opts = options(sshd, connect_timeout=1.0)
        links = FleetLinks([entry(sshd, good.socket), bad], opts)
        fleet = links.fleet
        async with links:
            await until(lambda: fleet.nodes["stalled"].link == "agent_down", "stalled: down")
            assert fleet.nodes["stalled"].link_reason == says
            assert fleet.nodes["127.0.0.1"].link == "live"
            seq = fleet.nodes["127.0.0.1"].sample
            assert seq is not None
            await until(
                lambda: (s := fleet.nodes["127.0.0.1"].sample) is not None and s.seq > seq.seq + 5,
                "the good node's samples to keep coming",
            )
    finally:
        stalled.kill()
        stalled.wait()


@pytest.mark.parametrize(
    ("minor", "skipped"), [(PROTOCOL_MINOR + 1, True), (PROTOCOL_MINOR, False)]
)
async def test_what_a_newer_agent_adds_is_skipped_and_nothing_else(
    sshd: Sshd, short_tmp: Path, minor: int, skipped: bool
) -> None:
    """A frame type and an event kind from a later minor: an older console skips them and
    stays live (so agents can be upgraded first); from an agent of our own minor the same
    frames are an error, and the session ends with it."""
    sock = short_tmp / "future.sock"
    proto = f"{PROTOCOL_MAJOR}.{minor}"
    agent = subprocess.Popen(  # noqa: ASYNC220 started once, before the link
        [sys.executable, "-m", "tests.fakes.bad_agent", "future", str(sock), proto], cwd=REPO
    )
    try:
        await until(sock.exists, "the agent's socket")
        node = dataclasses.replace(entry(sshd, str(sock)), name="n1", hostname="127.0.0.1")
        links = FleetLinks([node], options(sshd, connect_timeout=2.0))
        view = links.fleet.nodes["n1"]
        async with links:
            if skipped:
                await until(
                    lambda: (s := view.sample) is not None and s.seq >= 10 and view.link == "live",
                    "samples past the unknown frames",
                )
                assert links.links["n1"].sessions == 1
                assert [e.kind for e in view.events] == []
            else:
                await until(lambda: view.link == "agent_down", "the session ended")
                assert "Invalid value 'forecast'" in view.link_reason
    finally:
        agent.kill()
        agent.wait()
