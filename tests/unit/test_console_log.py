"""The screen's log file: it must not grow without bound on a console left open for weeks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from console import cli


@pytest.fixture
def root_logging() -> Iterator[None]:
    """``_log_to_file`` replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_log_rotates_and_keeps_a_bounded_number_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "LOG_MAX_BYTES", 2000)
    path = Path(cli._log_to_file())
    assert path == tmp_path / "gpufleet" / "console.log"
    log = logging.getLogger("console.link")
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
    assert cli._log_to_file() == "/dev/null"
    logging.getLogger("console.link").warning("still fine")
