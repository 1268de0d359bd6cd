"""The command palette as the operator sees it: what enter would run."""

from __future__ import annotations

from typing import Any

from textual.app import App
from textual.command import Command, CommandList, CommandPalette


def palette_choice(app: App[Any]) -> str:
    """The command the open palette runs on enter (its highlighted hit); "" for none."""
    if not isinstance(app.screen, CommandPalette):
        return ""
    option = app.screen.query_one(CommandList).highlighted_option
    return option.hit.text or "" if isinstance(option, Command) else ""
