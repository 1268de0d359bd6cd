"""A node behind its own network namespace, so a test can cut it off the network for real.

The node's sshd runs inside a namespace joined to this host by a veth pair; a partition is an
nftables table in that namespace that drops every packet in and out (design.md §6: ``tc netem``
is not in this kernel, nftables is). Dropping, not rejecting, is what a dead switch or a pulled
cable does: no RST, no ICMP, the console hears nothing and must notice by itself.

Unix sockets with a path are not scoped by network namespace, so the agent keeps running on
the host side and the namespaced sshd still reaches its socket, as on a real node.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import skip_or_fail, system_tool

_TABLE = "gfcut"


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Netns:
    name: str
    host_addr: str  # this side of the veth pair
    node_addr: str  # the namespace's side: where its sshd listens

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Drop every packet in and out of the namespace."""
        ns = self.exec_prefix()
        _run(*ns, "nft", "add", "table", "inet", _TABLE)
        for hook in ("input", "output"):
            spec = f"{{ type filter hook {hook} priority 0; policy drop; }}"
            _run(*ns, "nft", "add", "chain", "inet", _TABLE, hook, spec)

    def heal(self) -> None:
        _run(*self.exec_prefix(), "nft", "delete", "table", "inet", _TABLE)


@contextmanager
def netns() -> Iterator[Netns]:
    """A namespace with a veth pair to this host, removed afterwards whatever happens."""
    if os.geteuid() != 0:
        skip_or_fail("network namespaces need root")
    system_tool("ip")
    system_tool("nft")
    tag = f"{os.getpid() % 100000}"
    name, host_if, node_if = f"gf{tag}", f"gfh{tag}", f"gfn{tag}"
    third = os.getpid() % 250 + 1  # a /30 of 10.213.x.0 per test process
    ns = Netns(name, f"10.213.{third}.1", f"10.213.{third}.2")
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if)
        _run("ip", "link", "set", node_if, "netns", name)
        _run("ip", "addr", "add", f"{ns.host_addr}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = ns.exec_prefix()
        _run(*inside, "ip", "addr", "add", f"{ns.node_addr}/30", "dev", node_if)
        _run(*inside, "ip", "link", "set", node_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
    except RuntimeError as exc:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        skip_or_fail(f"cannot make a network namespace here: {exc}")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
