"""The screen's log file: it must not grow without bound on a console left open for weeks."""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from console import cli
from tests.conftest import skip_or_fail


def test_the_log_rotates_and_keeps_a_bounded_number_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "LOG_MAX_BYTES", 2000)
    path = Path(cli._log_to_file())
    assert path == tmp_path / "gpufleet" / "console.log"
    log = logging.getLogger("gpufleet.console.sources.ssh.link")
    for n in range(400):  # ~40 kB: many times what the files may hold together
        log.info("node%03d: unreachable: Server not responding to keepalive", n)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["console.log", *(f"console.log.{i}" for i in range(1, cli.LOG_BACKUPS + 1))]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    assert "node399" in path.read_text(), "the newest line is in the current file"


def test_an_unwritable_state_directory_does_not_stop_the_screen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    (tmp_path / "gpufleet").write_text("a file where the directory should be")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "_home_of", lambda uid: None)  # and no home of one's own
    assert cli._log_to_file() == "/dev/null"
    logging.getLogger("gpufleet.console.sources.ssh.link").warning("still fine")


def test_other_libraries_log_only_warnings_unless_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    """asyncssh logs every step of every connection at INFO: 98 % of a console's log."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = Path(cli._log_to_file())
    logging.getLogger("asyncssh").info("Opening SSH connection to node01, port 22")
    logging.getLogger("textual").debug("compose")
    logging.getLogger("asyncssh").warning("a library warning")
    logging.getLogger("gpufleet.console.sources.ssh.link").info("node01: connected")
    text = path.read_text()
    assert "Opening SSH connection" not in text and "compose" not in text
    assert "a library warning" in text and "node01: connected" in text

    path = Path(cli._log_to_file(debug=True))
    logging.getLogger("asyncssh").info("Opening SSH connection to node02, port 22")
    logging.getLogger("gpufleet.console.sources.ssh.link").debug("node02: frame")
    text = path.read_text()
    assert "node02, port 22" in text and "node02: frame" in text


def test_debug_is_an_option_of_the_console() -> None:
    result = CliRunner().invoke(cli.main, ["--debug", "status", "--help"])
    assert result.exit_code == 0, result.output
    assert "--debug" in CliRunner().invoke(cli.main, ["--help"]).output


def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This user's own home, as the account database would give it."""
    own = tmp_path / "own-home"
    own.mkdir()
    monkeypatch.setattr(cli, "_home_of", lambda uid: own)
    return own / ".local" / "state" / "gpufleet" / "console.log"


def test_a_state_directory_other_users_may_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two users with one XDG_STATE_HOME (or one $HOME) must not write one file."""
    shared = tmp_path / "shared"
    (shared / "gpufleet").mkdir(parents=True)
    (shared / "gpufleet").chmod(0o777)
    monkeypatch.setenv("XDG_STATE_HOME", str(shared))
    own = _homes(tmp_path, monkeypatch)
    assert cli._log_path(os.geteuid()) == own
    assert own.parent.stat().st_mode & 0o777 == 0o700


def test_a_state_directory_of_another_user_is_neither_used_nor_written_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under sudo with the caller's $HOME kept: root must not write into the caller's tree
    (a root-owned log there would lock the caller out of their own)."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to give a directory to another user")
    nobody = pwd.getpwnam("nobody")
    callers = tmp_path / "caller-home"
    (callers / ".local" / "state").mkdir(parents=True)
    os.chown(callers / ".local" / "state", nobody.pw_uid, nobody.pw_gid)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(callers))
    own = _homes(tmp_path, monkeypatch)
    assert cli._log_path(0) == own
    assert not (callers / ".local" / "state" / "gpufleet").exists()


def test_the_users_own_state_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    _homes(tmp_path, monkeypatch)
    path = cli._log_path(os.geteuid())
    assert path == tmp_path / "state" / "gpufleet" / "console.log"
