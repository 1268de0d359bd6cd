"""Shared test helpers: waiting on conditions, real agent processes, and honest skips.

A test that needs something this machine lacks (root, a system tool) skips with the reason;
under CI (CI=true) that skip is a failure instead, so a green CI run means it really ran.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required under CI but unavailable: {reason}")
    pytest.skip(reason)


def ensure_tool(tool: str, apt_package: str) -> str:
    """The tool's path, installing its Debian package when missing and we are root."""
    path = shutil.which(tool)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", apt_package],
            env=env,
            check=False,
            capture_output=True,
        )
        path = shutil.which(tool)
        if path:
            return path
    skip_or_fail(f"{tool} not installed and could not be installed ({apt_package})")
    raise AssertionError("unreachable")


def wait_for(
    condition: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


async def until(cond: Callable[[], object], what: str, limit: float = 30.0) -> None:
    """``wait_for`` for a test running on the event loop: polls without blocking it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def agent_command() -> list[str]:
    return [sys.executable, "-m", "agents"]


@dataclass
class AgentProc:
    """A real ``gpufleet-agent serve`` process on a private socket and state directory.

    ``tree``: the source tree it runs from (another version's, for the compatibility tests),
    put first on its import path."""

    root: Path
    args: list[str] = field(default_factory=list)
    config: str = ""
    proc: subprocess.Popen[bytes] | None = None
    tree: Path = REPO

    @property
    def socket(self) -> str:
        return str(self.root / "agent.sock")

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def start(self, timeout: float = 15.0) -> AgentProc:
        cfg = self.root / "agent.toml"
        cfg.write_text(self.config)
        cmd = [
            *agent_command(),
            "serve",
            "--config",
            str(cfg),
            "--socket",
            self.socket,
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        mark = len(self.log())  # a restart appends to the same log
        log = self.log_path.open("ab")
        env = None if self.tree == REPO else {**os.environ, "PYTHONPATH": str(self.tree)}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.tree, env=env)
        log.close()
        wait_for(
            lambda: (
                "serving" in self.log()[mark:] or self.proc is None or self.proc.poll() is not None
            ),
            timeout,
            "the agent to serve",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths must fit in 108 bytes,
    which pytest's tmp_path does not promise."""
    path = Path(tempfile.mkdtemp(prefix="gf-", dir="/tmp"))
    path.chmod(0o755)  # tests connect as other users too
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent_factory(short_tmp: Path) -> Iterator[Callable[..., AgentProc]]:
    made: list[AgentProc] = []

    def make(*args: str, config: str = "", name: str = "a", tree: Path = REPO) -> AgentProc:
        root = short_tmp / name
        root.mkdir(exist_ok=True)
        agent = AgentProc(root, list(args), config, tree=tree)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.proc is not None:
            agent.stop(signal.SIGKILL if agent.proc.poll() is None else signal.SIGTERM)
