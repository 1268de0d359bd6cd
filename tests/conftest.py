"""What every test may use: waiting on a condition (``wait_for``, ``until``), real agent
processes, the system tools installed once at the start of the session, and honest skips.

A test that needs something this machine lacks (root, a system tool) skips with the reason;
under CI (CI=true) that skip is a failure instead, so a green CI run means it really ran. The
hooks below enforce it for every skip (``pytest.skip``, ``skipif``, a skipping fixture), and
``ALLOWED_SKIPS`` names the few tests that can only run one way on a given machine.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest

from tests.support.system_tools import SYSTEM_TOOLS, install, missing_packages
from tests.support.tmux import Tmux

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


pytest_plugins = ("pytester",)  # tests/unit/test_ci_skips.py runs pytest on tiny test files


class AllowedSkip(NamedTuple):
    """A skip CI accepts: only with exactly this ``reason``, for the reason given in ``why``."""

    reason: str
    why: str


#: The tests that can only run one way on a given machine (GPU present / absent), by test id
#: without parameters: under CI=true their skip, with exactly that reason, passes. Every other
#: skip under CI=true is a failure. Keep this the only list of such tests.
ALLOWED_SKIPS: dict[str, AllowedSkip] = {
    "tests/integration/test_cli.py::test_nvml_demanded_without_a_driver_is_one_line": AllowedSkip(
        "this machine has a working NVIDIA driver",
        "the error for --backend nvml without a driver: on a GPU machine NVML loads and there is"
        " no error to see (the NVML paths themselves run against tests/fakes/fake_pynvml.py)",
    ),
    "tests/integration/test_cli.py::test_auto_without_a_driver_runs_host_only": AllowedSkip(
        "this machine has a working NVIDIA driver",
        "the host-only fallback when NVML cannot load: on a GPU machine it loads",
    ),
}


def skip_or_fail(reason: str) -> None:
    """Skip with what is missing; under CI the hooks below make that skip a failure."""
    pytest.skip(reason)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _refused_skip(report: pytest.TestReport | pytest.CollectReport, test_id: str) -> None:
    """Turn a skip into a failure naming why: under CI every test must really run."""
    reason = _skip_reason(report)
    allowed = ALLOWED_SKIPS.get(test_id)
    if allowed is not None and allowed.reason == reason:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true, where every test must run (tests/conftest.py ALLOWED_SKIPS"
        f" lists the only exceptions): {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every phase's skip (a fixture's or a marker's at setup, ``pytest.skip`` in the test);
    an expected failure (xfail) is not a skip."""
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        _refused_skip(report, item.nodeid.partition("[")[0])
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module that skips itself (``allow_module_level``) is a skip of all its tests."""
    report = yield
    if IN_CI and report.skipped:
        _refused_skip(report, collector.nodeid)
    return report


def extract_tar(data: bytes, dest: Path) -> None:
    """Unpack a tar of plain files and directories into ``dest``, refusing anything else.

    ``filter="data"`` does that from Python 3.11.4 on; Debian 12's 3.11.2 has no ``filter``, so
    there the members are checked here first, all before anything is written, with the refusals
    that filter makes for such a tar (absolute or escaping names, links, devices) and its
    clean-ups (no setuid/setgid/sticky or group/other write bits, owned by whoever unpacks)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        members = tar.getmembers()
        for member in members:
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()):
                raise tarfile.TarError(f"{member.name!r}: not a plain file or directory")
            if Path(member.name).is_absolute() or not target.is_relative_to(root):
                raise tarfile.TarError(f"{member.name!r}: outside {dest}")
        for member in members:
            member.mode &= 0o755
            member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        tar.extractall(dest, members=members)  # noqa: S202 (every member checked above)


def installed(script: str) -> str:
    """A console script of the environment under test: next to this interpreter first (a venv
    the tests run from needs no activating), then on PATH; missing is a skip (a CI failure)."""
    path = shutil.which(script, path=str(Path(sys.executable).parent)) or shutil.which(script)
    if path is None:
        skip_or_fail(f"{script} not installed (pip install -e '.[test]')")
        raise AssertionError("unreachable")
    return path


#: What the session could not install (package: apt's last words), for the skip's reason.
_NOT_INSTALLED: dict[str, str] = {}


def _apt(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(argv, env=env, check=False, capture_output=True, text=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any test: when an integration test is to run, install every system tool the
    tests use that is missing (``SYSTEM_TOOLS``), in one apt-get run, as root where apt-get
    is. Elsewhere nothing is installed and the tests that need a missing tool skip."""
    if not any(item.get_closest_marker("integration") for item in session.items):
        return
    packages = missing_packages()
    if not packages or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"installing what the tests run: {' '.join(packages)} (apt-get)")
    _NOT_INSTALLED.update(install(packages, _apt))


def system_tool(tool: str) -> str:
    """The path of a system tool a test runs (one of ``SYSTEM_TOOLS``, which the session
    installed if it could); missing is a skip naming why (a failure under CI)."""
    package = SYSTEM_TOOLS[tool]
    path = shutil.which(tool)
    if path:
        return path
    why = _NOT_INSTALLED.get(package, "run the tests as root with apt-get to install it")
    skip_or_fail(f"{tool} not installed (Debian package {package}: {why})")
    raise AssertionError("unreachable")


POLL_SECONDS = 0.02


def wait_for(condition: Callable[[], T | None], what: str, limit: float = 10.0) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; past ``limit``
    seconds fail naming ``what`` was awaited. The one way a test blocks on a condition."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)


async def until(condition: Callable[[], T | None], what: str, limit: float = 30.0) -> T:
    """``wait_for`` for a test running on the event loop: polls without blocking it, so the
    tasks (an agent, a Textual app) it waits on run in between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


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
            "the agent to serve",
            timeout,
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


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    """A tmux server of its own for one test (tests/tui), killed after it."""
    t = Tmux(system_tool("tmux"), f"gf-test-{os.getpid()}")
    yield t
    t.run("kill-server")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The console's ``_log_to_file`` replaces the root logger's handlers: pytest's are put
    back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
