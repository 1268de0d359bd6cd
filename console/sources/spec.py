"""Where the console's live view of the fleet comes from: one SSH stream per node (the
default), or a Prometheus server that already scrapes every node's agent (``--source
prometheus=URL``), for fleets too large for one console's SSH fan-out.

Either way the same ``FleetState`` is fed, so the screen and ``status`` do not care which;
they only ask the feed how it is doing (``FeedStatus``), to say which source they show and how
old its data is. Actions do not go through a feed: they always go over SSH to the chosen
nodes only (``console.sources.ssh.actionlinks``). Headless: no Textual here.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal, Protocol

from agents.protocol import GpufleetError, clip
from console.model.fleet import FleetState
from console.present.words import age, ago

SourceKind = Literal["ssh", "prometheus"]


class SourceError(GpufleetError):
    """A ``--source`` the console cannot use: one line naming what was wrong."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: SourceKind
    url: str | None = None  # prometheus: the server's base URL, without a trailing slash

    def __str__(self) -> str:
        return self.kind if self.url is None else f"{self.kind} {self.url}"


SSH = SourceSpec("ssh")


def parse_source(text: str) -> SourceSpec:
    """``ssh`` or ``prometheus=http://HOST:PORT[/PATH]``. Checked before anything connects,
    so a typo is a usage error rather than a fleet of unreachable nodes."""
    expected = "expected ssh or prometheus=http://HOST:PORT"
    kind, sep, rest = text.strip().partition("=")
    if kind == "ssh" and not sep:
        return SSH
    if kind != "prometheus":
        raise SourceError(f"--source {clip(text, 60)!r}: {expected}")
    if not rest:
        raise SourceError(f"--source {clip(text, 60)!r}: prometheus needs a URL ({expected})")
    url = urllib.parse.urlsplit(rest)
    try:
        url.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise SourceError(f"--source {clip(text, 60)!r}: bad port in the URL") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise SourceError(f"--source {clip(text, 60)!r}: {expected}")
    return SourceSpec("prometheus", rest.rstrip("/"))


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """How the live view's source is doing, for the line the screen shows above the table."""

    source: SourceSpec
    where: str  # "16 links", or the Prometheus URL
    #: Why the source itself is failing (Prometheus unreachable, or answering errors), or
    #: None. Shown, never fatal: the nodes' data ages and goes stale as it would otherwise.
    fault: str | None = None
    #: Seconds since the oldest data among the live nodes was read on its node: what "live"
    #: means from this source. None when no node is live.
    data_age: float | None = None
    #: Seconds since the source last answered (Prometheus: its last poll), None if never.
    answered_age: float | None = None

    def line(self) -> str:
        parts = [f"source: {self.source.kind} {self.where}"]
        if self.fault is not None:
            parts.append(f"FAULT: {self.fault}")
        parts.append("no live data" if self.data_age is None else f"data {age(self.data_age)} old")
        if self.answered_age is not None:
            parts.append(f"polled {ago(self.answered_age)}")
        return " · ".join(parts)


class FleetFeed(Protocol):
    """What keeps a ``FleetState`` current: the SSH links, or the Prometheus poller."""

    fleet: FleetState
    spec: SourceSpec  # which source this is

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self, now: float) -> FeedStatus: ...


def data_age(fleet: FleetState, now: float) -> float | None:
    """The age of the oldest data among live nodes (stale and down ones are counted apart,
    in the banner): the most a live row on screen lags its node."""
    ages = [v.age(now) or 0.0 for v in fleet.nodes.values() if v.link == "live"]
    return max(ages) if ages else None
