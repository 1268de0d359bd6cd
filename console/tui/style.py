"""Colours by meaning, taken from the app's theme so they stay legible in light and dark; and
the one way text that is not ours reaches the screen.

Reasons, event messages, link errors, process command lines, user, pool and node names come
from nodes, schedulers, users and the network. On screen they are data: never Textual or Rich
markup (``[/var/log/kern.log]`` is a closing tag to a markup parser and crashes the screen;
``[@click=app.quit]`` is an action), and never a terminal control sequence. Every widget that
shows such text takes it as a ``rich.text.Text`` built here, or is created with markup off and
its text passed through ``clean``.
"""

from __future__ import annotations

from typing import Any, Final
from unicodedata import category

from rich.text import Text
from textual.app import App

from console.present.rows import Tone
from console.present.words import na

__all__ = ["Tone", "na", "tone_style", "toned"]


#: Characters drawn as an escape (``\x1b``, ``\u202e``) rather than as themselves: control
#: characters (a terminal escape, a bell, a carriage return), format characters (the
#: bidirectional overrides that make a line read other than it is), line and paragraph
#: separators, and lone surrogates (no terminal encoding can write them).
_ESCAPED: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: ... but for the zero-width (non-)joiners that Persian, the Indic scripts and emoji need.
_KEPT: Final = frozenset("\u200c\u200d")
#: Newlines and tabs in a reason are the writer's layout; on one line of the screen a space.
_SPACED: Final = frozenset("\n\t")


def _char(c: str) -> str:
    if c in _SPACED:
        return " "
    if c in _KEPT or category(c) not in _ESCAPED:
        return c
    return c.encode("unicode_escape", "backslashreplace").decode("ascii")


def clean(text: str) -> str:
    """``text`` fit to draw on one line: newlines and tabs as spaces, every other control or
    format character as its escape, everything else (every script, every bracket) as it is."""
    if text.isprintable():  # nearly all text: one pass in C
        return text
    return "".join(_char(c) for c in text)


def plain(text: str, style: str = "") -> Text:
    """Text that is not ours as a Rich ``Text``: shown literally, one line, cut with "…"."""
    return Text(clean(text), style=style, no_wrap=True, overflow="ellipsis", end="")


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
    return plain(text, tone_style(app, tone))
