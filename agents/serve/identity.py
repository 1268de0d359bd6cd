"""Who is on the other end of the socket, from the kernel, not from anything they send.

Over SSH, sshd opens the unix socket as the logged-in user, so SO_PEERCRED on our end names
that user; ``gpufleet-agent attach`` run by sshd does the same. A client cannot claim another
identity because the protocol has no field for it.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from agents.config import RolesSection
from agents.protocol import Role

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.user}(uid={self.uid})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def _group_names(user: str, uid: int, gid: int) -> tuple[str, ...]:
    """The user's groups from the account database (primary first)."""
    try:
        gids = os.getgrouplist(user, gid) if not user.startswith("uid:") else [gid]
    except OSError:
        gids = [gid]
    names: list[str] = []
    for g in dict.fromkeys(gids):
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            names.append(f"gid:{g}")
    return tuple(names)


def peer_of(sock: socket.socket) -> Peer:
    """The connecting process's credentials as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    user = _user_name(uid)
    return Peer(pid=pid, uid=uid, gid=gid, user=user, groups=_group_names(user, uid, gid))


def role_of(peer: Peer, roles: RolesSection, agent_uid: int | None = None) -> Role:
    """Operators: root, the agent's own user, listed users, members of listed groups."""
    own = os.geteuid() if agent_uid is None else agent_uid
    if peer.uid in (0, own):
        return "operator"
    if peer.user in roles.operators:
        return "operator"
    if any(g in roles.operator_groups for g in peer.groups):
        return "operator"
    return "viewer"
