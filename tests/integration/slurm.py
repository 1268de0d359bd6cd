"""A real Slurm cluster on this host: munged, slurmctld and one slurmd per node, for one test.

Slurm 22.05 from Debian (design.md §6). Everything lives in the caller's temporary directory:
its own munge key and socket, its own ``slurm.conf`` on free loopback ports, state and spool
directories. Four nodes, all ``slurmd -N nodeK`` on this host: ``node[1-3]`` in partition
``gpu`` (the default) and ``node4`` in ``cpu``. The daemons run in the foreground as our
children; clients find the cluster through ``SLURM_CONF`` in :attr:`SlurmCluster.env`.

The host is never rebooted: ``RebootProgram`` is a script in the temporary directory that only
appends the node's name to ``reboots.log`` (see :meth:`SlurmCluster.reboots`), so
``scontrol reboot`` exercises Slurm's bookkeeping and nothing else;
:meth:`SlurmCluster.finish_reboot` then plays the machine coming back (``slurmd -b``).

Use it from a test module with::

    from tests.integration.slurm import SlurmCluster, slurm_cluster_fixture  # noqa: F401

    def test_x(slurm_cluster: SlurmCluster) -> None: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_or_fail, system_tool, wait_for
from tests.integration.sshd import free_port

NODES = ("node1", "node2", "node3", "node4")
PARTITIONS = {"gpu": ("node1", "node2", "node3"), "cpu": ("node4",)}
TERMINAL_JOB_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
     "PREEMPTED", "TIMEOUT"}
)  # fmt: skip

SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "scontrol", "sinfo", "sbatch", "squeue", "scancel")


def partition_of(node: str) -> str:
    """The partition a node is in as the cluster starts."""
    return next(part for part, members in PARTITIONS.items() if node in members)


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _slurm_conf(
    root: Path, munge_socket: Path, ctld_port: int, node_ports: Sequence[int], extra: Sequence[str]
) -> str:
    lines = [
        "ClusterName=gftest",
        f"SlurmctldHost={_short_hostname()}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={node_ports[0]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root / 'ctld'}",
        f"SlurmdSpoolDir={root / 'spool'}/%n",
        f"SlurmctldPidFile={root / 'ctld.pid'}",
        f"SlurmdPidFile={root / 'spool'}/%n.pid",
        f"SlurmctldLogFile={root / 'ctld.log'}",
        f"SlurmdLogFile={root / 'spool'}/%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # Nodes declare 2 CPUs whatever this host has; never drain for "low CPU count".
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        # slurmd only system()s this program; it never calls reboot(2) itself.
        f"RebootProgram={root / 'reboot.sh'}",
        "MpiDefault=none",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0",  # start batch jobs at once, not within 3 s
        "KillWait=2",  # scancel: SIGKILL 2 s after SIGTERM, not 30
        *(
            f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs=2"
            for node, port in zip(NODES, node_ports, strict=True)
        ),
        *(
            f"PartitionName={part} Nodes={','.join(members)} MaxTime=INFINITE State=UP"
            + (" Default=YES" if part == "gpu" else "")
            for part, members in PARTITIONS.items()
        ),
        *extra,
    ]
    return "\n".join(lines) + "\n"


def _refers_to(pid: int, root: str) -> bool:
    """Whether a process has its working directory or an open file under ``root``."""
    proc = Path("/proc") / str(pid)
    try:
        links = [proc / "cwd", *(proc / "fd").iterdir()]
    except OSError:
        return False
    for link in links:
        with contextlib.suppress(OSError):
            if os.readlink(link).startswith(root):
                return True
    return False


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state, ppid, ..."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def alive(pid: int) -> bool:
    """Running, not a zombie: PID 1 here does not reap orphans, so zombies linger."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def stray_pids(root: Path, own: set[int]) -> list[int]:
    """Live processes that hold the cluster's directory (cwd or an open file: step sockets,
    logs, job output) other than ``own`` daemons and their children (slurmctld's
    slurmscriptd): slurmstepd and job processes, which slurmd leaves to PID 1."""
    me = os.getpid()
    prefix = str(root) + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        if pid == me or pid in own or not fields or fields[0] == "Z" or int(fields[1]) in own:
            continue
        if _refers_to(pid, prefix):
            found.append(pid)
    return found


@dataclass
class SlurmCluster:
    """A running test cluster; :func:`start_slurm` makes one, :meth:`stop` ends it."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    reboots_finished: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    # -- clients -------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (no shell) against this cluster; never raises on exit status."""
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def check(self, argv: Sequence[str], *, timeout: float = 30.0) -> str:
        """Run a client and return its stdout, failing the test with its stderr otherwise."""
        done = self.run(argv, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout

    def nodes_json(self) -> dict[str, dict[str, Any]]:
        """Every node as ``sinfo --json`` shows it, by name. ``-n`` does not filter there."""
        data = json.loads(self.check(["sinfo", "--json"]))
        return {node["name"]: node for node in data["nodes"]}

    def node_json(self, node: str) -> dict[str, Any]:
        """One node from ``sinfo --json``: ``state`` (lower case, e.g. ``idle``),
        ``state_flags`` (upper case, e.g. ``["DRAIN"]``), ``reason``, ``partitions``."""
        return self.nodes_json()[node]

    def wait_node(
        self, node: str, state: str, flags: Sequence[str] = (), timeout: float = 15.0
    ) -> dict[str, Any]:
        """Wait until the node's base state is ``state`` and its flags are exactly ``flags``."""

        def matches() -> dict[str, Any] | None:
            info = self.node_json(node)
            ok = info["state"] == state and sorted(info["state_flags"]) == sorted(flags)
            return info if ok else None

        return wait_for(matches, f"{node} to be {state} {list(flags)}", timeout)

    def submit(
        self,
        node: str,
        *,
        partition: str | None = None,
        command: str = "sleep 600",
        exclusive: bool = True,
    ) -> int:
        """A batch job pinned to ``node``; its id. By default it takes the whole node, which
        ``sinfo`` then shows ``allocated`` (a one-CPU job on these two-CPU nodes shows
        ``mixed``). Output goes to ``jobs/<id>.out``."""
        out = self.check(
            ["sbatch", "--parsable", "-w", node, "-p", partition or partition_of(node),
             *(["--exclusive"] if exclusive else []), "-J", f"gf-{node}",
             "-D", str(self.jobs_dir), "-o", f"{self.jobs_dir}/%j.out", "--wrap", command]
        )  # fmt: skip
        return int(out.strip().split(";")[0])

    def job_state(self, job: int) -> str:
        """``JobState`` from ``scontrol show job`` (``PENDING``, ``RUNNING``, ``CANCELLED``...)."""
        out = self.check(["scontrol", "show", "job", "-o", str(job)])
        match = re.search(r"\bJobState=(\S+)", out)
        assert match, out
        return match.group(1)

    def wait_running(self, job: int, timeout: float = 15.0) -> None:
        def running() -> bool:
            state = self.job_state(job)
            if state in TERMINAL_JOB_STATES:
                raise AssertionError(f"job {job} ended {state} instead of running")
            return state == "RUNNING"

        wait_for(running, f"job {job} to run", timeout)

    def cancel(self, job: int, timeout: float = 15.0) -> None:
        """Cancel a job and wait until Slurm says it ended."""
        self.check(["scancel", str(job)])
        wait_for(lambda: self.job_state(job) in TERMINAL_JOB_STATES, f"job {job} to end", timeout)

    def reboots(self) -> list[str]:
        """The nodes whose ``RebootProgram`` ran, oldest first (a node once per call)."""
        try:
            return (self.root / "reboots.log").read_text().split()
        except FileNotFoundError:
            return []

    def finish_reboot(self, node: str, timeout: float = 15.0) -> dict[str, Any]:
        """Play the node's part in ``scontrol reboot``: wait for the RebootProgram to run for
        it, then restart its slurmd as if the machine had booted (``slurmd -b``) and wait for
        Slurm to count the reboot done; the node as ``sinfo --json`` then shows it. Without
        this the node stays ``down`` + ``REBOOT_ISSUED`` until ``ResumeTimeout`` (60 s), then
        ``down`` with reason ``"<reason> : reboot issued : reboot timed out"``."""
        done = self.reboots_finished.get(node, 0)
        wait_for(lambda: self.reboots().count(node) > done, f"{node}'s RebootProgram", timeout)
        self.reboots_finished[node] = done + 1
        issued = wait_for(
            lambda: (
                info if "REBOOT_ISSUED" in (info := self.node_json(node))["state_flags"] else None
            ),
            f"{node} to be REBOOT_ISSUED",
            timeout,
        )
        # slurmctld takes the reboot as done only when the boot time slurmd reports (whole
        # seconds, seen a second early) is later than when it issued the reboot, which it also
        # stamped on the reason: booting sooner leaves the node waiting for the timeout.
        after = issued["reason_changed_at"] + 2
        wait_for(lambda: time.time() >= after, "a boot time later than the reboot", timeout)
        self.restart_slurmd(node, rebooted=True)
        return wait_for(
            lambda: (
                info
                if "REBOOT_ISSUED" not in (info := self.node_json(node))["state_flags"]
                else None
            ),
            f"Slurm to see {node} rebooted",
            timeout,
        )

    def log(self, name: str = "ctld") -> str:
        """``ctld`` or a node's daemon log."""
        path = self.root / "ctld.log" if name == "ctld" else self.root / "spool" / f"{name}.log"
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        with (self.root / f"{name}.out").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                list(argv), stdout=out, stderr=out, env=env or self.env, start_new_session=True
            )

    def start_slurmd(self, node: str, *, rebooted: bool = False) -> None:
        """Start the node's slurmd; ``rebooted`` has it report that its machine just booted."""
        proc = self.procs.get(f"slurmd-{node}")
        assert proc is None or proc.poll() is not None, f"slurmd for {node} is running"
        # The RebootProgram inherits this environment: that is how it knows its node.
        env = {**self.env, "GF_SLURM_NODE": node}
        argv = ["slurmd", "-D", "-N", node, "-f", str(self.conf), *(["-b"] if rebooted else [])]
        self._spawn(f"slurmd-{node}", argv, env)

    def stop_slurmd(self, node: str, sig: int = signal.SIGTERM) -> None:
        """Stop the node's slurmd (its running jobs live on in their slurmstepd)."""
        proc = self.procs[f"slurmd-{node}"]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(15)

    def restart_slurmd(self, node: str, *, rebooted: bool = False) -> None:
        self.stop_slurmd(node)
        self.start_slurmd(node, rebooted=rebooted)

    def daemons_running(self) -> bool:
        """True, or fail with the log of the daemon that exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                out = (self.root / f"{name}.out").read_text(errors="replace")
                raise AssertionError(f"{name} exited {proc.returncode}:\n{out[-3000:]}")
        return True

    def all_idle(self) -> bool:
        self.daemons_running()
        done = self.run(["sinfo", "--json"], timeout=10)
        if done.returncode != 0:
            return False
        nodes = json.loads(done.stdout)["nodes"]
        idle = {n["name"] for n in nodes if n["state"] == "idle" and not n["state_flags"]}
        return idle == set(NODES)

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel every job, end every daemon and whatever Slurm started, and wait for them."""
        deadline = time.monotonic() + timeout
        ctld = self.procs.get("slurmctld")
        own = {proc.pid for proc in self.procs.values()}
        if ctld is not None and ctld.poll() is None:
            jobs = self.run(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split()
            if jobs:
                self.run(["scancel", *jobs], timeout=10)
                with contextlib.suppress(AssertionError):
                    wait_for(
                        lambda: not stray_pids(self.root, own),
                        "job steps to end",
                        max(1.0, deadline - time.monotonic() - 5),
                    )
        for name in [*(f"slurmd-{n}" for n in NODES), "slurmctld", "munged"]:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        strays = stray_pids(self.root, own)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in strays), f"processes {strays} to end", 10)


def start_slurm(
    root: Path, *, extra_conf: Sequence[str] = (), timeout: float = 30.0
) -> SlurmCluster:
    """Install Slurm if missing, write a cluster into ``root`` and start it; all four nodes are
    idle when this returns. ``root`` must be short (munge's socket lives in it) and every
    directory above it searchable by all (munged refuses otherwise). ``extra_conf`` lines are
    appended to ``slurm.conf`` (e.g. ``ResumeTimeout=5``)."""
    if any(line.strip().lower().startswith("rebootprogram") for line in extra_conf):
        raise ValueError("RebootProgram is ours: it must never reboot this host")
    if os.geteuid() != 0:
        skip_or_fail("a private Slurm cluster needs root here (SlurmUser=root, slurmd as root)")
    tools = {tool: system_tool(tool) for tool in SLURM_TOOLS}
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    munge_dir = root / "munge"
    munge_socket = munge_dir / "sock"
    if len(str(munge_socket)) > 90:
        raise ValueError(f"{root} is too long for a unix socket path")
    munge_dir.mkdir(mode=0o755)  # clients of other users must reach the socket
    for sub in ("ctld", "spool", "jobs"):
        (root / sub).mkdir(mode=0o755)
    key = munge_dir / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)  # munged runs as root here, the key's owner; it refuses looser modes

    reboot = root / "reboot.sh"
    log = root / "reboots.log"
    reboot.write_text(
        "#!/bin/sh\n# A stand-in for a reboot: it records which node asked, it never reboots.\n"
        f'echo "${{GF_SLURM_NODE:-unknown}}" >> {log}\n'
    )
    reboot.chmod(0o755)
    conf = root / "slurm.conf"
    ports = [free_port() for _ in range(len(NODES) + 1)]
    conf.write_text(_slurm_conf(root, munge_socket, ports[0], ports[1:], extra_conf))

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))
    }
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root, env)
    try:
        cluster._spawn(
            "munged",
            [tools["munged"], "-F", f"--key-file={key}", f"--socket={munge_socket}",
             f"--pid-file={munge_dir / 'pid'}", f"--log-file={munge_dir / 'log'}",
             f"--seed-file={munge_dir / 'seed'}"],
        )  # fmt: skip
        wait_for(
            lambda: cluster.daemons_running() and munge_socket.exists(), "munged's socket", timeout
        )
        cluster._spawn("slurmctld", [tools["slurmctld"], "-D", "-f", str(conf)])
        for node in NODES:
            cluster.start_slurmd(node)
        wait_for(cluster.all_idle, "all Slurm nodes to be idle", timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(name="slurm_cluster")
def slurm_cluster_fixture(short_tmp: Path) -> Iterator[SlurmCluster]:
    """A fresh four-node cluster for one test (it starts in about a second), stopped after."""
    cluster = start_slurm(short_tmp / "slurm")
    try:
        yield cluster
    finally:
        cluster.stop()
