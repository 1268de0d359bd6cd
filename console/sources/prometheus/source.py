"""The fleet model fed from a Prometheus server that scrapes every node's agent, instead of
one SSH stream per node: for fleets too large for one console's fan-out.

Every ``poll_s`` seconds (longer while polls run long: ``MAX_BUSY``) a few instant queries
for the whole fleet (``promview``): every node's scrape time and ops state, then what the
table and alerts need only of the nodes scraped since the last poll; static facts once per
node (again when its inventory time moves) and slow readings every few polls, a bounded number
of nodes at a time, so the first poll already shows every node. The answers become the same
frames the SSH links deliver and go through ``FleetState.apply``, so the screen, ``status``
and the alerts work unchanged. What is particular to this source:

- The inventory still decides which nodes exist. A node Prometheus has and the inventory does
  not is ignored (counted, and named once in the log); an inventory node Prometheus has no
  series for is ``no_data``, with the reason.
- A sample's age is judged on Prometheus' clock (how long ago it scraped the node) plus how
  old the agent's sample was then, and the model is handed that age, so "stale" means what it
  means over SSH: no new sample for 3 intervals, the interval being the slower of the agent's
  and the rate new samples reach the console (the scrape interval, or the poll's).
- A node whose series leave Prometheus (a failed scrape writes staleness markers) goes stale
  at once and ``no_data`` after the stale window, as a broken SSH stream does.
- Prometheus itself unreachable, or answering errors, is a fault of the source: shown above
  the table and in ``status``, never fatal; every node's data ages as it would over a cut link.
- A fault of gpufleet's own code in a poll (a KeyError, a TypeError: not Prometheus failing)
  is a fault of the source as well, saying so (``internal error: ...``, and where the log is),
  its traceback logged once; the nodes age into ``fault``, not ``unreachable``, since nothing
  is known to be wrong with them, and the next poll comes on time, as after any failed poll.

Actions never go through here: ``console.sources.ssh.actionlinks`` opens SSH to the chosen
nodes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from agents.protocol import Event, NodeState
from console.logs import ContextLog, InternalErrors, get_logger
from console.model.fleet import FleetState, LinkState
from console.model.inventory import NodeEntry
from console.present.words import plural
from console.sources.prometheus.client import (
    QUERY_TIMEOUT_S,
    PromClient,
    PromError,
    Querier,
    Vector,
)
from console.sources.prometheus.view import (
    HEAD_KEYS,
    QUERIES,
    SLOW_EVERY,
    Cadence,
    FleetIndex,
    PromNode,
    PromQuery,
    host_matcher,
    nodes_of,
    only,
)
from console.sources.spec import FeedStatus, SourceSpec, data_age

log = ContextLog(get_logger(__name__), source="prometheus")

#: Seconds between polls of Prometheus.
POLL_S: Final = 5.0
#: The interval assumed for a node until two scrapes of it have been seen (Prometheus'
#: usual scrape interval): only how long its data may age before it counts as stale.
FIRST_SCRAPE_GUESS_S: Final = 15.0
#: Queries in flight at once (Prometheus evaluates them in parallel).
QUERIES_AT_ONCE: Final = 8
#: Seconds a whole-fleet query of what was never read may take (the first poll's, the first
#: static and slow reads): sized for the largest fleets on a busy Prometheus, not for a
#: steady poll's narrowed queries (``QUERY_TIMEOUT_S``).
FIRST_QUERY_TIMEOUT_S: Final = 90.0
#: Most nodes whose static or slow set one poll reads: at 5,000 nodes reading all of them at
#: once (~70 MB) ran the poll's small queries past their timeout; this spreads the first
#: read of a large fleet over a few polls and keeps every poll about one size.
CATCH_UP_NODES: Final = 1000

#: The most of its time the source spends polling. A poll that takes longer than this share
#: of ``poll_s`` (a large fleet, a busy Prometheus) stretches the period to as long again as
#: it took: polls run back to back would each find every node scraped anew and cost the most,
#: and hold a core of the console for a view that cannot be newer than the scrapes anyway.
MAX_BUSY: Final = 0.5

#: An answer and the hosts it was asked for (None: every host).
_Answer = tuple[Vector, set[str] | None]


@dataclass(slots=True)
class _Seen:
    """What this source last did for one inventory node."""

    scraped: float | None = None
    gap: float | None = None  # between the two latest scrapes seen
    sample_ts: float | None = None
    seq: int = 0
    agent: tuple[str, str, float] | None = None
    xids: set[tuple[int, float]] = field(default_factory=set)


class NameIndex:
    """Prometheus' ``Hostname`` (the agent's node name, by default the host name) to the
    inventory's name (the SSH host): the same name, else the same short name (up to the first
    dot) when only one inventory node has it, since one side often has the domain and the
    other not."""

    def __init__(self, entries: Iterable[NodeEntry]) -> None:
        self._exact: dict[str, str] = {}
        shorts: dict[str, list[str]] = {}
        for e in entries:
            self._exact[e.name] = e.name
            shorts.setdefault(e.name.split(".", 1)[0], []).append(e.name)
        self._short = {s: names[0] for s, names in shorts.items() if len(names) == 1}

    def get(self, hostname: str) -> str | None:
        return self._exact.get(hostname) or self._short.get(hostname.split(".", 1)[0])


class PromSource:
    def __init__(
        self,
        entries: Iterable[NodeEntry],
        url: str,
        *,
        fleet: FleetState | None = None,
        poll_s: float = POLL_S,
        client: Querier | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        first_timeout: float = FIRST_QUERY_TIMEOUT_S,
    ) -> None:
        entries = list(entries)
        self.fleet = fleet if fleet is not None else FleetState(entries)
        self.spec = SourceSpec("prometheus", url)
        self.client = client or PromClient(url)
        self.poll_s = poll_s
        #: Seconds from one poll's start to the next's: ``poll_s``, or longer while polls
        #: run long (``_next_wait``). Staleness and the slow reads' window go by it.
        self.period = poll_s
        self.took: float | None = None  # seconds the last poll took
        self.first_timeout = first_timeout
        self._patience = min(first_timeout, QUERY_TIMEOUT_S)  # see _timeout
        self.polls = 0  # polls Prometheus answered
        self.fault: str | None = None
        #: Hostnames Prometheus has that the inventory does not (ignored), at the last poll.
        self.unknown: set[str] = set()
        self._names = NameIndex(entries)
        self._now = monotonic
        self._answered_at: float | None = None
        self._index = FleetIndex()  # the latest answer to each query, by host
        self._read: set[str] = set()  # the queries answered at least once
        #: By host: its static set's read (its inventory time then, its scrape time then,
        #: whether its sample was fresh), and the scrape time at its last slow read.
        self._static: dict[str, tuple[float | None, float, bool]] = {}
        self._slow: dict[str, float] = {}
        #: The hosts each cadence was asked for in the poll being converted (None: all).
        self._asked: dict[Cadence, set[str] | None] = {}
        self._seen: dict[str, _Seen] = {}
        self._told_unknown: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._errors = InternalErrors()

    # -- FleetFeed --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self, now: float) -> FeedStatus:
        where = self.spec.url or ""
        if self.unknown:
            where += f" ({plural(len(self.unknown), 'host')} not in the inventory, ignored)"
        if self.period > self.poll_s and self.took is not None:
            where += f" (polling every {self.period:.1f} s: a poll takes {self.took:.1f} s)"
        answered = None if self._answered_at is None else max(0.0, now - self._answered_at)
        return FeedStatus(self.spec, where, self.fault, data_age(self.fleet, now), answered)

    # -- polling ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = self._now()
            await self.poll()
            await asyncio.sleep(self._next_wait(self._now() - started))

    def _next_wait(self, took: float) -> float:
        """The wait before the next poll, after one that took ``took`` seconds. Only an
        answered poll sets the pace: one that waited out a hung Prometheus says nothing of
        the work a poll takes, and must not delay the next try."""
        if self.fault is not None:
            return max(0.0, self.poll_s - took)
        self.took = took
        self.period = max(self.poll_s, took / MAX_BUSY)
        if self.period > self.poll_s:
            log.info("a poll took %.1f s: polling every %.1f s", took, self.period)
        return self.period - took

    async def poll(self) -> None:
        """One poll: query, convert (both off the event loop), apply to the model.

        Prometheus scrapes a node every 15 s or so, the console polls every 5 s: most polls
        find most nodes as they were. So the head queries (``HEAD_KEYS``: when each node was
        last scraped, its ops state) go to every node, the fast ones only to the nodes scraped
        since the last poll, and the static and slow sets only to the nodes they are due for
        (``_plan``); only those nodes' frames are rebuilt. The first poll reads only what
        the table needs, so the screen shows every node before the rest is read.

        Never raises but to be cancelled: Prometheus failing, or a fault of our own code in
        the poll, is the source's fault (``fault``), and the next poll tries again."""
        try:
            at, answers, rebuild = await self._query()
            present, nodes = await asyncio.to_thread(self._convert, answers, rebuild)
            self.polls += 1
            if self.fault is not None:
                log.info("answering again, after: %s", self.fault)
            self.fault = None
            now = self._now()
            self._answered_at = now
            self._apply(present, nodes, at, now)
        except PromError as exc:
            self._failed(str(exc))
        except Exception as exc:  # not Prometheus: ours
            words = self._errors.report(exc, log, f"polling again in {self.poll_s:g} s")
            self._failed(words, "fault", said=True)
        else:
            log.debug("a poll answered: %d hosts, %d rebuilt", len(present), len(nodes))

    def _timeout(self, key: str, hosts: set[str] | None) -> float:
        """A whole-fleet read of what was never read (the first poll) may take far longer
        than a steady poll's narrowed one: at 5,000 nodes the first answers took 10 to 40 s
        on a busy Prometheus. Past that, the patience the last polls earned: three times the
        slowest answer of the last poll, doubled after a poll that got no answer in time
        (a busy Prometheus is slow, not gone), never below ``QUERY_TIMEOUT_S`` nor above
        ``first_timeout``."""
        if hosts is None and key not in self._read:
            return self.first_timeout
        return self._patience

    async def _query(self) -> tuple[float, dict[str, _Answer], set[str] | None]:
        """Every due query at one moment of Prometheus' clock (the first sets it); each answer
        with the hosts it was asked for (None: all), and the hosts to rebuild (None: all)."""
        heads = [q for q in QUERIES if q.key in HEAD_KEYS]
        slowest = [0.0]  # the longest answer this poll, s
        try:
            done = await self._query_all(heads, slowest)
        except PromError as exc:
            if "no answer in" in str(exc):
                self._patience = min(self.first_timeout, 2 * self._patience)
            raise
        earned = max(QUERY_TIMEOUT_S, 3 * slowest[0])
        self._patience = min(self.first_timeout, earned)
        return done

    async def _query_all(
        self, heads: list[PromQuery], slowest: list[float]
    ) -> tuple[float, dict[str, _Answer], set[str] | None]:
        first = heads[0]
        vec = await asyncio.to_thread(
            self.client.query, first.expr, None, self._timeout(first.key, None)
        )
        at = vec.at if vec.series else time.time()
        gate = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def one(q: PromQuery, hosts: set[str] | None) -> tuple[str, _Answer]:
            expr = q.expr if hosts is None else only(q.expr, matchers[q.cadence])
            async with gate:
                t0 = self._now()
                got = await asyncio.to_thread(
                    self.client.query, expr, at, self._timeout(q.key, hosts)
                )
                slowest[0] = max(slowest[0], self._now() - t0)
            return q.key, (got, hosts)

        # Every head query ends (each within its timeout) before a failure is raised: a
        # failed poll that left its queries running would overlap the next poll's on a
        # Prometheus already too busy to answer, and hold the threads the next one needs.
        heads_got = await asyncio.gather(*(one(q, None) for q in heads[1:]), return_exceptions=True)
        for answer in heads_got:
            if isinstance(answer, BaseException):
                raise answer
        answers = dict(a for a in heads_got if not isinstance(a, BaseException))
        answers[first.key] = (vec, None)
        scraped = {labels.get("Hostname", ""): v for labels, v in answers["scraped"][0].series}
        plan = self._plan(scraped)
        asked: list[tuple[PromQuery, set[str] | None]]
        if not self.polls:  # the first: what the table needs, of every node
            asked = [(q, None) for q in QUERIES if q.first and q.key not in HEAD_KEYS]
            plan = {"fast": None, "static": set(), "slow": set()}
        else:
            asked = [
                (q, plan[q.cadence])
                for q in QUERIES
                if q.key not in HEAD_KEYS and plan[q.cadence] != set()
            ]
        matchers = {c: host_matcher(hosts) for c, hosts in plan.items() if hosts}
        got = await asyncio.gather(*(one(q, hosts) for q, hosts in asked), return_exceptions=True)
        failed: set[Cadence] = set()
        for (q, _), answer in zip(asked, got, strict=True):
            if isinstance(answer, PromError) and self.polls and q.cadence != "fast":
                failed.add(q.cadence)  # the fast view stands; these stay due for the next poll
                log.warning("the %s set was not read: %s", q.cadence, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                answers[answer[0]] = answer[1]
        for cadence in failed:
            plan[cadence] = set()
            for q in QUERIES:
                if q.cadence == cadence:
                    answers.pop(q.key, None)
        self._asked = plan
        rebuild: set[str] | None = set()
        for hosts in plan.values():
            rebuild = None if hosts is None or rebuild is None else rebuild | hosts
        return at, answers, rebuild

    def _plan(self, scraped: dict[str, float]) -> dict[Cadence, set[str] | None]:
        """For each cadence, the hosts to ask this poll (None: the whole fleet, which costs
        less than a selector naming most of it)."""
        window = 0.9 * SLOW_EVERY * self.period  # on Prometheus' clock: scrape times jitter
        fast, static, slow = set(), set(), set()
        for host, at in scraped.items():
            if self._index.value("scraped", host) != at:
                fast.add(host)  # scraped since the last poll: news
            read = self._static.get(host)
            stamp = self._index.value("stamp", host)
            if (
                read is None
                or (stamp is not None and stamp != read[0])
                # An agent without the stamp (older), or not fresh at the read (its readings,
                # the memory size among them, were withheld): again once a window.
                or ((stamp is None or not read[2]) and at - read[1] >= window)
            ):
                static.add(host)
            slow_at = self._slow.get(host)
            if slow_at is None or at - slow_at >= window:
                slow.add(host)
        due: dict[Cadence, set[str]] = {"fast": fast, "static": static, "slow": slow}
        plan: dict[Cadence, set[str] | None] = dict(due)
        for cadence, hosts in due.items():
            if cadence != "fast" and len(hosts) > CATCH_UP_NODES:
                # Those read longest ago first; the rest on the next polls.
                table = (
                    self._slow if cadence == "slow" else {h: r[1] for h, r in self._static.items()}
                )
                plan[cadence] = set(
                    sorted(hosts, key=lambda h: (table.get(h, -math.inf), h))[:CATCH_UP_NODES]
                )
            elif 2 * len(hosts) > len(scraped):
                plan[cadence] = None
        return plan

    @property
    def behind(self) -> int:
        """Nodes in Prometheus whose static or slow set was never read yet."""
        present = self._index.hosts("scraped")
        return sum(h not in self._static or h not in self._slow for h in present)

    def _convert(
        self, answers: dict[str, _Answer], rebuild: set[str] | None
    ) -> tuple[list[str], dict[str, PromNode]]:
        """Into the index, then the frames of the nodes to rebuild (all, if None); and every
        host Prometheus has a sample time for. On a worker thread, one at a time."""
        for key, (vec, hosts) in answers.items():
            self._index.update(key, vec, hosts)
            self._read.add(key)
        present = self._index.hosts("scraped")
        for cadence in ("static", "slow"):
            hosts = self._asked[cadence]
            for host in present if hosts is None else hosts:
                at = self._index.value("scraped", host)
                if at is None:
                    continue
                if cadence == "slow":
                    self._slow[host] = at
                else:
                    fresh = (self._index.value("fresh", host) or 0) >= 1
                    self._static[host] = (self._index.value("stamp", host), at, fresh)
        return present, nodes_of(self._index, present if rebuild is None else rebuild)

    def _failed(self, why: str, link: LinkState = "unreachable", said: bool = False) -> None:
        """The source's fault, and every node's data left to age into ``link``: Prometheus
        failing (logged at WARNING, once while it says the same), or, ``fault``, our own
        code (``said``: logged already, with the traceback)."""
        if self.fault != why and not said:
            log.warning("%s", why)
        self.fault = why
        now = self._now()
        where = "Prometheus" if link == "unreachable" else "the Prometheus source"
        for name in self.fleet.nodes:
            self.fleet.set_link(name, link, f"{where}: {why}", now)
        self.fleet.tick(now)

    def _apply(self, present: list[str], nodes: dict[str, PromNode], at: float, now: float) -> None:
        """``present``: every host Prometheus has; ``nodes``: those with news (the others are
        as the model already has them)."""
        found: set[str] = set()
        unknown: set[str] = set()
        for host in present:
            name = self._names.get(host)
            if name is None or name in found:
                unknown.add(host)
                continue
            found.add(name)
            node = nodes.get(host)
            if node is not None:
                self._node(name, node, at, now)
        for name in self.fleet.nodes.keys() - found:
            seen = self._seen.get(name)
            if seen is None:
                why = (
                    f"not in Prometheus: no gpufleet series with Hostname={name} (is the "
                    "agent's [metrics] listen set, and the address in Prometheus' scrape config?)"
                )
            else:
                why = (
                    "its series left Prometheus: the last scrape of its agent's /metrics failed "
                    "(agent or node down?), or it left the scrape config"
                )
            self.fleet.set_link(name, "no_data", why, now)
        new = unknown - self._told_unknown
        if new:
            log.info("not in the inventory, ignored: %s", ", ".join(sorted(new)))
            self._told_unknown |= new
        self.unknown = unknown
        self.fleet.tick(now)

    def _node(self, name: str, node: PromNode, at: float, now: float) -> None:
        fleet = self.fleet
        seen = self._seen.setdefault(name, _Seen())
        if seen.scraped is not None and node.scraped > seen.scraped:
            seen.gap = node.scraped - seen.scraped
        seen.scraped = node.scraped
        interval = max(node.interval or 1.0, seen.gap or FIRST_SCRAPE_GUESS_S, self.period)
        agent = node.agent or ("gpufleet-agent (version not exported)", "?")
        if seen.agent != (*agent, interval):
            seen.agent = (*agent, interval)
            fleet.set_agent(name, agent[0], agent[1], interval)

        # The model holds the node's one inventory frame, its ops state a field of it: a new
        # state is told first, as the agent tells it (an event), and what then still differs
        # is a new inventory (GPUs, agent). Nothing kept beside it, nothing stripped.
        view = fleet.nodes[name]
        state = node.inventory.state
        if view.inventory is not None and state is not None and state != view.state:
            fleet.apply(name, _state_event(state, at), now)
        if node.inventory != view.inventory:
            fleet.apply(name, node.inventory, now)

        sample = node.sample
        if sample is not None and node.sample_ts != seen.sample_ts:
            seen.sample_ts = node.sample_ts
            seen.seq += 1
            # Its age: since Prometheus scraped it (its own clock), plus how old the agent's
            # sample was then (the agent's clock against Prometheus', never below zero).
            age = max(0.0, at - node.scraped) + max(0.0, node.scraped - sample.ts)
            fleet.apply(name, msgspec.structs.replace(sample, seq=seen.seq), now - age)
        elif sample is not None and node.sample_ts == seen.sample_ts:
            # The same sample with readings read since (the static and slow sets come after
            # the first screen): shown, without counting as a new sample.
            fleet.amend(name, msgspec.structs.replace(sample, seq=seen.seq), now)
        elif sample is None and view.sample_at is None:
            why = "its agent has no current sample (sampling stalled, or just started)"
            fleet.set_link(name, "no_data", why, now)
        for event in node.xids:
            key = (event.gpu or 0, event.ts)
            if key not in seen.xids:
                seen.xids.add(key)
                fleet.apply(name, event, now)


def _state_event(state: NodeState, at: float) -> Event:
    """A change of ops state read from Prometheus, as the agent would announce it."""
    said = state.state + (f": {state.reason}" if state.reason else "")
    return Event(seq=0, ts=state.since or at, kind="state", message=said, state=state)


async def prom_snapshot(
    entries: list[NodeEntry], url: str, *, wait: float
) -> tuple[FleetState, str | None]:
    """The fleet as Prometheus has it for ``status``, and the source's fault (None when it
    answered): the first poll, then the one that reads the static and slow sets. ``wait``
    bounds each query."""
    wait = max(1.0, wait)
    source = PromSource(entries, url, client=PromClient(url, timeout=wait), first_timeout=wait)
    await source.poll()
    if source.fault is None:
        await source.poll()
    return source.fleet, source.fault
