"""``gpufleet`` and ``gpufleet demo`` as a person runs them: in a real terminal (tmux, on a
private server socket), keys sent, the screen read back as text. And without a terminal, one
line saying what to do instead."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.support.tmux import Tmux

pytestmark = [pytest.mark.tui, pytest.mark.integration]


@pytest.mark.parametrize("args", [[], ["demo"], ["--readonly"]])
def test_without_a_terminal_the_screen_says_what_to_do(args: list[str], tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.toml"
    inventory.write_text('[[group]]\nname = "g"\nnodes = "n1"\n')
    done = subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GPUFLEET_INVENTORY": str(inventory)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("gpufleet: error: no terminal for the screen: use ")
    assert "Traceback" not in done.stderr


def test_the_demo_in_a_real_terminal(tmux: Tmux, tmp_path: Path) -> None:
    command = shlex.join([sys.executable, "-m", "console", "demo", "--nodes", "4",
                          "--gpus-per-node", "2"])  # fmt: skip
    env = f"XDG_STATE_HOME={shlex.quote(str(tmp_path))}"
    tmux.run("new-session", "-d", "-x", "160", "-y", "45", "-s", "gf",
             f"env {env} {command}; echo EXITED $?; sleep 30")  # fmt: skip
    wait_for(lambda: "4 nodes: 4 live" in tmux.screen(), "four live nodes on screen", 60)
    screen = tmux.screen()
    assert "demo01" in screen
    assert "d drain" in screen, "the key bar shows the verbs"
    tmux.keys("Down", "Enter")
    wait_for(lambda: "UTIL %" in tmux.screen(), "the node view", 20)
    assert "demo02" in tmux.screen()
    tmux.keys("Escape")  # alone: an escape followed at once by a key reads as alt+key
    wait_for(lambda: "UTIL %" not in tmux.screen(), "back on the fleet view", 20)
    tmux.keys("q")
    wait_for(lambda: "EXITED 0" in tmux.screen(), "a clean exit on q", 30)
    assert (tmp_path / "gpufleet" / "console.log").exists(), "logs went to the file"
