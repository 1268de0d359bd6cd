"""Short full collections on a big fleet, without keeping the garbage of ended sessions.

The cyclic collector's full passes walk every tracked object; with 1,000 nodes that stopped
the screen for tens of milliseconds each time, often enough to stall keys. ``gc.freeze()``
takes what is alive out of those passes. But it also takes it out of collection: an object
frozen that later becomes cyclic garbage is never freed. Each node's SSH session (the
asyncssh connection, its channel and streams, the link's frames: about 170 objects) is alive
when the fleet has answered, and all of it is cyclic garbage once that session ends and the
link reconnects; frozen once for good, every node kept its first session for the life of the
console.

So the heap is frozen once the fleet has answered (or after a minute), and frozen again
(unfreeze, collect, freeze) once enough of the nodes have ended the session they had then:
one full pass per that many reconnections, at most one a minute and never while the operator
is typing, instead of keeping them. The garbage kept is bounded by a tenth of the fleet's
sessions (at least ``REFREEZE_MIN_NODES``) plus what ends in the minute between two freezes,
and never more than the one session per node a single freeze could keep. Headless: the screen
and the soak bench call ``step`` at their refresh rate.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from console.logs import get_logger
from console.model.fleet import FleetState

log = get_logger(__name__)

#: Freeze by then even if some nodes are still connecting.
FREEZE_AFTER_S: Final = 60.0
#: Freeze again once this share of the nodes ended the session they had at the last freeze...
REFREEZE_SHARE: Final = 0.1
#: ... or this many, whichever is more (a small fleet's full pass is short anyway) ...
REFREEZE_MIN_NODES: Final = 8
#: ... and no sooner than this after the last freeze: one full pass a minute at most.
REFREEZE_EVERY_S: Final = 60.0


class Session(Protocol):
    """What the freezer reads of a node's link (``NodeLink``)."""

    @property
    def ended(self) -> int: ...


class HeapFreezer:
    def __init__(
        self,
        fleet: FleetState,
        links: Mapping[str, Session] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        freeze_after: float = FREEZE_AFTER_S,
        refreeze_nodes: int | None = None,
        refreeze_every: float = REFREEZE_EVERY_S,
    ) -> None:
        """``links``: each node's link, whose ended sessions say what a freeze has kept; none
        (a model fed by a test) freezes once. ``refreeze_nodes``: how many nodes must have
        ended their frozen session before freezing again (default: a tenth of the links, at
        least ``REFREEZE_MIN_NODES``)."""
        self.fleet = fleet
        self.links = links if links is not None else {}
        self._clock = clock
        self._freeze_after = freeze_after
        self._refreeze_every = refreeze_every
        self._started = clock()
        self.frozen_at: float | None = None
        self.freezes = 0
        self.longest_s = 0.0  # the longest freeze: its full collection is a pause
        self._ended: dict[str, int] = {}  # each link's ended sessions at the last freeze
        share = max(REFREEZE_MIN_NODES, round(REFREEZE_SHARE * len(self.links)))
        self._needed = refreeze_nodes if refreeze_nodes is not None else share

    def stale_nodes(self) -> int:
        """Nodes that ended, since the last freeze, the session they had then: what the
        freeze keeps that is no longer used (a node counts once however often it flaps)."""
        return sum(1 for n, link in self.links.items() if link.ended != self._ended.get(n))

    def step(self, busy: bool = False) -> bool:
        """Freeze or freeze again if it is time (called at the refresh rate); whether it did.
        ``busy``: the operator is at the keys, so the full collection waits for a pause in
        their typing rather than delay what they see."""
        now = self._clock()
        if busy:
            return False
        if self.frozen_at is None:
            settled = all(v.link != "connecting" for v in self.fleet.nodes.values())
            if not settled and now - self._started <= self._freeze_after:
                return False
        elif now - self.frozen_at < self._refreeze_every or self.stale_nodes() < self._needed:
            return False
        self.freeze(now)
        return True

    def freeze(self, now: float) -> None:
        """Collect everything, frozen before included, then freeze what is left."""
        began = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        took = time.perf_counter() - began
        self._ended = {n: link.ended for n, link in self.links.items()}
        self.frozen_at = now
        self.freezes += 1
        self.longest_s = max(self.longest_s, took)
        log.info(
            "heap frozen (%d): %d objects, full collection %.0f ms",
            self.freezes,
            gc.get_freeze_count(),
            1000 * took,
        )
