"""A screen that fails never ends as if all went well: the process exits non-zero with one
line saying so and where the traceback is (the console log), and no traceback on the
operator's terminal.

The screen is the real one, run as ``gpufleet`` in a real terminal (tmux); the only thing
changed is the fault itself, forced by replacing one method before the console starts (no
data can crash the screen any more: see test_hostile_text.py).
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.support.tmux import Tmux

pytestmark = [pytest.mark.tui, pytest.mark.integration]

CRASHING = textwrap.dedent(
    """
    import sys
    from console.tui import fleet_view

    def broken(self):
        raise RuntimeError("forced for the test [/not markup]\\nsecond line")

    fleet_view.FleetScreen.on_mount = broken
    from console.cli import main

    sys.argv[0] = "gpufleet"
    main()
    """
)


def test_a_crash_exits_non_zero_with_one_line(tmux: Tmux, tmp_path: Path) -> None:
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    inventory = tmp_path / "fleet.toml"
    inventory.write_text('[[group]]\nname = "g"\nnodes = "n1"\n')
    # -W ignore: the cryptography package's deprecation warnings are another matter
    command = shlex.join([sys.executable, "-W", "ignore", str(script), "--inventory",
                          str(inventory)])  # fmt: skip
    env = f"XDG_STATE_HOME={shlex.quote(str(tmp_path))}"
    tmux.run("new-session", "-d", "-x", "300", "-y", "30", "-s", "gf",
             f"env {env} {command}; echo EXITED $?; sleep 30")  # fmt: skip

    def ended() -> str | None:
        screen = tmux.screen()
        return screen if "EXITED" in screen else None

    screen = wait_for(ended, "the screen to end", 60)
    log = tmp_path / "gpufleet" / "console.log"
    # what is left on the terminal: our one line, then the exit status
    assert [line.rstrip() for line in screen.splitlines() if line.strip()] == [
        "gpufleet: error: the screen stopped on an error of gpufleet's (RuntimeError: forced "
        f"for the test [/not markup]); the traceback is in {log}",
        "EXITED 70",
    ]
    logged = log.read_text()
    assert "the screen failed" in logged
    assert "Traceback (most recent call last)" in logged
    assert 'raise RuntimeError("forced for the test' in logged
