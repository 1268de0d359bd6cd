"""A real terminal for the screen: tmux on a private server socket, keys sent, the screen
read back as text."""

from __future__ import annotations

import subprocess


class Tmux:
    def __init__(self, tmux: str, socket: str) -> None:
        self.base = [tmux, "-L", socket]

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=20, check=False
        )
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "gf")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "gf", *keys)
