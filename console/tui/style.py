"""Colours by meaning, taken from the app's theme so they stay legible in light and dark."""

from __future__ import annotations

from typing import Any, Literal

from rich.text import Text
from textual.app import App

from console.words import na

__all__ = ["Tone", "na", "tone_style", "toned"]

Tone = Literal["bad", "warn", "good", "dim", "plain"]


def tone_style(app: App[Any], tone: Tone) -> str:
    theme = app.current_theme
    return {
        "bad": f"bold {theme.error}",
        "warn": f"{theme.warning}",
        "good": f"{theme.success}",
        "dim": "dim",
        "plain": "",
    }[tone]


def toned(app: App[Any], text: str, tone: Tone) -> Text:
    return Text(text, style=tone_style(app, tone), no_wrap=True, overflow="ellipsis")
