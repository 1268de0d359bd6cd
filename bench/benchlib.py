"""What every benchmark here records about the machine it ran on, in one place."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import psutil


def machine_facts() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_count_logical": psutil.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_total_bytes": psutil.virtual_memory().total,
        "python": sys.version,
        "python_executable": sys.executable,
        "psutil": psutil.__version__,
        "msgspec": msgspec.__version__,
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
    }


def publish(results: dict[str, Any], table: str, out: Path) -> None:
    """Print the table and keep it, with every raw figure, as JSON at ``out``."""
    results["table"] = table
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")


def once_argv(backend: str, *extra: str) -> list[str]:
    """``gpufleet-agent once --json``, from this checkout: the one-shot poll both baselines
    spawn."""
    return [sys.executable, "-m", "agents", "once", "--json", "--backend", backend, *extra]


def run_header(benchmark: str, started: dt.datetime) -> dict[str, Any]:
    """What every result file starts with: which benchmark, when, how long, and the command
    that produced it (so a figure in the README can be traced and rerun)."""
    return {
        "benchmark": benchmark,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": (dt.datetime.now(dt.UTC) - started).total_seconds(),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


async def exec_server(
    client_key: asyncssh.SSHKey, run: Callable[[Any], Any], known_hosts: Path
) -> tuple[asyncssh.SSHAcceptor, int]:
    """The exec baselines' SSH server on loopback (``console.demo.DemoServer``'s auth, ``run``
    for each exec, no shell), with ``known_hosts`` written to trust it; and its port."""
    from console.demo import DemoServer

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        lambda: DemoServer(client_key),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=run,
        encoding=None,
        allow_scp=False,
    )
    port = int(server.sockets[0].getsockname()[1])
    public = host_key.export_public_key("openssh").decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")  # noqa: ASYNC240 startup, tiny
    return server, port


def stop_node_hosts(procs: list[subprocess.Popen[str]]) -> None:
    """End the node-host processes: each stops when its stdin closes (killed after 60 s)."""
    for host in procs:
        if host.stdin is not None:
            host.stdin.close()
    for host in procs:
        try:
            host.wait(60)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()


def spawn_node_hosts(
    script: str, nodes: int, hosts: int, history: float
) -> list[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """``hosts`` processes of ``script``'s ``_nodes`` mode sharing the N nodes (so that
    simulating them is not held to one core by the GIL), each with the JSON line it printed
    once ready (its inventory, and whatever else the script adds). Stopped again on failure."""
    me = [sys.executable, script]
    procs: list[subprocess.Popen[str]] = []
    first = 1
    try:
        for k in range(hosts):
            count = nodes // hosts + (k < nodes % hosts)
            argv = [*me, "_nodes", str(count), str(first), str(history)]
            procs.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
            first += count
        ready = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a node host exited with {proc.wait()}")
            ready.append((proc, json.loads(line)))
        return ready
    except BaseException:
        stop_node_hosts(procs)
        raise
