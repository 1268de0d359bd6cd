"""What the console's feeds log, under which names, and how a fault of gpufleet's own code is
told apart from the fleet's failures.

Loggers are named after their modules under ``gpufleet`` (``get_logger(__name__)`` in
``console/sources/ssh/link.py`` is ``gpufleet.console.sources.ssh.link``): the hierarchy
``console.cli`` sets up the per-user console log for (ours from INFO, other packages' from WARNING),
so a module's lines can be found, and turned up or down, by its name. A line about one node or one
source says so first (``node=gpu01 ...``, ``source=prometheus ...``: ``ContextLog``), the same way
in every module, so that one ``grep 'node=gpu01 '`` gives a node's whole story.

Levels: DEBUG and INFO for what happens routinely (a node connects, reconnects, an agent
restarts, a poll is answered); WARNING for what an operator should look at (a host key refused
or learned, a login refused, a version mismatch, Prometheus not answering); ERROR, with the
traceback, for a fault of gpufleet's own code (``InternalErrors``), which no operator action
on the fleet can fix and whose traceback is what a report needs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import MutableMapping
from typing import Any, Final

from agents.protocol import clip

#: The root of every logger of ours (``console.cli`` sets the log file up for it).
ROOT: Final = "gpufleet"


def get_logger(module: str) -> logging.Logger:
    """The logger of a module: ``get_logger(__name__)``, under ``gpufleet``."""
    return logging.getLogger(f"{ROOT}.{module}")


class ContextLog(logging.LoggerAdapter[logging.Logger]):
    """A module's logger whose lines say first what they are about (``node=gpu01``), and
    carry it on the record too (``record.node``), for a handler or a test to filter on."""

    def __init__(self, logger: logging.Logger, **context: str) -> None:
        super().__init__(logger, context)
        self.prefix = " ".join(f"{key}={value}" for key, value in context.items())

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return f"{self.prefix} {msg}", kwargs


def log_file(logger: logging.Logger) -> str | None:
    """The file this logger's lines reach (the per-user console log, as ``console.cli`` set
    it up), or None when they reach no file: found from the handlers themselves, so that what
    an operator is told is where the traceback really went."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, logging.FileHandler):
                return handler.baseFilename
        current = current.parent if current.propagate else None
    return None


def internal_words(exc: BaseException, logger: logging.Logger) -> str:
    """A fault of our own code as the screen shows it: what it was, and where the traceback
    is (the exception alone cannot be acted on; the traceback is what a report needs)."""
    said = clip(str(exc)) if str(exc) else ""
    what = type(exc).__name__ + (f": {said}" if said else "")
    where = log_file(logger)
    return f"internal error: {what}, see the log" + (f" at {where}" if where else "")


#: Distinct faults whose first sighting is remembered (past it, each is logged as new).
REMEMBERED: Final = 100


class InternalErrors:
    """The faults of our own code that feeds met, so that each one's traceback is logged once,
    not on every retry of every node it strikes: a bug hit by a whole fleet's links each
    minute would otherwise bury the log (and rotate the first traceback out of it). A fault is
    the same one when it is of the same type raised at the same place; later sightings get one
    ERROR line naming where its traceback was first logged. One is shared by all the links of
    a ``FleetLinks``."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str, int], str] = {}

    def report(self, exc: BaseException, log: ContextLog, doing: str) -> str:
        """Log ``exc``, met while ``doing`` (what the feed does about it, for the log line),
        and return the words for the screen (``internal_words``)."""
        words = internal_words(exc, log.logger)
        frames = traceback.extract_tb(exc.__traceback__)
        place = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("", 0)
        key = (type(exc).__qualname__, *place)
        first = self._first.get(key)
        if first is None:
            if len(self._first) >= REMEMBERED:
                self._first.clear()
            self._first[key] = log.prefix
            log.error("%s (%s)", words, doing, exc_info=exc)
        else:
            log.error("%s (%s); traceback as logged first for %s", words, doing, first)
        return words
