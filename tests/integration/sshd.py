"""A private OpenSSH server on loopback, with throwaway keys made for each test.

Real sshd, as a site runs it (design.md §6): its own config, host key and authorized_keys, on
127.0.0.1 and a free port, with streamlocal forwarding allowed. Keys are generated here and
never written anywhere but the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import psutil

from tests.conftest import skip_or_fail, system_tool, wait_for

#: Ports ``free_port`` has given out in this process: a Slurm cluster asks for five before it
#: starts any daemon, and two of them must never be the same one.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, for a server started next: picked below the kernel's range
    for outgoing connections, where one of the tests' own client connections cannot take it
    between this check and the server's bind (port 0 hands out a port from that range: a
    Slurm daemon once lost its port so)."""
    low, _high = (
        int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    for _ in range(200):
        port = random.randrange(10000, max(10001, low))
        if port in _HANDED_OUT:  # free now, but promised to a server not started yet
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_key(path: Path, key: asyncssh.SSHKey) -> None:
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)


@dataclass
class Sshd:
    root: Path
    port: int
    host_key: asyncssh.SSHKey
    client_key_path: Path
    known_hosts: Path
    address: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        key = key or self.host_key
        public = key.export_public_key("openssh").decode().strip()
        return f"[{self.address}]:{self.port} {public}\n"

    def stop(self) -> None:
        """Stop sshd and the sessions it spawned (they outlive the listener otherwise)."""
        if self.proc is not None and self.proc.poll() is None:
            sessions = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.terminate()
            self.proc.wait(10)
            for child in sessions:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.terminate()
            psutil.wait_procs(sessions, timeout=10)

    def start(self) -> None:
        """(Re)start sshd on its port with the host key now in ``root/host_key``."""
        log = (self.root / "sshd.log").open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)
        log.close()

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex((self.address, self.port)) == 0

        wait_for(listening, "sshd to listen", 15)

    def rekey(self) -> asyncssh.SSHKey:
        """Restart with a new host key, as a reinstalled (or impersonated) host would."""
        self.stop()
        key = asyncssh.generate_private_key("ssh-ed25519")
        write_key(self.root / "host_key", key)
        self.start()
        return key


def start_sshd(
    root: Path,
    *,
    streamlocal: bool = True,
    address: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    config: str = "",
    key_options: str = "",
    max_startups: str = "100",
    host_key_type: str = "ssh-ed25519",
) -> Sshd:
    """``prefix`` runs sshd through another command (``ip netns exec NS``), listening on
    ``address`` there. ``config`` is appended to sshd_config (a site's settings);
    ``key_options`` go before the client's key in authorized_keys (``restrict``, say);
    ``max_startups`` as sshd_config's MaxStartups (a site's default is 10:30:100);
    ``host_key_type`` the one host key sshd offers."""
    if os.geteuid() != 0:
        skip_or_fail("a private sshd on loopback needs root here (privilege separation)")
    sshd = system_tool("sshd")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key(host_key_type)
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    write_key(root / "host_key", host_key)
    write_key(root / "client_key", client_key)
    prefix_key = f"{key_options} ".encode() if key_options else b""
    (root / "authorized_keys").write_bytes(prefix_key + client_key.export_public_key("openssh"))
    port = free_port()
    (root / "sshd_config").write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile none\nMaxStartups {max_startups}\nLogLevel ERROR\n"
        f"AllowStreamLocalForwarding {'yes' if streamlocal else 'no'}\n{config}"
    )
    server = Sshd(root, port, host_key, root / "client_key", root / "known_hosts", address)
    server.known_hosts.write_text(server.known_hosts_line())
    server.argv = [*prefix, sshd, "-D", "-e", "-f", str(root / "sshd_config")]
    server.start()
    return server
