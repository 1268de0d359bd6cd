"""A per-client send queue that bounds what a slow reader can cost the agent.

Samples are replaceable (the next one supersedes the last), so past a limit the oldest queued
sample is dropped for that client. Responses and events are not: losing a response leaves an
operator not knowing whether their drain happened. Those are never dropped; if they pile up past
their own limit, or a client has been dropping samples for too long, the client is too far
behind to be useful and ``overflowed`` says why, for the server to tell it and disconnect it.
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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._items: deque[tuple[bool, bytes]] = deque()  # (is_sample, frame)
        self._samples = 0
        self._max_samples = max_samples
        self._max_other = max_other
        self._max_behind = max_behind
        self._monotonic = monotonic
        self._ready = asyncio.Event()
        self.dropped = 0  # samples dropped for this client, in all
        self._dropping_since: float | None = None
        self.overflowed: str | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put_sample(self, frame: bytes) -> None:
        if self.overflowed:
            return
        self._items.append((True, frame))
        self._samples += 1
        if self._samples > self._max_samples:
            self._drop_oldest_sample()
        self._ready.set()

    def put(self, frame: bytes) -> None:
        """A frame that must arrive (response, event, error)."""
        if self.overflowed:
            return
        self._items.append((False, frame))
        if len(self._items) - self._samples > self._max_other:
            self.overflowed = f"more than {self._max_other} responses and events unread"
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

    async def take(self) -> list[bytes]:
        """Everything queued, in order, waiting until there is something."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        frames = [frame for _, frame in self._items]
        self._items.clear()
        self._samples = 0
        self._dropping_since = None  # the client has caught up with what we had
        return frames
