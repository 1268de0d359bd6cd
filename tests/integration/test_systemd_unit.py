"""The systemd unit in the repo: it parses, it is hardened, and it agrees with the agent."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agents.config import AgentConfig
from tests.conftest import REPO, installed, system_tool

pytestmark = pytest.mark.integration

UNIT = REPO / "agents" / "systemd" / "gpufleet-agent.service"
#: Ceiling for `systemd-analyze security --offline=true`; the README states the current score.
MAX_EXPOSURE = 3.0


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this machine's gpufleet-agent: verify checks that
    the binary exists, and the repo's unit names the path a packaged install uses."""
    agent = installed("gpufleet-agent")
    text = UNIT.read_text().replace("/usr/local/bin/gpufleet-agent", str(agent))
    copy = tmp_path / "gpufleet-agent.service"
    copy.write_text(text)
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = system_tool("systemd-analyze")
    out = subprocess.run(
        [tool, "verify", str(_runnable_copy(tmp_path))], capture_output=True, text=True, timeout=60
    )
    # verify only warns on many errors, so any output at all is a failure.
    assert out.stdout + out.stderr == ""
    assert out.returncode == 0


def test_unit_exposure_score_stays_low(tmp_path: Path) -> None:
    tool = system_tool("systemd-analyze")
    out = subprocess.run(
        [tool, "security", "--offline=true", str(_runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE


def test_unit_is_a_watched_notify_service() -> None:
    s = _settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+s?", s["WatchdogSec"][0])
    assert s["RestartPreventExitStatus"] == ["78"]  # EX_CONFIG, what a bad config exits with
    assert s["ExecStart"][0].endswith("gpufleet-agent serve")
    assert s["ProtectSystem"] == ["strict"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert any("nvidia" in d for d in s["DeviceAllow"]), "NVML needs /dev/nvidia*"
    assert "PrivateDevices" not in s, "it would hide /dev/nvidia*"


def test_unit_directories_match_the_agents_defaults() -> None:
    s = _settings()
    defaults = AgentConfig().agent
    assert Path(defaults.socket).parent == Path("/run") / s["RuntimeDirectory"][0]
    assert Path(defaults.state_dir) == Path("/var/lib") / s["StateDirectory"][0]
    rw = s["ReadWritePaths"][0].split()
    assert str(Path(defaults.socket).parent) in rw
    assert defaults.state_dir in rw


def test_socket_group_members_can_reach_the_socket_directory() -> None:
    """The socket's own mode decides who connects; the directory must let the group through
    and let no one but root write."""
    mode = int(_settings()["RuntimeDirectoryMode"][0], 8)
    assert mode & 0o001, "others (and so the socket group) must be able to traverse it"
    assert not mode & 0o022, "only root may write where the socket lives"
