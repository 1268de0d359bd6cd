"""The Slurm adapter: drain, resume, reboot and partition moves through ``scontrol``, the node's
state read back from ``sinfo --json`` (design.md §3).

Slurm's words are passed on as Slurm said them: an ``scontrol`` error reaches the operator
verbatim. The reason is one argv element (``Reason=<text>``), never a shell string, so quotes,
``$(...)`` and non-ASCII arrive in ``sinfo`` unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from typing import Any, Final

import hostlist

from agents.ops.commands import CommandFailed, run_argv
from agents.protocol import NodeState, OpsState
from agents.schedulers.base import SchedulerKind, SchedView

#: Reads of the node's partitions a move makes before giving up (see ``move``).
MOVE_ATTEMPTS: Final = 12
#: Base states in which jobs are still on the node: with the DRAIN flag it is DRAINING.
_BUSY_STATES = frozenset({"ALLOCATED", "MIXED", "COMPLETING"})
#: States in which Slurm gives the node no work, drain flag or not.
_OUT_STATES = frozenset({"DOWN", "FAIL", "FAILING", "MAINTENANCE", "FUTURE", "UNKNOWN"})


def _words(value: Any) -> set[str]:
    """Slurm 22.05 gives ``state`` as a string and ``state_flags`` as a list; later versions
    give ``state`` as a list of words. Both become one upper-case set."""
    if isinstance(value, str):
        return {w.upper() for w in value.replace("+", " ").split()}
    if isinstance(value, list):
        return {str(w).upper() for w in value}
    return set()


def node_view(doc: dict[str, Any], node: str, pools: Sequence[str]) -> SchedView:
    """The node's entry in a ``sinfo --json`` document, as an ops state and pool.

    Raises CommandFailed("unknown_node") when Slurm does not list it. The pool is the first of
    the node's partitions that is one of ``pools`` (any partition when ``pools`` is empty)."""
    for entry in doc.get("nodes", []):
        if entry.get("name") == node or (entry.get("hostname") == node and not entry.get("name")):
            break
    else:
        raise CommandFailed("unknown_node", f"sinfo: Slurm lists no node named {node}")
    words = _words(entry.get("state")) | _words(entry.get("state_flags"))
    state: OpsState
    if "DRAIN" in words:
        state = "draining" if words & _BUSY_STATES else "drained"
    elif words & _OUT_STATES:
        state = "drained"
    else:
        state = "schedulable"
    partitions = [p for p in entry.get("partitions", []) if isinstance(p, str)]
    managed = [p for p in partitions if not pools or p in pools]
    reason = entry.get("reason") or None
    return SchedView(state=state, pool=managed[0] if managed else None, reason=reason)


class SlurmScheduler:
    kind: SchedulerKind = "slurm"
    reboots = True

    def __init__(
        self,
        node: str,
        *,
        pools: Sequence[str] = (),
        timeout: float = 30.0,
        scontrol: str = "scontrol",
        sinfo: str = "sinfo",
        slurm_conf: str | None = None,
    ) -> None:
        """``node`` is the node's Slurm name (it may differ from the host name)."""
        self.node = node
        self.pools = tuple(pools)
        self.timeout = timeout
        self.scontrol = scontrol
        self.sinfo = sinfo
        self.env = {"SLURM_CONF": slurm_conf} if slurm_conf else None

    async def _run(self, *argv: str) -> str:
        return (await run_argv(argv, limit=self.timeout, env=self.env)).stdout

    async def _sinfo(self) -> dict[str, Any]:
        """``sinfo --json`` (22.05 lists every node whatever ``--nodes`` says: the caller
        picks the node out)."""
        out = await self._run(self.sinfo, "--json", "--nodes", self.node)
        try:
            doc = json.loads(out)
        except ValueError:
            raise CommandFailed("command_failed", "sinfo --json: not valid JSON") from None
        if not isinstance(doc, dict):
            raise CommandFailed("command_failed", "sinfo --json: not a JSON object")
        # With slurmctld down, 22.05's sinfo exits 0 with no nodes and the error in the JSON.
        errors = [e.get("error", "?") for e in doc.get("errors") or [] if isinstance(e, dict)]
        if errors:
            raise CommandFailed("command_failed", f"sinfo: {'; '.join(map(str, errors))}")
        return doc

    async def view(self) -> SchedView:
        return node_view(await self._sinfo(), self.node, self.pools)

    async def _update(self, *fields: str) -> None:
        await self._run(self.scontrol, "update", f"NodeName={self.node}", *fields)

    async def drain(self, reason: str, within: float | None) -> None:
        """Slurm moves DRAINING to DRAINED itself when the last job ends; ``within`` is not
        Slurm's to enforce (it never kills jobs for a drain), the console's wait bounds it."""
        await self._update("State=DRAIN", f"Reason={reason}")

    async def resume(self, reason: str) -> None:
        await self._update("State=RESUME")

    async def reboot(self, reason: str) -> None:
        """Slurm drains the node, reboots it when idle and resumes it when slurmd is back."""
        await self._run(
            self.scontrol, "reboot", "ASAP", "nextstate=RESUME", f"reason={reason}", self.node
        )

    async def _members(self, partition: str) -> list[str]:
        """The partition's nodes, expanded; CommandFailed("unknown_pool") if there is none."""
        try:
            out = await self._run(self.scontrol, "show", "partition", partition, "--oneliner")
        except CommandFailed as exc:
            if "not found" in str(exc):
                raise CommandFailed("unknown_pool", f"Slurm has no partition {partition}") from None
            raise
        for field in out.split():
            if field.startswith("Nodes="):
                value = field.removeprefix("Nodes=")
                return [] if value in ("", "(null)") else hostlist.expand_hostlist(value)
        raise CommandFailed("command_failed", f"scontrol show partition {partition}: no Nodes=")

    async def _edit(self, partition: str, add: bool) -> None:
        """Put the node in (or take it out of) ``partition``: ``Nodes+=`` / ``Nodes-=`` where
        Slurm takes them (23.02 on), else the partition's whole list, read and rewritten."""
        sign = "+" if add else "-"
        try:
            await self._run(
                self.scontrol, "update", f"PartitionName={partition}", f"Nodes{sign}={self.node}"
            )
            return
        except CommandFailed as exc:
            if "not supported" not in str(exc):
                raise
        members = await self._members(partition)
        if (self.node in members) == add:
            return
        members = [*members, self.node] if add else [n for n in members if n != self.node]
        nodes = hostlist.collect_hostlist(members) if members else ""
        await self._run(self.scontrol, "update", f"PartitionName={partition}", f"Nodes={nodes}")

    async def _partitions(self) -> list[str]:
        for entry in (await self._sinfo()).get("nodes", []):
            if entry.get("name") == self.node:
                return [p for p in entry.get("partitions", []) if isinstance(p, str)]
        raise CommandFailed("unknown_node", f"sinfo: Slurm lists no node named {self.node}")

    async def move(self, old: str | None, pool: str, reason: str) -> None:
        """Into ``pool``, then out of the node's other managed partitions (a failure half-way
        leaves it in too many, never in none), until it is seen there twice in a row.

        The re-reading is for Slurm 22.05, which has no ``Nodes+=``: agents moving their
        nodes into one partition at once each rewrite its whole list, and a later write made
        from an earlier read drops a node another agent had just added. Each agent checks its
        own node again a moment later and puts it back, so a fan-out converges."""
        await self._members(pool)  # a partition that is not there is named as such
        seen_right = 0
        for _ in range(MOVE_ATTEMPTS):
            parts = await self._partitions()
            extra = [p for p in parts if p != pool and (not self.pools or p in self.pools)]
            if pool in parts and not extra:
                seen_right += 1
                if seen_right == 2:
                    return
            else:
                seen_right = 0
                if pool not in parts:
                    await self._edit(pool, add=True)
                for part in extra:
                    await self._edit(part, add=False)
            await asyncio.sleep(random.uniform(0.1, 0.4))  # noqa: S311 jitter, not a secret
        raise CommandFailed(
            "command_failed", f"could not move {self.node} to {pool}: the partitions kept changing"
        )

    async def recover(self, saved: NodeState) -> None:
        """Nothing is in flight on our side: Slurm finishes its drains and reboots itself."""
        return None

    def close(self) -> None:
        return None
