"""One SSH connection per node, carrying the agent's stream into the fleet model.

Each ``NodeLink`` connects with the operator's own keys, ssh-agent and ``~/.ssh/config`` (as
asyncssh reads them, the way OpenSSH would), verifies the host key against known_hosts, opens a
direct-streamlocal channel to the agent's unix socket, says hello, and feeds every frame to the
``FleetState``. When anything fails it reports a link state with its reason and tries again
with exponential backoff and jitter. A shared semaphore bounds connections being set up at
once, because sshd drops connections past its MaxStartups (about 10 by default).

Host keys: ``strict`` (the default) accepts only keys already in known_hosts. ``accept-new``
(OpenSSH's StrictHostKeyChecking=accept-new) learns the key of a host known_hosts has never
seen and refuses a changed one. There is no mode that accepts anything silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import getpass
import logging
import os
import random
import shlex
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import asyncssh
from asyncssh.config import ConfigParseError, SSHClientConfig, SSHConfig

from agents.protocol import (
    PROTOCOL_MINOR,
    UNKNOWN_KIND,
    Error,
    Event,
    FrameSplitter,
    GpufleetError,
    Inventory,
    ProtocolError,
    Request,
    Response,
    Sample,
    clip,
    decode,
    encode,
    is_mismatch,
    our_hello,
    read_hello,
)
from console import __version__
from console.logs import ContextLog, InternalErrors, get_logger, internal_words
from console.model.fleet import FleetState, LinkState
from console.model.inventory import NodeEntry
from console.present.words import plural
from console.sources.delivery import REQUEST_SINCE, AgentTooOld, NotDelivered, knows

log = get_logger(__name__)


#: SSH handshakes in flight at once, fleet-wide, unless ``--fan-out`` says otherwise (pdsh's
#: default fan-out).
CONNECTING_AT_ONCE: Final = 32


@dataclass(frozen=True)
class LinkOptions:
    known_hosts: Path = Path("~/.ssh/known_hosts")
    host_keys: Literal["strict", "accept-new"] = "strict"
    client_keys: list[str] | None = None  # None: ssh-agent and the default key files
    ssh_config: list[str] | None = None  # None: ~/.ssh/config
    keepalive_interval: float = 1.0  # with keepalive_count_max, a dead link shows in ~5 s
    keepalive_count_max: int = 4
    connect_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: While the node's sshd answers and only its agent does not (stopped, restarting), the
    #: agent is asked again this often (x 0.5 to 1.5, jitter), on the SSH connection already
    #: open, with no backoff: see ``NodeLink._session``.
    agent_retry: float = 1.5
    #: The same on the attach fallback, where each try starts a process on the node
    #: (``attach_command``), not only a channel in its sshd: at least this, jittered too.
    attach_retry: float = 5.0
    #: The agent's buffered samples on connecting (the screen's sparklines). One-shot
    #: commands turn it off: at 200 nodes a full 15-minute buffer each is ~730 MB to decode.
    history: bool = True
    #: Run on the node when its sshd forbids streamlocal forwarding; gets ``--socket PATH``.
    attach_command: str = "gpufleet-agent attach"
    #: SSH handshakes in flight at once, fleet-wide (``--fan-out``).
    fan_out: int = CONNECTING_AT_ONCE


def one_shot(options: LinkOptions) -> LinkOptions:
    """The options for a command that connects, acts or reads once, and leaves: no history."""
    return dataclasses.replace(options, history=False)


#: Live samples taken from an agent at most this many times its declared rate...
PACE_FACTOR: Final = 10.0
#: ... after a burst of this many.
PACE_BURST: Final = 50


class LinkFailure(Exception):
    """Why a session ended, as the link state and reason the screen shows."""

    def __init__(self, state: LinkState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class AgentRefused(LinkFailure):
    """The agent is there and ended the session itself, saying why (busy, too slow, a
    refusal): the link backs off before asking again, rather than retrying at once."""


class HostKeyPolicy(asyncssh.SSHClient):
    """Decides about a host key that known_hosts does not already trust.

    asyncssh calls ``validate_host_public_key`` with the host, address and port it actually
    connected to (after ~/.ssh/config), only for keys the known_hosts file did not vouch for
    and that are not revoked. "Never seen" is judged by the same lookup: any key, CA or
    revocation for that host, address and port means the key changed, and it is refused in
    every mode. An unreadable known_hosts file is refused too, never taken as empty.
    """

    def __init__(
        self, known_hosts: Path, learn: bool, said: logging.Logger | ContextLog = log
    ) -> None:
        self._path = known_hosts
        self._learn = learn
        self._log = said  # the node's (``node=...``): the host alone may be many nodes'
        self.verdict: Literal["unknown", "changed"] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        #: The key type the server offered, and those known_hosts holds for it (a changed
        #: key's reason names both).
        self.offered: str | None = None
        self.known_types: list[str] = []

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def reached(self) -> Literal["nothing", "tcp", "banner", "keys"]:
        """After a failed handshake, how far it got: no TCP connection; TCP but no SSH banner
        (sshd drops a connection past its MaxStartups so: "Exceeded MaxStartups", closed);
        the banner but no completed key exchange; or past it. Forgets the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return "nothing"
        if conn.get_extra_info("server_version") is None:
            return "tcp"
        return "banner" if conn.get_extra_info("send_cipher") is None else "keys"

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        try:
            seen = self._seen(host, addr, port)
        except (OSError, ValueError) as exc:
            self._log.warning("%s: cannot read %s: %s", host, self._path, exc)
            self.verdict = "changed"
            return False
        self.verdict = "changed" if seen else "unknown"
        self.offered = key.get_algorithm()
        if seen or not self._learn:
            return False
        where = host if port == 22 else f"[{host}]:{port}"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as f:
            f.write(f"{where} {key.export_public_key('openssh').decode().strip()}\n")
        self._log.warning("%s: learned its host key (accept-new)", host)
        return True

    def _seen(self, host: str, addr: str, port: int) -> bool:
        if not self._path.exists():
            return False
        matches = asyncssh.read_known_hosts(str(self._path)).match(host, addr, port)
        self.known_types = sorted({k.get_algorithm() for k in matches[0]})
        return any(bool(m) for m in matches)


def _trusted(path: Path) -> asyncssh.SSHKnownHosts | list[str]:
    """known_hosts for asyncssh, read here so that a bad file is reported as what it is. A
    missing file trusts nothing (as OpenSSH treats it); one that cannot be read or parsed
    trusts nothing either, and says so, rather than passing for a network failure."""
    if not path.exists():
        return []
    try:
        return asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError) as exc:
        raise LinkFailure(
            "hostkey_unknown", f"cannot use {path}: {exc}: no host key can be checked"
        ) from None


#: Link states an operator must act on to mend (a key, a login, a version): logged at
#: WARNING the first time. The others are routine, and mend themselves (INFO).
NEEDS_AN_OPERATOR: Final[frozenset[LinkState]] = frozenset(
    {"auth_failed", "hostkey_unknown", "hostkey_changed", "protocol_mismatch"}
)

#: What a link meets from the network, SSH, the operator's SSH set-up and the agent: the
#: fleet's failures, each a link state an operator can act on (``classify``). Anything else
#: raised in a link (a KeyError, TypeError, AttributeError...) is a fault of gpufleet's own
#: code: ``fault``, with its traceback in the log, never ``unreachable``, which would send
#: the operator to a node that is fine.
EXPECTED: Final[tuple[type[BaseException], ...]] = (
    GpufleetError,  # ours, in a person's words: LinkFailure, ProtocolError...
    asyncssh.Error,  # SSH: disconnected, channel refused, permission denied...
    OSError,  # the network: refused, reset, no route, cannot resolve
    TimeoutError,
    EOFError,
    asyncssh.KeyImportError,  # a key file the operator named that asyncssh cannot read
    ConfigParseError,  # an ssh_config asyncssh cannot parse
)


def classify(
    exc: BaseException,
    entry: NodeEntry,
    verdict: Literal["unknown", "changed"] | None = None,
    *,
    where: str | None = None,
    policy: HostKeyPolicy | None = None,
) -> LinkFailure:
    """The link state an operator needs, in an operator's words, with what to do. ``where``
    is the host:port the handshake went to; the raw error goes to the log, not here. An
    exception not ``EXPECTED`` is a fault of ours: ``fault``, saying where its traceback is
    (logging it is the caller's, once: ``InternalErrors``)."""
    if isinstance(exc, LinkFailure):
        return exc
    name = entry.name
    where = where or entry.hostname or name
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if verdict != "unknown":  # changed, revoked, or known_hosts unreadable
            types = ""
            if policy and policy.offered and policy.offered not in policy.known_types:
                known = ", ".join(policy.known_types) or "no key"
                types = f" (known_hosts has {known}; the server offers {policy.offered})"
            return LinkFailure(
                "hostkey_changed",
                f"host key for {name} does not match known_hosts (or is revoked){types}: find "
                "out why before removing the old key with ssh-keygen -R",
            )
        return LinkFailure(
            "hostkey_unknown",
            f"host key for {name} is not in known_hosts: ssh to it once, or use accept-new",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return LinkFailure("auth_failed", f"SSH authentication failed: {exc.reason}")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return LinkFailure(
            "agent_down",
            f"no agent at {entry.socket} ({exc.reason}): is gpufleet-agent running there?",
        )
    if isinstance(exc, ProtocolError):
        state: LinkState = "protocol_mismatch" if is_mismatch(exc.code) else "agent_down"
        return LinkFailure(state, exc.message)
    if isinstance(exc, asyncssh.DisconnectError):
        reason = clip(exc.reason)
        return LinkFailure("unreachable", f"the SSH connection to {where} ended: {reason}")
    if isinstance(exc, OSError | TimeoutError | EOFError):
        return LinkFailure("unreachable", f"the SSH connection to {where} was lost")
    if isinstance(exc, EXPECTED):
        return LinkFailure("unreachable", f"{type(exc).__name__}: {clip(str(exc))}")
    return LinkFailure("fault", internal_words(exc, log))


def _same(policy: HostKeyPolicy) -> HostKeyPolicy:
    """asyncssh's client factory: the connection's policy, made before it."""
    return policy


def _host_port(where: str) -> tuple[str, str]:
    """``host:port`` as its two parts ("" for no port); an IPv6 address is left whole."""
    host, _, port = where.rpartition(":") if where.count(":") == 1 else (where, "", "")
    return host, port


def handshake_words(exc: BaseException, where: str, waited: float) -> str:
    """Why a handshake failed, as an operator reads it (not ``[Errno 111] Connect call
    failed ('127.0.0.1', 1)``), and what to look at."""
    host, port = _host_port(where)
    on_port = f" on port {port}" if port else ""
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}{on_port}: is sshd running there, on that port?"
    if isinstance(exc, TimeoutError):
        return f"no SSH answer from {where} in {waited:g} s: is the node up, and is that its sshd?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: check the name (or its HostName in ssh_config)"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {host}: is the node up, and the network to it?"
    if isinstance(exc, (ConnectionResetError, asyncssh.ConnectionLost, EOFError)):
        return f"{where} closed the connection during the SSH handshake: see its sshd's log"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"{where} ended the SSH connection: {clip(exc.reason)}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or type(exc).__name__}"
    return f"cannot connect to {where}: {type(exc).__name__}: {clip(str(exc))}"


#: Handshakes in flight at once to one destination sshd (host:port after ssh_config): nodes
#: that share one sshd, a load balancer or a bastion reached without a jump entry would
#: otherwise meet its MaxStartups (10:30:100 by default: drops start past 10).
CONNECTING_PER_HOST: Final = 10
#: A handshake the server dropped before its banner (sshd past MaxStartups) is tried again,
#: after a pause growing from the first to the second figure (jittered), for as long after
#: the first drop as a connect may take (``connect_timeout``).
DROP_RETRY: Final = (0.25, 2.0)
#: ProxyJump hops followed through ssh_config before the chain is called a loop.
MAX_JUMPS: Final = 16


def _config_paths(options: LinkOptions) -> list[str]:
    if options.ssh_config is not None:
        return options.ssh_config
    default = Path("~/.ssh/config").expanduser()
    return [str(default)] if os.access(default, os.R_OK) else []


def _hop(text: str) -> tuple[str | None, str, int | None]:
    """One ProxyJump hop, ``[user@]host[:port]``, as asyncssh splits it."""
    user, _, host = text.rpartition("@")
    port: int | None = None
    if host.count(":") == 1:
        host, _, digits = host.partition(":")
        port = int(digits) if digits.isdigit() else None
    return user or None, host, port


def _host_config(options: LinkOptions, host: str, port: int | None, user: str | None) -> SSHConfig:
    """What ssh_config says of one host, as asyncssh will read it to connect."""
    try:
        local = getpass.getuser()
    except (KeyError, OSError):
        local = "root"
    return SSHClientConfig.load(
        None, _config_paths(options), False, False, False, local, user or (), host, port or ()
    )


def proxy_command(entry: NodeEntry, options: LinkOptions) -> bool:
    """Whether ssh_config connects to the node through a ProxyCommand: a connection that
    closes before the SSH banner is then most likely that command failing, not its sshd."""
    if entry.jump:
        return False  # a jump host: asyncssh tunnels through it, ProxyCommand unused
    try:
        config = _host_config(options, entry.hostname or entry.name, entry.port, entry.user)
    except (OSError, ValueError):
        return False
    # ProxyJump wins over ProxyCommand (as asyncssh connects); "none" reads as unset.
    return bool(config.get("ProxyCommand")) and not config.get("ProxyJump")


def destination(entry: NodeEntry, options: LinkOptions) -> str:
    """The ``host:port`` a node's handshake goes to once ssh_config has had its say (its
    HostName and Port), which is the sshd whose MaxStartups it counts against. Follows the
    ProxyJump chain (the inventory's ``jump``, then ssh_config's) and refuses a loop, which
    asyncssh would otherwise follow until Python's recursion limit."""

    def resolve(host: str, port: int | None, user: str | None) -> tuple[str, int, str | None]:
        config = _host_config(options, host, port, user)
        name = str(config.get("Hostname", host))
        jump = config.get("ProxyJump")
        return name, int(str(config.get("Port", port or 22))), str(jump) if jump else None

    try:
        host, port, jump = resolve(entry.hostname or entry.name, entry.port, entry.user)
    except (OSError, ValueError):
        return f"{entry.hostname or entry.name}:{entry.port or 22}"  # asyncssh will say why
    chain = [entry.name]
    hops = entry.jump or jump
    while hops and hops.lower() != "none":
        if len(chain) > MAX_JUMPS:
            break
        user, hop, hop_port = _hop(hops.split(",")[0])
        if hop in chain:
            raise LinkFailure(
                "unreachable",
                f"ProxyJump loops through ssh_config: {' -> '.join([*chain, hop])}: fix the "
                "ProxyJump (or the inventory's jump) of one of these hosts",
            )
        chain.append(hop)
        try:
            _, _, hops_next = resolve(hop, hop_port, user)
        except (OSError, ValueError):
            break
        hops = hops_next
    return f"{host}:{port}"


class NodeLink:
    def __init__(
        self,
        entry: NodeEntry,
        fleet: FleetState,
        options: LinkOptions,
        connecting: asyncio.Semaphore,
        *,
        via: asyncio.Semaphore | None = None,
        hosts: dict[str, asyncio.Semaphore] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        errors: InternalErrors | None = None,
    ) -> None:
        """``connecting`` bounds handshakes fleet-wide; ``via`` those through this node's
        jump host, one sshd for many nodes; ``hosts`` holds one bound per destination sshd
        (``destination``), shared by every link of the fleet; ``errors``, the faults of our
        own code whose traceback was logged, shared too (one traceback a bug, not a node)."""
        self.entry = entry
        self.fleet = fleet
        self.options = options
        self._connecting = connecting
        self._via = via
        self._hosts = hosts if hosts is not None else {}
        self.destination: str | None = None  # host:port, once resolved
        self.drops = 0  # handshakes of the current try dropped before the server's banner
        self._now = monotonic
        self.sessions = 0  # sessions that reached the agent (for tests and the soak)
        self.ended = 0  # ... and of those, the ones over (console.model.heap counts them)
        self.via_attach = False  # the last session used `gpufleet-agent attach`
        self._identity = os.path.expanduser(entry.identity) if entry.identity else None
        self._known_hosts = Path(entry.known_hosts or options.known_hosts).expanduser()
        self._policy: HostKeyPolicy | None = None
        self._writer: Any = None  # the live session's, while there is one
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._ids = 0
        self.agent_proto: tuple[int, int] | None = None  # from the live session's hello
        self._skipped_newer = False
        self._stopping = False
        #: A handshake was started (a snapshot tells a node never tried from one that did
        #: not answer).
        self.tried = False
        self._log = ContextLog(log, node=entry.name)
        self._errors = errors if errors is not None else InternalErrors()
        #: The failure last logged, and the sessions then: the same again is DEBUG.
        self._said: tuple[LinkState, str, int] | None = None
        self._connections = 0  # SSH connections made (the first is "connected", then "again")

    def stop(self) -> None:
        """Ask the link to end. Its task is cancelled too, but a cancellation alone can be
        lost: Python 3.11's ``asyncio.wait_for`` (inside ``asyncssh.connect``) swallows one
        that lands as the wait completes, and the link would then take the result as an
        ordinary failure and try again, for ever. The link re-checks this flag (and its
        task's pending cancellation) wherever it would otherwise go on."""
        self._stopping = True

    def _check_stop(self) -> None:
        """Raise CancelledError if the link was asked to stop, whatever swallowed the
        cancellation itself."""
        task = asyncio.current_task()
        if self._stopping or (task is not None and task.cancelling() > 0):
            raise asyncio.CancelledError

    async def request(self, op: str, args: dict[str, Any], wait: float = 30.0) -> Response:
        """Send one request on the live session and wait for the agent's answer.

        Raises NotDelivered when there is no session to send it on (nothing happened), or when
        the session ends or the time runs out before the answer (it may or may not have
        happened: the agent's audit log says which)."""
        name = self.entry.name
        if self._writer is None:
            raise NotDelivered(f"{name}: not sent, the node is {self.fleet.nodes[name].link_said}")
        if not knows(self.agent_proto, op):
            assert self.agent_proto is not None  # for the type checker: knows() said so
            since = REQUEST_SINCE[op]
            speaks = "{}.{}".format(*self.agent_proto)
            raise AgentTooOld(
                f"{name}: agent too old for {op} (it speaks protocol {speaks}, {op} needs "
                f"{self.agent_proto[0]}.{since}): upgrade gpufleet-agent there; not sent"
            )
        self._ids += 1
        ident = self._ids
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        try:
            try:
                self._writer.write(encode(Request(id=ident, op=op, args=args)))
            except (OSError, asyncssh.Error) as exc:
                raise NotDelivered(f"{name}: not sent: {exc}") from None
            async with asyncio.timeout(wait):
                return await answer
        except TimeoutError:
            raise NotDelivered(
                f"{name}: no answer in {wait:g} s; it may have happened, see the node's audit log",
                maybe=True,
            ) from None
        finally:
            self._pending.pop(ident, None)

    def _end_session(self, why: str) -> None:
        self.ended += 1
        self._writer = None
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(
                    NotDelivered(
                        f"{self.entry.name}: the link dropped before the answer ({why}); it "
                        "may have happened, see the node's audit log",
                        maybe=True,
                    )
                )

    async def run(self) -> None:
        """Keep the node's stream flowing until cancelled.

        Every failure of the network, SSH or the agent is a link state, and the link tries
        again with backoff. So is a fault of our own code met in a session (``fault``, its
        traceback logged): the link tries again rather than stopping, because a bug that one
        unusual frame sets off would otherwise blind the console to that node until it is
        restarted, and the traceback is in the log already. Such a session does not reset
        the backoff even if it reached the agent, so a bug that every session meets costs a
        reconnect every ``backoff_max`` seconds, not one a second, and the node stays
        ``fault`` meanwhile. A fault in this loop itself (in reporting a failure) cannot be
        retried safely: the link stops, and says so on the node and in the log."""
        try:
            await self._keep_up()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._stopped(exc)

    async def _keep_up(self) -> None:
        delay = self.options.backoff_initial
        while True:
            self._check_stop()
            reached = self.sessions
            state: LinkState | None = None
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is a link state, never a crash
                self._check_stop()  # a failure that swallowed our stop is no failure
                state = self._failed(exc)
            if self.sessions > reached and state != "fault":
                delay = self.options.backoff_initial  # this session worked: start over gently
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)
            delay = min(self.options.backoff_max, delay * 2)

    def _failed(self, exc: Exception) -> LinkState:
        """Report a session's end, and return the link state it left. A method of its own so
        that nothing in ``run`` keeps the failure once reported: a ``LinkFailure`` raised
        inside the session carries its traceback, whose frames hold the ended session's
        connection and channel, which a local variable in ``run`` would keep alive until the
        next failure."""
        failure = classify(
            exc,
            self.entry,
            self._policy.verdict if self._policy else None,
            where=self.destination,
            policy=self._policy,
        )
        if failure.state == "fault":
            self._errors.report(exc, self._log, "reconnecting with backoff")
            self._said = None
        else:
            raw = "" if isinstance(exc, LinkFailure) else f" ({type(exc).__name__}: {exc})"
            self._say(failure.state, failure.reason, raw)
        self.fleet.set_link(self.entry.name, failure.state, failure.reason, self._now())
        return failure.state

    def _say(self, state: LinkState, reason: str, more: str = "") -> None:
        """Log a failure: the first time at INFO when it is routine (a node or an agent down,
        restarting, cut off: the screen shows it, and it mends itself), at WARNING when an
        operator must act (``NEEDS_AN_OPERATOR``); the same failure again, with no session
        between, at DEBUG, so that a node down for a day is one line, not one a retry."""
        said = (state, reason, self.sessions)
        if said == self._said:
            level = logging.DEBUG
        elif state in NEEDS_AN_OPERATOR:
            level = logging.WARNING
        else:
            level = logging.INFO
        self._said = said
        self._log.log(level, "%s: %s%s", state, reason, more)

    def _stopped(self, exc: Exception) -> None:
        """The link's own loop failed (a fault of ours in reporting a failure): it ends,
        the node showing why, since nothing will update it any more."""
        words = self._errors.report(exc, self._log, "the link stopped")
        try:
            reason = f"{words}; the link stopped (restart the console to reconnect it)"
            self.fleet.set_link(self.entry.name, "fault", reason, self._now())
        except Exception:
            self._log.exception("the fault could not be shown on the node")

    async def _connect(self) -> asyncssh.SSHClientConnection:
        e, o = self.entry, self.options
        kwargs: dict[str, Any] = {
            "port": e.port or (),
            "username": e.user or (),
            "client_keys": o.client_keys if o.client_keys is not None else (),
            "config": o.ssh_config if o.ssh_config is not None else (),
            "keepalive_interval": o.keepalive_interval,
            "keepalive_count_max": o.keepalive_count_max,
            # Bounded here with asyncio.timeout, not by asyncssh's wait_for (which loses a
            # cancellation that lands as the handshake completes, on Python 3.11).
            "connect_timeout": None,
        }
        if self._identity:
            kwargs["client_keys"] = [self._identity]
        if e.jump:
            kwargs["tunnel"] = e.jump
        kwargs = {k: v for k, v in kwargs.items() if v != ()}
        loop = asyncio.get_running_loop()
        give_up: float | None = None  # from the first drop on, as long as a connect may take
        pause = DROP_RETRY[0]
        self.drops = 0
        every_type = False  # offer every host key type, not only those known_hosts holds
        while True:
            policy = HostKeyPolicy(
                self._known_hosts, learn=o.host_keys == "accept-new", said=self._log
            )
            self._policy = policy
            try:
                async with self._via or contextlib.nullcontext(), self._turn():
                    self.tried = True
                    async with asyncio.timeout(o.connect_timeout):
                        return await asyncssh.connect(
                            e.hostname or e.name,
                            known_hosts=_trusted(self._known_hosts),
                            client_factory=functools.partial(_same, policy),
                            server_host_key_algs="default" if every_type else (),
                            **kwargs,
                        )
            except RecursionError:
                raise LinkFailure(
                    "unreachable", "ProxyJump loops through ssh_config: fix the ProxyJump lines"
                ) from None
            except UnicodeError:  # the resolver cannot even encode the name: the operator's
                host, _ = _host_port(self.destination or e.hostname or e.name)
                raise LinkFailure(
                    "unreachable",
                    f"cannot resolve {clip(host)}: not a valid host name (an empty label, or "
                    "one over 63 characters): check it in the inventory or ssh_config",
                ) from None
            except (OSError, asyncssh.DisconnectError) as exc:
                self._check_stop()
                reached = policy.reached()
                if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.PermissionDenied):
                    raise
                self._log.info("handshake with %s failed: %r", self.destination, exc)
                if reached == "tcp" and not isinstance(exc, TimeoutError):
                    # Closed before its banner: an sshd past its MaxStartups does that.
                    self.drops += 1
                    give_up = give_up or loop.time() + o.connect_timeout
                    if loop.time() + pause >= give_up:
                        raise self._dropped() from None
                    await asyncio.sleep(pause * random.uniform(0.5, 1.5))  # noqa: S311
                    pause = min(DROP_RETRY[1], pause * 2)
                    continue
                if reached == "banner" and policy.verdict is None and not every_type:
                    # The server greeted and hung up during key exchange, its host key never
                    # judged: known_hosts holds keys of other types than it has (asyncssh,
                    # as OpenSSH, offers only those). Offered every type, it shows its key,
                    # which known_hosts then refuses as changed, naming both types.
                    every_type = True
                    continue
                raise LinkFailure(
                    "unreachable",
                    handshake_words(
                        exc, self.destination or e.hostname or e.name, o.connect_timeout
                    ),
                ) from None
            finally:
                # The HostKeyPolicy may hold the connection: nothing keeps a failed one.
                policy.reached()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """A slot fleet-wide and one at the node's destination sshd, for one handshake.

        The destination is resolved (ssh_config parsed, as asyncssh will again to connect)
        only once the link has its fleet-wide slot, so that a fleet of 10,000 does not parse
        it 10,000 times before its first handshake. A link whose sshd has no slot free gives
        its fleet-wide one back while it waits, so that nodes of one busy sshd never hold up
        the rest of the fleet. Never waits on the sshd's bound holding the fleet-wide slot,
        so the two cannot deadlock."""
        fleet, host = self._connecting, None
        await fleet.acquire()
        held = [fleet]
        try:
            if self.destination is None:
                self.destination = destination(self.entry, self.options)
            host = self._hosts.setdefault(self.destination, asyncio.Semaphore(CONNECTING_PER_HOST))
            if host.locked():
                held.remove(fleet)
                fleet.release()
                await host.acquire()
                held.append(host)
                await fleet.acquire()
                held.append(fleet)
            else:
                await host.acquire()  # free: taken at once, no wait holding the other
                held.append(host)
            yield
        finally:
            for gate in held:
                gate.release()

    def _dropped(self) -> LinkFailure:
        return LinkFailure("unreachable", self.dropped_reason())

    def dropped_reason(self) -> str:
        """What an operator is told of handshakes the server dropped before its banner, or
        that ssh_config's ProxyCommand ended before it: MaxStartups is then the less likely
        cause, and raising it the wrong thing to tell."""
        if proxy_command(self.entry, self.options):
            return (
                f"the connection through ssh_config's ProxyCommand closed before the SSH "
                f"banner, {plural(self.drops, 'time')}: most likely the ProxyCommand failed: "
                f"try `ssh {self.entry.name} true` by hand; else the sshd behind it refused "
                "handshakes past MaxStartups: raise it there, or lower --fan-out"
            )
        return (
            f"{self.destination} dropped the connection before authentication (before its SSH "
            f"banner), {plural(self.drops, 'time')}: most likely its sshd refusing handshakes past "
            "MaxStartups (10:30:100 by default): raise it there (e.g. MaxStartups 100:30:300), "
            "or lower --fan-out"
        )

    async def _session(self) -> None:
        """One SSH connection, and on it the agent's sessions one after another.

        While sshd answers but the agent does not (stopped, restarting under systemd), the
        agent is asked again every ``agent_retry`` seconds on the connection already open,
        without backing off: an agent back is live again within about that, not after a
        backoff grown while it was away. A retry costs a channel open on that connection (no
        handshake, no MaxStartups slot, no key exchange), and the jitter keeps the links of
        a fleet whose agents went down together (an upgrade) from asking in step, so even
        1,000 dead agents cost each node's sshd one small request every second or two. On
        the attach fallback a retry runs ``gpufleet-agent attach`` there, so it comes every
        ``attach_retry`` seconds instead. Anything else (the connection lost, a version
        mismatch, an agent that is there and hung up on us, busy or refusing) ends the
        connection, and ``run`` backs off."""
        async with await self._connect() as conn:
            self._check_stop()  # a connection made as the stop came: closed, not used
            streamlocal = False  # the agent's socket has answered on this connection
            self._connections += 1
            again = " again" if self._connections > 1 else ""
            self._log.info("SSH connected%s to %s", again, self.destination)
            while True:
                reached = self.sessions
                try:
                    await self._agent_session(conn, attach=not streamlocal)
                except Exception as exc:
                    self._check_stop()
                    down = None if conn.is_closed() else self._agent_down(exc)
                    if down is None:
                        raise
                    self.fleet.set_link(self.entry.name, "agent_down", down, self._now())
                    self._say("agent_down", down, " (asking again)")
                # Once streamlocal has worked here, a refusal means the socket is not there:
                # no attach to run on the node every retry, only to be told the same.
                streamlocal = streamlocal or (self.sessions > reached and not self.via_attach)
                await asyncio.sleep(self._agent_retry_wait())

    def _agent_retry_wait(self) -> float:
        """Seconds until the agent is asked again on the open connection. Jittered (x 0.5 to
        1.5) so the links of agents that went down together do not ask in step; longer on
        the attach fallback, where a try runs a process on the node, not only a channel."""
        wait = self.options.agent_retry
        if self.via_attach:
            wait = max(wait, self.options.attach_retry)
        return wait * random.uniform(0.5, 1.5)  # noqa: S311

    def _agent_down(self, exc: Exception) -> str | None:
        """Why the agent is not there (its socket refused, its stream ended, silent,
        garbled), or None for anything else, an agent that hung up on us included. The
        reason alone comes back: keeping ``exc`` while waiting would keep its traceback, and
        the ended session in it."""
        if isinstance(exc, AgentRefused):
            return None
        failure = classify(exc, self.entry)
        return failure.reason if failure.state == "agent_down" else None

    async def _agent_session(self, conn: asyncssh.SSHClientConnection, attach: bool) -> None:
        """One session with the agent on an open SSH connection, until it ends (it raises)."""
        name = self.entry.name
        frames, writer = await self._open(conn, attach)
        wait = self.options.connect_timeout
        try:
            async with asyncio.timeout(wait):  # a mute agent is as good as down
                first = await frames.next()
        except TimeoutError:
            raise LinkFailure("agent_down", f"the agent said nothing in {wait:g} s") from None
        # Not a hello: agent_down; another major: protocol_mismatch (``classify``).
        greeting = read_hello(first, "the agent")
        self.agent_proto = greeting.version
        self._skipped_newer = False  # logged once a session
        agent = greeting.hello
        self.fleet.set_agent(name, agent.software, agent.proto, agent.interval_s)
        software = f"gpufleet {__version__}"
        writer.write(encode(our_hello("console", software, history=self.options.history)))
        self.sessions += 1
        self._writer = writer
        why = "the session ended"
        pace = _Pace(agent.interval_s)
        try:
            try:  # a stalled agent greets and then says nothing: that is down, not slow
                async with asyncio.timeout(wait):
                    frame = await frames.next()
            except TimeoutError:
                raise LinkFailure(
                    "agent_down", f"the agent sent nothing after its hello in {wait:g} s"
                ) from None
            while True:
                if isinstance(frame, Sample) and not frame.replay:
                    await pace.one()  # a flooding agent is read at its own pace, no faster
                if isinstance(frame, Inventory | Sample | Event):
                    self.fleet.apply(name, frame, self._now())
                elif isinstance(frame, Response):
                    answer = self._pending.get(frame.id)
                    if answer is not None and not answer.done():
                        answer.set_result(frame)
                elif isinstance(frame, Error) and frame.fatal:
                    # The agent refusing our version is a mismatch (one side to
                    # upgrade), not an agent that is down.
                    state: LinkState = (
                        "protocol_mismatch" if is_mismatch(frame.code) else "agent_down"
                    )
                    raise AgentRefused(state, f"agent: {frame.message}")
                frame = await self._next_known(frames)
        except BaseException as exc:
            why = str(exc) or type(exc).__name__
            raise
        finally:
            self._end_session(why)

    async def _next_known(self, frames: _Frames) -> Any:
        """The next frame this console can read. A newer agent's frame of a type (or holding
        a value) this version does not know is its protocol's addition: skipped, logged once
        per session, so that upgrading agents first never cuts older consoles off."""
        while True:
            try:
                return await frames.next()
            except ProtocolError as exc:
                newer = self.agent_proto is not None and self.agent_proto[1] > PROTOCOL_MINOR
                if exc.code != UNKNOWN_KIND or not newer:
                    raise
                if not self._skipped_newer:
                    self._log.info("skipping frames a newer agent sent: %s", exc)
                self._skipped_newer = True

    async def _open(
        self, conn: asyncssh.SSHClientConnection, attach: bool = True
    ) -> tuple[_Frames, Any]:
        """A direct-streamlocal channel to the agent's socket, or else ``gpufleet-agent
        attach`` run on the node, which bridges its stdin/stdout to the same socket (the agent
        sees the same peer either way). OpenSSH answers "open failed" alike for forwarding
        that is forbidden (AllowStreamLocalForwarding no) and for a socket that is not there,
        so any refusal tries attach (unless ``attach`` is off), and attach's own words say
        which it was."""
        try:
            reader, writer = await conn.open_unix_connection(self.entry.socket)
            self.via_attach = False
            return _Frames(reader), writer
        except asyncssh.ChannelOpenError as exc:
            if not attach:
                raise
            refused = exc.reason
        # An SSH exec request is a string the remote shell parses: quote what we add to it.
        command = f"{self.options.attach_command} --socket {shlex.quote(self.entry.socket)}"
        process = await conn.create_process(command, encoding=None)
        self.via_attach = True
        why = f"streamlocal to {self.entry.socket}: {refused}; attach"
        return _Frames(process.stdout, process.stderr, why), process.stdin


#: Seconds ``stop_links`` waits for cancelled links to end, twice, before leaving them.
STOP_GRACE: Final = 2.0


async def stop_links(
    links: Iterable[NodeLink], tasks: Collection[asyncio.Task[None]], grace: float = STOP_GRACE
) -> None:
    """End the links' tasks within about ``2 * grace`` seconds, whatever the network does:
    every command and the screen's quit wait on this, so it must never wait unbounded. Each
    link is told to stop and its task cancelled; a task still running after ``grace`` is
    cancelled again, and one still running after that is left behind with a log line."""
    for link in links:
        link.stop()
    pending = {task for task in tasks if not task.done()}
    for _ in range(2):
        for task in pending:
            task.cancel()
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a link's end is never an unhandled error
    if pending:
        log.warning(
            "%d link(s) did not stop within %g s of being cancelled twice; left behind",
            len(pending),
            2 * grace,
        )


class _Pace:
    """Live samples from one agent are taken at most ``PACE_FACTOR`` times its declared rate
    (a burst of ``PACE_BURST`` allowed). Past that the link stops reading for a moment: the
    SSH channel's window fills and the agent's own bounded queue drops what it cannot send,
    so a broken or hostile agent that floods costs the console no more than a few normal ones
    and cannot starve the other nodes' links of the event loop."""

    def __init__(self, interval: float | None, now: Callable[[], float] = time.monotonic) -> None:
        self._rate = PACE_FACTOR / max(interval or 1.0, 0.01)  # samples per second
        self._tokens = float(PACE_BURST)
        self._now = now
        self._last = now()

    async def one(self) -> None:
        t = self._now()
        self._tokens = min(PACE_BURST, self._tokens + (t - self._last) * self._rate)
        self._last = t
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self._rate)
            self._tokens = 1.0
            self._last = self._now()
        self._tokens -= 1


class _Frames:
    """Frames from an SSH channel's byte stream."""

    def __init__(
        self,
        reader: asyncssh.SSHReader[bytes],
        stderr: asyncssh.SSHReader[bytes] | None = None,
        what: str = "",
    ) -> None:
        self._reader = reader
        self._stderr = stderr  # attach's: its one-line error says why it ended
        self._what = what
        self._splitter = FrameSplitter()
        self._lines: list[bytes | None] = []

    async def next(self) -> Any:
        while not self._lines:
            data = await self._reader.read(65536)
            if not data:
                said = ""
                if self._stderr is not None:
                    said = (await self._stderr.read(4096)).decode(errors="replace").strip()
                reason = f"{self._what}: {clip(said)}" if said else "the agent closed the stream"
                raise LinkFailure("agent_down", reason)
            self._lines.extend(self._splitter.feed(data))
        line = self._lines.pop(0)
        if line is None:
            raise ProtocolError("too_large", "the agent sent a frame over the size limit")
        return decode(line)
