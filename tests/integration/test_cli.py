"""The agent's commands as an operator runs them: output, exit status, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agents.gpu.base import BackendUnavailable
from agents.gpu.nvml import NvmlBackend
from tests.conftest import agent_command

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), *args], capture_output=True, text=True, timeout=timeout
    )


def _nvml_missing() -> str | None:
    try:
        NvmlBackend().close()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def test_once_json_is_an_inventory_and_a_sample(short_tmp: Path) -> None:
    out = run("once", "--json", "--backend", "sim", "--gpus", "3", "--config", "/dev/null")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["inventory"]["backend"] == "sim"
    assert [g["index"] for g in doc["sample"]["gpus"]] == [0, 1, 2]
    gpu = doc["sample"]["gpus"][0]
    assert gpu["power_mw"] > 50_000  # milliwatts, as NVML gives them
    assert gpu["energy_mj"] is not None, "a one-shot includes the slow reads"
    assert doc["sample"]["host"]["mem_total"] > 0


def test_once_table_prints_missing_values_as_na() -> None:
    out = run("once", "--backend", "sim", "--gpus", "1", "--config", "/dev/null")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("node ")
    assert "NVIDIA H100 80GB HBM3" in lines[2]
    assert lines[-1].startswith("host: cpu ")


def test_nvml_demanded_without_a_driver_is_one_line() -> None:
    reason = _nvml_missing()
    if reason is None:
        pytest.skip("this machine has a working NVIDIA driver")
    out = run("once", "--backend", "nvml", "--config", "/dev/null")
    assert out.returncode == 1
    assert out.stderr.strip() == f"gpufleet-agent: error: {reason}"
    assert out.stdout == ""


def test_auto_without_a_driver_runs_host_only() -> None:
    if _nvml_missing() is None:
        pytest.skip("this machine has a working NVIDIA driver")
    out = run("once", "--json", "--config", "/dev/null")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["inventory"]["backend"] == "none"
    assert doc["inventory"]["gpus"] == []
    assert "NVML" in doc["inventory"]["backend_note"]
    assert len([ln for ln in out.stderr.splitlines() if "no GPUs" in ln]) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[agent]\nintervl = 2\n", "agent: Object contains unknown field `intervl`"),
        ("[agent]\ninterval = 0\n", "agent.interval: must be between 0.05 and 3600 seconds"),
        ("[roles]\noperators = 'bob'\n", "roles.operators: Expected `array`, got `str`"),
    ],
)
def test_bad_config_is_one_line_and_exit_78(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config)
    out = run("serve", "--config", str(path), "--backend", "sim")
    assert out.returncode == 78
    assert out.stderr.strip() == f"gpufleet-agent: error: {path}: {message}"


def test_bad_flag_value_is_named() -> None:
    out = run("once", "--config", "/dev/null", "--backend", "sim", "--gpus", "0")
    assert out.returncode == 78
    assert out.stderr.strip() == (
        "gpufleet-agent: error: command line: sim.gpus: must be between 1 and 64"
    )


def test_missing_explicit_config_is_named(tmp_path: Path) -> None:
    out = run("once", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 78
    assert out.stderr.strip() == f"gpufleet-agent: error: {tmp_path / 'nope.toml'}: no such file"


def test_request_without_an_agent_says_where_it_looked(short_tmp: Path) -> None:
    sock = short_tmp / "none.sock"
    out = run("request", "--config", "/dev/null", "--socket", str(sock), "ping")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"gpufleet-agent: error: no agent at {sock} (is gpufleet-agent running?)"
    )


def test_request_with_a_malformed_argument_is_a_usage_error(short_tmp: Path) -> None:
    out = run("request", "--config", "/dev/null", "--socket", str(short_tmp / "s"), "ping", "x")
    assert out.returncode == 2
    assert "argument 'x' is not KEY=VALUE" in out.stderr


def test_demo_runs_and_streams_with_faults() -> None:
    """The README's first command, bounded: an agent on simulated GPUs, its stream printed."""
    out = run("demo", "--gpus", "4", "--seconds", "4", "--fault-every", "1", timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "inventory node demo-node  backend sim" in text
    assert text.count("\nsample ") >= 2
    assert "demo     injected " in text
    assert "\nevent " in text, "an injected fault shows up as an event"


def test_flags_are_validated_with_the_file_not_before_it(tmp_path: Path) -> None:
    """history = 0.5 s is too short for the default 1 s interval, fine at --interval 0.05."""
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nhistory = 0.5\n")
    alone = run("once", "--config", str(path), "--backend", "sim", "--gpus", "1")
    assert alone.returncode == 78
    assert alone.stderr.strip() == (
        f"gpufleet-agent: error: {path}: agent.history: must be at least one interval"
    )
    # With the flag the configuration is valid, and serve gets as far as its state directory
    # (made unusable here, so that it stops at once).
    fixed = run(
        "serve",
        "--config",
        str(path),
        "--backend",
        "sim",
        "--interval",
        "0.05",
        "--state-dir",
        "/dev/null/x",
    )
    assert fixed.returncode == 1
    assert fixed.stderr.strip() == (
        "gpufleet-agent: error: cannot create the state directory /dev/null/x: Not a directory"
    )


def test_demo_that_cannot_serve_says_why(tmp_path: Path) -> None:
    """A socket path over the kernel's 108 bytes: the demo ends with the reason, not a hang."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    out = subprocess.run(
        [*agent_command(), "demo", "--seconds", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(deep)},
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("gpufleet-agent: error: cannot bind ")
    assert "Traceback" not in out.stderr
