"""``gpufleet status`` run as a script runs it, on an inventory of nodes named as the user's
ssh config knows them, reached through the test's sshd (tests/integration/sshd.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.sshd import Sshd


def write_fleet(root: Path, sshd: Sshd, sockets: dict[str, str]) -> tuple[Path, Path]:
    """An inventory of nodes named as the user's ssh config knows them."""
    config = root / "ssh_config"
    config.write_text(
        "".join(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
            for name in sockets
        )
    )
    inventory = root / "fleet.toml"
    inventory.write_text(
        "".join(
            f'[[group]]\nname = "g{i}"\npool = "train"\nnodes = "{name}"\nsocket = "{sock}"\n'
            for i, (name, sock) in enumerate(sockets.items())
        )
    )
    return inventory, config


def gpufleet(
    sshd: Sshd, inventory: Path, config: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console", "status", "--inventory", str(inventory),
         "--ssh-config", str(config), "--known-hosts", str(sshd.known_hosts),
         "--identity", str(sshd.client_key_path), "--connect-wait", "20", *args],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
