"""The system tools the integration tests run, and how the test session installs the missing
ones: all at once, before any test (tests/conftest.py, ``pytest_collection_finish``), as root
with apt-get; a test then only looks its tools up (``system_tool`` there)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping

#: Each tool a test runs, and the Debian package it comes in. A tool a test looks up must be
#: here, so that the session installs it with the rest.
SYSTEM_TOOLS: Mapping[str, str] = {
    "sshd": "openssh-server",
    "tmux": "tmux",
    "ip": "iproute2",
    "nft": "nftables",
    "systemctl": "systemd",
    "systemd-analyze": "systemd",
    "groupadd": "passwd",
    "prometheus": "prometheus",
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "scontrol": "slurm-client",
    "sinfo": "slurm-client",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
}

Run = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def missing_packages(
    tools: Mapping[str, str] = SYSTEM_TOOLS,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """The packages of the tools not on PATH, each once, in name order."""
    return sorted({package for tool, package in tools.items() if which(tool) is None})


def _last_words(done: subprocess.CompletedProcess[str]) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"apt-get exited {done.returncode}"


def install(packages: Iterable[str], run: Run) -> dict[str, str]:
    """``apt-get install`` every package in one run; if that fails, each package alone, so
    that one the archive lacks keeps none of the others out. Returns the packages that could
    not be installed, each with apt's last line about it."""
    packages = list(packages)
    if not packages:
        return {}
    apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    run(["apt-get", "update", "-qq"])
    done = run([*apt, *packages])
    if done.returncode == 0:
        return {}
    if len(packages) == 1:
        return {packages[0]: _last_words(done)}
    failed: dict[str, str] = {}
    for package in packages:
        alone = run([*apt, package])
        if alone.returncode != 0:
            failed[package] = _last_words(alone)
    return failed
