"""The fleet inventory: which nodes exist, in which pool, and how to reach each one.

A TOML file of groups, each naming its nodes as a hostlist expression (``gpu[01-16,20]``, the
notation Slurm sites already use; python-hostlist expands it) with the pool and the SSH settings
they share. Settings left out here are left to the user's ``~/.ssh/config``, as OpenSSH would:
the transport passes only what the inventory says explicitly.

Found at ``--inventory PATH``, else ``$GPUFLEET_INVENTORY``, else
``~/.config/gpufleet/fleet.toml``, else ``/etc/gpufleet/fleet.toml``. A bad file is one error
naming the file, the line or key, and what is wrong.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import hostlist
import msgspec

from agents.protocol import GpufleetError, clip

DEFAULT_SOCKET: Final = "/run/gpufleet/agent.sock"
USER_INVENTORY: Final = Path("~/.config/gpufleet/fleet.toml")
SYSTEM_INVENTORY: Final = Path("/etc/gpufleet/fleet.toml")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH_RE: Final = re.compile(r" - at `\$\.?(.*)`$")
#: What OpenSSH refuses in a host name and in a user name (ssh.c, valid_hostname and
#: valid_ruser): characters a shell gives meaning to. A name reaches a shell wherever the
#: operator's ssh_config has a ProxyCommand (``%h``, ``%r``), so the inventory refuses them too.
_HOST_REFUSED: Final = frozenset("'`\"$\\;&<>|(){},")
_USER_REFUSED: Final = frozenset("'`\";&<>|(){}")


class InventoryError(GpufleetError):
    """The inventory is missing or wrong; the message names the file and the key or line."""


class _Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SshSettings(_Table, kw_only=True):
    """What a group may say about reaching its nodes; None leaves it to ~/.ssh/config."""

    hostname: str | None = None  # the address to reach, as ssh's HostName; default: the name
    user: str | None = None
    port: int | None = None
    jump: str | None = None  # ProxyJump: a host, or user@host:port
    identity: str | None = None  # IdentityFile
    socket: str | None = None  # the agent's socket on the node; may use {name} and {short}
    known_hosts: str | None = None  # a known_hosts file for these nodes (default: the user's)
    #: How the scheduler names the node: a template over {name} (the inventory name) and
    #: {short} (up to the first dot), e.g. "{short}". None: the same as the inventory name.
    scheduler_name: str | None = None


class GroupTable(SshSettings, kw_only=True):
    name: str
    nodes: str
    pool: str | None = None


class InventoryFile(_Table, kw_only=True):
    defaults: SshSettings = msgspec.field(default_factory=SshSettings)
    group: list[GroupTable] = []


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node as the console reaches it."""

    name: str  # as written in the inventory: the SSH host (resolved through ~/.ssh/config)
    group: str
    pool: str
    hostname: str | None
    user: str | None
    port: int | None
    jump: str | None
    identity: str | None
    socket: str
    scheduler_name: str
    known_hosts: str | None = None


@dataclass(frozen=True, slots=True)
class Inventory:
    source: str
    nodes: list[NodeEntry]

    def by_name(self) -> dict[str, NodeEntry]:
        return {n.name: n for n in self.nodes}


def find_inventory(explicit: Path | None, env: dict[str, str] | None = None) -> Path:
    """The inventory path by the documented order; InventoryError if none exists."""
    env = dict(os.environ) if env is None else env
    if explicit is not None:
        return explicit
    if env.get("GPUFLEET_INVENTORY"):
        return Path(env["GPUFLEET_INVENTORY"])
    for candidate in (USER_INVENTORY.expanduser(), SYSTEM_INVENTORY):
        if candidate.exists():
            return candidate
    raise InventoryError(
        f"no inventory: pass --inventory PATH, set GPUFLEET_INVENTORY, or write "
        f"{USER_INVENTORY} or {SYSTEM_INVENTORY}"
    )


def load_inventory(path: Path) -> Inventory:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"{path}: no such file") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_inventory(data, str(path))


def parse_inventory(data: bytes | str, source: str = "<inventory>") -> Inventory:
    try:
        doc = msgspec.toml.decode(data, type=InventoryFile)
    except msgspec.ValidationError as exc:
        text = clip(str(exc), 1000)  # a quoted TOML key may hold a newline: keep one line
        m = _PATH_RE.search(text)
        where = f"{m.group(1)}: " if m else ""
        raise InventoryError(f"{source}: {where}{_PATH_RE.sub('', text)}") from None
    except msgspec.DecodeError as exc:
        raise InventoryError(f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{source}: not valid UTF-8 (byte {exc.start})") from None
    try:
        return Inventory(source, _expand(doc))
    except ValueError as exc:
        raise InventoryError(f"{source}: {exc}") from None


def _expand(doc: InventoryFile) -> list[NodeEntry]:
    if not doc.group:
        raise ValueError("no [[group]] tables: an inventory needs at least one group of nodes")
    seen: dict[str, str] = {}
    names: set[str] = set()
    nodes: list[NodeEntry] = []
    d = doc.defaults
    _check_settings(d, "defaults")
    for i, g in enumerate(doc.group):
        where = f"group[{i}] ({g.name!r})"
        if not _NAME_RE.fullmatch(g.name):
            raise ValueError(f"group[{i}].name: {g.name!r} is not a usable name")
        if g.name in names:
            raise ValueError(f"{where}.name: a group of that name is already defined")
        names.add(g.name)
        _check_settings(g, where)
        try:
            hosts = hostlist.expand_hostlist(g.nodes)
        except hostlist.BadHostlist as exc:
            raise ValueError(f"{where}.nodes: bad hostlist {g.nodes!r}: {exc}") from None
        if not hosts:
            raise ValueError(f"{where}.nodes: {g.nodes!r} names no nodes")
        template = g.scheduler_name or d.scheduler_name or "{name}"
        socket = g.socket or d.socket or DEFAULT_SOCKET
        for host in hosts:
            if not _NAME_RE.fullmatch(host):
                raise ValueError(f"{where}.nodes: {host!r} is not a host name")
            if host in seen:
                raise ValueError(f"{where}.nodes: {host} is already in group {seen[host]!r}")
            seen[host] = g.name
            nodes.append(
                NodeEntry(
                    name=host,
                    group=g.name,
                    pool=g.pool or g.name,
                    hostname=g.hostname or d.hostname,
                    user=g.user or d.user,
                    port=g.port or d.port,
                    jump=g.jump or d.jump,
                    identity=g.identity or d.identity,
                    socket=socket.format(name=host, short=host.split(".")[0]),
                    scheduler_name=template.format(name=host, short=host.split(".")[0]),
                    known_hosts=g.known_hosts or d.known_hosts,
                )
            )
    return nodes


def _control(c: str) -> bool:
    return ord(c) < 32 or 127 <= ord(c) < 160


def _host_problem(text: str) -> str | None:
    """Why OpenSSH would refuse ``text`` as a host name, or None (ssh.c's valid_hostname)."""
    if not text:
        return "is empty"
    if text.startswith("-"):
        return "starts with '-'"
    if any(c in _HOST_REFUSED or c.isspace() or _control(c) for c in text):
        return "contains characters OpenSSH refuses in a host name (shell, space or control)"
    return None


def _user_problem(text: str) -> str | None:
    """Why OpenSSH would refuse ``text`` as a user name, or None (ssh.c's valid_ruser)."""
    if not text:
        return "is empty"
    if text.startswith("-"):
        return "starts with '-'"
    if text.endswith("\\"):
        return "ends with '\\'"
    if any(c in _USER_REFUSED or _control(c) for c in text):
        return "contains characters OpenSSH refuses in a user name (shell or control)"
    if any(c.isspace() and text[i + 1 : i + 2] == "-" for i, c in enumerate(text)):
        return "has '-' after a space"
    return None


def _jump_problem(text: str) -> str | None:
    """Why a ProxyJump value, ``[user@]host[:port]`` hops separated by commas, is refused."""
    if text.lower() == "none":
        return None
    for hop in text.split(","):
        user, at, host = hop.rpartition("@")
        if host.count(":") == 1:
            host, _, port = host.partition(":")
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                return f"hop {hop!r}: {port!r} is not a TCP port"
        problem = (_user_problem(user) if at else None) or _host_problem(host)
        if problem:
            return f"hop {hop!r} {problem}"
    return None


def _check_settings(s: SshSettings, where: str) -> None:
    if s.port is not None and not 1 <= s.port <= 65535:
        raise ValueError(f"{where}.port: {s.port} is not a TCP port")
    for key, check in (("hostname", _host_problem), ("user", _user_problem)):
        value = getattr(s, key)
        problem = None if value is None else check(value)
        if problem:
            raise ValueError(f"{where}.{key}: {value!r} {problem}")
    problem = None if s.jump is None else _jump_problem(s.jump)
    if problem:
        raise ValueError(f"{where}.jump: {s.jump!r}: {problem}")
    if s.socket is not None and not s.socket.startswith("/"):
        raise ValueError(f"{where}.socket: {s.socket!r} must be an absolute path")
    for key in ("scheduler_name", "socket"):
        template = getattr(s, key)
        if template is None:
            continue
        try:
            template.format(name="n", short="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{where}.{key}: {template!r} may use only {{name}} and {{short}} ({exc})"
            ) from None
