"""Who decides whether a node takes work: nobody but us (``none``), Slurm, or Kubernetes.

The agent's requests are the same on every node; an adapter turns them into the scheduler's
own commands (design.md §3) and reads back the scheduler's view of the node. Where there is a
scheduler, its view is the truth (an admin's ``scontrol update`` counts as much as ours) and
the agent's saved state follows it; on a bare node the agent's saved state is the only truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from agents.ops.commands import CommandFailed
from agents.protocol import NodeState, OpsState

SchedulerKind = Literal["none", "slurm", "kubernetes"]


@dataclass(frozen=True, slots=True)
class SchedView:
    """The node as the scheduler sees it."""

    state: OpsState
    pool: str | None
    reason: str | None  # the scheduler's own reason, where it keeps one


class Scheduler(Protocol):
    kind: SchedulerKind
    #: Whether a node restart is the scheduler's to do (Slurm reboots it when idle and
    #: resumes it); otherwise the agent reboots a drained node itself.
    reboots: bool

    async def view(self) -> SchedView | None:
        """The scheduler's view now; None where the agent's own state is the truth."""
        ...

    async def drain(self, reason: str, within: float | None) -> None: ...

    async def resume(self, reason: str) -> None: ...

    async def move(self, old: str | None, pool: str, reason: str) -> None:
        """Put the node in ``pool`` (and out of ``old``). Raises CommandFailed("unknown_pool")
        when the scheduler has no such pool."""
        ...

    async def reboot(self, reason: str) -> None: ...

    async def recover(self, saved: NodeState) -> None:
        """At start, pick up work the last run of the agent left in flight."""
        ...

    def close(self) -> None: ...


class NoScheduler:
    """A bare node: the agent's state is all there is, so there is nothing to tell anyone."""

    kind: SchedulerKind = "none"
    reboots = False

    async def view(self) -> SchedView | None:
        return None

    async def drain(self, reason: str, within: float | None) -> None:
        return None

    async def resume(self, reason: str) -> None:
        return None

    async def move(self, old: str | None, pool: str, reason: str) -> None:
        return None

    async def reboot(self, reason: str) -> None:
        raise CommandFailed("not_supported", "no scheduler here reboots nodes")

    async def recover(self, saved: NodeState) -> None:
        return None

    def close(self) -> None:
        return None


def follow(saved: NodeState, view: SchedView, now: float, by: str) -> NodeState:
    """The saved state brought in line with the scheduler's view.

    A change we made keeps our who and reason (Slurm's DRAINING becoming DRAINED is the same
    drain); a change made behind our back (an admin's scontrol) takes the scheduler's reason
    and says who ``by`` (the scheduler's name) did it."""
    if saved.state == view.state and saved.pool == view.pool:
        return saved
    same_drain = saved.state == "draining" and view.state == "drained"
    if view.state == saved.state or same_drain:
        return NodeState(
            state=view.state,
            pool=view.pool,
            reason=saved.reason,
            who=saved.who,
            since=saved.since if saved.state == view.state else now,
        )
    return NodeState(
        state=view.state,
        pool=view.pool,
        reason=view.reason if view.state != "schedulable" else None,
        who=by,
        since=now,
    )
