"""The system packages the integration tests need are installed in one step at the start of
the session (tests/support/system_tools.py), not by the tests one by one."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO
from tests.integration.slurm import SLURM_TOOLS
from tests.support.system_tools import SYSTEM_TOOLS, install, missing_packages

APT = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]


class Apt:
    """apt-get as the session runs it, failing for the packages in ``lacks``."""

    def __init__(self, *lacks: str) -> None:
        self.lacks = set(lacks)
        self.runs: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.runs.append(argv)
        absent = [p for p in argv[len(APT) :] if p in self.lacks]
        if argv[:2] == ["apt-get", "install"] and absent:
            return subprocess.CompletedProcess(
                argv, 100, "", f"E: Unable to locate package {absent[0]}\n"
            )
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_the_missing_tools_packages_each_once() -> None:
    on_path = {"sshd": "/usr/sbin/sshd"}
    tools = {"sshd": "openssh-server", "sinfo": "slurm-client", "sbatch": "slurm-client"}
    assert missing_packages(tools, on_path.get) == ["slurm-client"]


def test_everything_missing_is_installed_in_one_run() -> None:
    apt = Apt()
    assert install(["munge", "tmux"], apt) == {}
    assert apt.runs == [["apt-get", "update", "-qq"], [*APT, "munge", "tmux"]]


def test_a_package_the_archive_lacks_keeps_none_of_the_others_out() -> None:
    apt = Apt("prometheus")
    failed = install(["munge", "prometheus", "tmux"], apt)
    assert failed == {"prometheus": "E: Unable to locate package prometheus"}
    assert apt.runs[2:] == [[*APT, "munge"], [*APT, "prometheus"], [*APT, "tmux"]]


def test_nothing_missing_runs_nothing() -> None:
    apt = Apt()
    assert install([], apt) == {}
    assert apt.runs == []


def test_every_tool_a_test_looks_up_is_one_the_session_installs() -> None:
    looked_up = set(SLURM_TOOLS)
    for path in (REPO / "tests").rglob("*.py"):
        looked_up |= set(re.findall(r'system_tool\("([^"]+)"\)', path.read_text()))
    assert "sshd" in looked_up and "tmux" in looked_up, "the search finds the look-ups"
    assert looked_up - set(SYSTEM_TOOLS) == set()


def test_only_the_session_start_installs() -> None:
    installing = {
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("*.py")
        if re.search(r"""["']apt-get["'],\s*["']install["']""", path.read_text())
    }
    assert installing == {"tests/support/system_tools.py", "tests/unit/test_system_tools.py"}
