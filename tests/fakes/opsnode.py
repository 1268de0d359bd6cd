"""A node's request handler as the agent builds it, on a real store, for the ops tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.ops.requests import Caller, RequestHandler
from agents.ops.state import StateOwner
from agents.ops.store import AuditLog, StateStore
from agents.protocol import NodeState, Request
from agents.serve.identity import Peer

NOW = 1_800_000_000.0
OLGA = Caller(Peer(pid=1, uid=2002, gid=2002, user="olga", groups=("ops",)), "operator")
VIC = Caller(Peer(pid=2, uid=2001, gid=2001, user="vic", groups=("vic",)), "viewer")
TRICKY = "fans; $(reboot) `id` \"quoted\" 'single' ünïcødé\nsecond line"


class Node:
    """The agent's side of the ops state: a real store, a list of announcements and of the
    lines told to operators. ``busy`` GPUs have work on them; ``extra`` goes to the handler
    (a scheduler, the restart allowlist)."""

    def __init__(self, root: Path, busy: bool = False, gpus: int = 2, **extra: Any) -> None:
        self.store = StateStore(root)
        self.audit = AuditLog(root)
        self.ops = StateOwner(self.store, node="n1", clock=lambda: NOW)
        self.ops.listen(self._changed)
        self.announced: list[NodeState] = []
        self.told: list[str] = []
        self.busy: set[int] = {0} if busy else set()
        self.handler = RequestHandler(
            node="n1",
            audit=self.audit,
            ops=self.ops,
            inject=extra.pop("inject", None),
            clock=lambda: NOW,
            told=self.told.append,
            busy_gpus=lambda: frozenset(self.busy),
            gpus=lambda: list(range(gpus)),
            **extra,
        )

    @property
    def state(self) -> NodeState:
        return self.ops.state

    def _changed(self, state: NodeState) -> None:
        self.announced.append(state)

    async def ask(self, op: str, caller: Caller = OLGA, **args: Any) -> Any:
        return await self.handler.handle(caller, Request(id=1, op=op, args=args))
