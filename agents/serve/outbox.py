"""A per-client send queue that bounds what a slow reader can cost the agent.

Samples are replaceable (the next one supersedes the last), so past a limit the oldest queued
sample is dropped for that client. Responses and events are not: losing a response leaves an
operator not knowing whether their drain happened. Those are never dropped. Instead:

- a client's own requests are paced by its reading: the server waits for ``room()`` before
  handling the next one, so a client that pipelines requests and does not read only fills its
  own socket buffers, not the agent's memory;
- events, which the agent sends unasked, can still pile up behind a client that has stopped
  reading; past ``max_other`` frames or ``max_bytes``, or after dropping samples for longer than
  ``max_behind``, the client is too far behind to be useful, and ``overflowed`` says why, for
  the server to tell it and disconnect it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Outbox:
    def __init__(
        self,
        *,
        max_samples: int,
        max_other: int,
        max_behind: float,
        max_bytes: int = 4 << 20,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._items: deque[tuple[bool, bytes]] = deque()  # (is_sample, frame)
        self._samples = 0
        self._other_bytes = 0
        self._max_samples = max_samples
        self._max_other = max_other
        self._max_bytes = max_bytes
        self._max_behind = max_behind
        self._monotonic = monotonic
        self._ready = asyncio.Event()
        self._taken = asyncio.Event()
        self.dropped = 0  # samples dropped for this client, in all
        self._dropping_since: float | None = None
        self._held_since: float | None = None  # a history is being written before us
        self.overflowed: str | None = None
        self.closed = False

    def hold(self) -> None:
        """The client is sent its history first (written apart, paced by its reading): keep
        every sample queued meanwhile, until the first ``take``. Dropping the oldest of them,
        as past ``max_samples`` otherwise, would lose the very sample that joins the history
        to the live stream, a gap no reader can tell from the end of the history. Bounded by
        time: a history still unread after ``max_behind`` overflows the client."""
        self._held_since = self._monotonic()

    def close(self, *, samples: bool = True) -> list[bytes]:
        """The client is being closed: release anyone waiting in ``room`` or ``take``, and
        hand back what was still queued (responses it should still get before the goodbye),
        its samples only if ``samples``."""
        self.closed = True
        self._taken.set()
        self._ready.set()
        frames = [frame for is_sample, frame in self._items if samples or not is_sample]
        self._items.clear()
        return frames

    def __len__(self) -> int:
        return len(self._items)

    @property
    def _others(self) -> int:
        return len(self._items) - self._samples

    def put_sample(self, frame: bytes) -> None:
        if self.overflowed:
            return
        self._items.append((True, frame))
        self._samples += 1
        if self._held_since is not None:
            if self._monotonic() - self._held_since > self._max_behind:
                self.overflowed = f"history unread for more than {self._max_behind:g} s"
        elif self._samples > self._max_samples:
            self._drop_oldest_sample()
        self._ready.set()

    def put(self, frame: bytes) -> None:
        """A frame that must arrive (response, event, error)."""
        if self.overflowed:
            return
        self._items.append((False, frame))
        self._other_bytes += len(frame)
        if self._others > self._max_other:
            self.overflowed = f"more than {self._max_other} responses and events unread"
        elif self._other_bytes > self._max_bytes:
            self.overflowed = f"more than {self._max_bytes} bytes of responses and events unread"
        self._ready.set()

    def _drop_oldest_sample(self) -> None:
        for i, (is_sample, _) in enumerate(self._items):
            if is_sample:
                del self._items[i]
                break
        self._samples -= 1
        self.dropped += 1
        now = self._monotonic()
        if self._dropping_since is None:
            self._dropping_since = now
        elif now - self._dropping_since > self._max_behind:
            self.overflowed = f"behind by more than {self._max_behind:g} s of samples"

    def _roomy(self) -> bool:
        return self._others <= self._max_other // 2 and self._other_bytes <= self._max_bytes // 2

    async def room(self) -> None:
        """Wait until the client has read enough that another response fits comfortably."""
        while not self._roomy() and not self.overflowed and not self.closed:
            self._taken.clear()
            await self._taken.wait()

    async def take(self) -> list[bytes]:
        """Everything queued, in order, waiting until there is something."""
        while not self._items and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        frames = [frame for _, frame in self._items]
        self._items.clear()
        self._samples = 0
        self._other_bytes = 0
        self._dropping_since = None  # the client has caught up with what we had
        self._held_since = None
        self._taken.set()
        return frames
