"""`gpufleet status` end to end: an inventory, ~/.ssh/config-style aliases, a real sshd, real
agents, and the JSON contract and exit codes a script relies on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.protocol import PROTOCOL_VERSION
from tests.conftest import AgentProc
from tests.integration.sshd import Sshd

pytestmark = pytest.mark.integration

FAST = ("--backend", "sim", "--gpus", "2", "--interval", "0.2")


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


def test_status_json_contract_and_exit_codes(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    a = agent_factory(*FAST, name="a").start()
    b = agent_factory(*FAST, name="b").start()
    inventory, config = write_fleet(
        short_tmp, sshd, {"node1": a.socket, "node2": b.socket, "node3": str(short_tmp / "no.sock")}
    )

    out = gpufleet(sshd, inventory, config, "node[1-2]", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [n["name"] for n in doc] == ["node1", "node2"]
    for node in doc:
        assert {"name", "pool", "link", "link_reason", "state", "reason", "alerts", "gpus",
                "host"} <= set(node)  # fmt: skip
        assert (node["pool"], node["link"], node["state"]) == ("train", "live", "schedulable")
        assert len(node["gpus"]) == 2
        for g in node["gpus"]:
            assert {"index", "uuid", "name", "util", "mem_used", "mem_total", "temp", "power",
                    "lost"} <= set(g)  # fmt: skip
        assert {"cpu", "load", "memory"} <= set(node["host"])

    some = gpufleet(sshd, inventory, config, "--json")
    assert some.returncode == 1, "node3 has no agent: some did not answer"
    down = next(n for n in json.loads(some.stdout) if n["name"] == "node3")
    assert down["link"] == "agent_down"
    assert "no.sock" in down["link_reason"]

    live = gpufleet(sshd, inventory, config, "link=live", "--json")
    assert [n["name"] for n in json.loads(live.stdout)] == ["node1", "node2"], (
        "state=/link=/alert are judged after contact, not on the blank inventory"
    )
    assert live.returncode == 0

    none = gpufleet(sshd, inventory, config, "node3")
    assert none.returncode == 3
    assert "agent_down" in none.stdout

    unknown = gpufleet(sshd, inventory, config, "node[1-9]")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "gpufleet: error: not in the inventory: node[4-9]"
    assert unknown.stdout == ""


def test_status_table_for_people(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    a = agent_factory(*FAST, name="a").start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": a.socket})
    out = gpufleet(sshd, inventory, config)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split()[:4] == ["NODE", "POOL", "LINK", "STATE"]
    assert row.split()[:5] == ["node1", "train", "live", "schedulable", "2"]
    assert "1 node(s) from" in out.stderr


def test_inventory_check_says_what_is_wrong_per_node(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    a = agent_factory(*FAST, name="a").start()
    inventory, config = write_fleet(
        short_tmp, sshd, {"node1": a.socket, "node2": str(short_tmp / "no.sock")}
    )
    out = subprocess.run(
        [sys.executable, "-m", "console", "inventory", "check", "--inventory", str(inventory),
         "--ssh-config", str(config), "--known-hosts", str(sshd.known_hosts),
         "--identity", str(sshd.client_key_path), "--json"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 1
    one, two = json.loads(out.stdout)
    assert one["ok"] is True
    assert f"protocol {PROTOCOL_VERSION}" in one["detail"]
    assert "2 GPU(s) via sim" in one["detail"]
    assert (two["ok"], two["problem"]) == (False, "agent_down")
    assert "no.sock" in two["detail"]

    sshd.known_hosts.write_text("")  # every node's host key is now unknown
    out = subprocess.run(
        [sys.executable, "-m", "console", "inventory", "check", "--inventory", str(inventory),
         "--ssh-config", str(config), "--known-hosts", str(sshd.known_hosts),
         "--identity", str(sshd.client_key_path)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 3
    lines = out.stdout.splitlines()
    assert all("hostkey_unknown" in line for line in lines)
    assert all("ssh to it once, or use accept-new" in line for line in lines)


def test_a_node_that_never_answers_does_not_hang_the_snapshot(short_tmp: Path) -> None:
    """A port that accepts TCP and then says nothing (no SSH banner): `status` gives up on that
    node after --connect-wait and says so, instead of hanging."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    inventory = short_tmp / "fleet.toml"
    inventory.write_text(
        f'[[group]]\nname = "g"\nnodes = "quiet1"\nhostname = "127.0.0.1"\nport = {port}\n'
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "console", "status", "--inventory", str(inventory),
             "--known-hosts", str(short_tmp / "kh"), "--ssh-config", "/dev/null",
             "--connect-wait", "1", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        silent.close()
    assert out.returncode == 3
    [node] = json.loads(out.stdout)
    assert (node["link"], node["link_reason"]) == ("unreachable", "no answer in 1 s")


def test_a_node_never_tried_is_not_tried_not_unreachable(short_tmp: Path) -> None:
    """More nodes than the fan-out can reach in the wait (six behind a port that accepts TCP
    and never answers, two handshakes at a time, one second): the two tried are unreachable,
    the four never tried say so, with the count and what to widen, in JSON and on stderr."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    inventory = short_tmp / "fleet.toml"
    inventory.write_text(
        f'[[group]]\nname = "g"\nnodes = "quiet[1-6]"\nhostname = "127.0.0.1"\nport = {port}\n'
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "console", "status", "--inventory", str(inventory),
             "--known-hosts", str(short_tmp / "kh"), "--ssh-config", "/dev/null",
             "--connect-wait", "1", "--fan-out", "2", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        silent.close()
    assert out.returncode == 3, out.stderr
    nodes = json.loads(out.stdout)
    links = sorted(n["link"] for n in nodes)
    assert links == ["not_tried"] * 4 + ["unreachable"] * 2
    why = "not tried: 4 of 6 nodes got no turn for a handshake in 1 s (2 at a time); widen"
    assert all(why in n["link_reason"] for n in nodes if n["link"] == "not_tried")
    assert f"gpufleet: {why}" in out.stderr
    assert "--connect-wait or --fan-out" in out.stderr


def test_no_key_material_reaches_a_log_or_the_audit(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    """A session and an action with the client's private key: neither the agent's debug log,
    nor its audit log, nor anything the console prints holds any of the key."""
    a = agent_factory(*FAST, config="[agent]\nlog_level = 'debug'\n", name="a").start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": a.socket})
    out = gpufleet(sshd, inventory, config, "node1", "--json")
    assert out.returncode == 0, out.stderr
    drain = subprocess.run(
        [sys.executable, "-m", "console", "drain", "node1", "--reason", "keys?", "--yes", "--force",
         "--inventory", str(inventory), "--ssh-config", str(config),
         "--known-hosts", str(sshd.known_hosts), "--identity", str(sshd.client_key_path)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert drain.returncode == 0, drain.stdout + drain.stderr
    assert "audit:" in a.log(), "the agent's log saw the action"
    key = sshd.client_key_path.read_text()
    body = [line for line in key.splitlines() if line and "PRIVATE KEY" not in line]
    said = "\n".join(
        [out.stdout, out.stderr, drain.stdout, drain.stderr, a.log(),
         (a.state_dir / "audit.jsonl").read_text()]
    )  # fmt: skip
    assert "PRIVATE KEY" not in said
    for line in body:
        assert line[:24] not in said, "a piece of the private key was written out"
