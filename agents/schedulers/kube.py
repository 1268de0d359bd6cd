"""The Kubernetes adapter: cordon and evict through ``kubectl``, the pool as a node label
(design.md §3).

A drain is ``kubectl cordon`` (the node takes no new pods at once: DRAINING), then
``kubectl drain --ignore-daemonsets --delete-emptydir-data --timeout=T`` in the background;
when that returns the node is DRAINED. If it fails (a PodDisruptionBudget, the timeout), the
node stays cordoned and DRAINING and the agent says why: a pod Kubernetes would not evict is
still running, so calling the node drained would be a lie.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from agents.ops.commands import CommandFailed, run_argv
from agents.protocol import NodeState, OpsState
from agents.schedulers.base import SchedulerKind, SchedView

log = logging.getLogger(f"gpufleet.{__name__}")

#: ``kubectl drain --timeout`` when the request gives none.
DEFAULT_DRAIN_TIMEOUT = 600.0


def node_view(doc: dict[str, Any], pool_label: str, evicting: bool) -> SchedView:
    """A ``kubectl get node -o json`` document as an ops state and pool."""
    spec = doc.get("spec") or {}
    labels = (doc.get("metadata") or {}).get("labels") or {}
    state: OpsState = "schedulable"
    if spec.get("unschedulable"):
        state = "draining" if evicting else "drained"
    pool = labels.get(pool_label)
    return SchedView(state=state, pool=pool if isinstance(pool, str) else None, reason=None)


class KubeScheduler:
    kind: SchedulerKind = "kubernetes"
    reboots = False

    def __init__(
        self,
        node: str,
        *,
        pools: Sequence[str] = (),
        timeout: float = 30.0,
        kubectl: str = "kubectl",
        kubeconfig: str | None = None,
        pool_label: str = "gpufleet.io/pool",
        told: Callable[[str], None] = lambda message: None,
    ) -> None:
        """``told`` hears how a background eviction ended (the agent turns it into an event
        and re-reads the node)."""
        self.node = node
        self.pools = tuple(pools)
        self.timeout = timeout
        self.kubectl = kubectl
        self.env = {"KUBECONFIG": kubeconfig} if kubeconfig else None
        self.pool_label = pool_label
        self.told = told
        self._evicting: asyncio.Task[None] | None = None
        self._evict_failed = False  # our last eviction ended with pods left on the node

    async def _run(self, *args: str, limit: float | None = None) -> str:
        argv = (self.kubectl, *args)
        return (await run_argv(argv, limit=limit or self.timeout, env=self.env)).stdout

    @property
    def evicting(self) -> bool:
        """Pods may still be on the node because of our drain: running or failed."""
        running = self._evicting is not None and not self._evicting.done()
        return running or self._evict_failed

    async def view(self) -> SchedView:
        out = await self._run("get", "node", self.node, "--output=json")
        try:
            doc = json.loads(out)
        except ValueError:
            raise CommandFailed("command_failed", "kubectl get node: not valid JSON") from None
        return node_view(doc, self.pool_label, self.evicting)

    async def drain(self, reason: str, within: float | None) -> None:
        await self._run("cordon", self.node)
        wait = DEFAULT_DRAIN_TIMEOUT if within is None else within
        self._evict_failed = False
        self._evicting = asyncio.create_task(self._evict(wait))

    async def _evict(self, wait: float) -> None:
        """Evict the node's pods; kubectl's own timeout ends it, ours is a little later."""
        try:
            await self._run(
                "drain",
                self.node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                f"--timeout={max(1, round(wait))}s",
                limit=wait + self.timeout,
            )
        except CommandFailed as exc:
            log.warning("drain: eviction failed: %s", exc)
            self._evict_failed = True
            self.told(f"draining: pods not evicted, node stays cordoned: {exc}")
        else:
            self.told("drained: pods evicted")

    async def resume(self, reason: str) -> None:
        self._stop_evicting()
        await self._run("uncordon", self.node)

    async def move(self, old: str | None, pool: str, reason: str) -> None:
        if self.pools and pool not in self.pools:
            raise CommandFailed(
                "unknown_pool", f"{pool} is not one of this node's pools ({', '.join(self.pools)})"
            )
        await self._run("label", "node", self.node, f"{self.pool_label}={pool}", "--overwrite")

    async def reboot(self, reason: str) -> None:
        raise CommandFailed("not_supported", "Kubernetes does not reboot nodes")

    async def recover(self, saved: NodeState) -> None:
        """A drain the last run left DRAINING had its eviction cut short: start it again
        (kubectl drain is idempotent), with whatever remains of its deadline."""
        if saved.state != "draining":
            return
        now = time.time()
        left = None if saved.deadline is None else max(1.0, saved.deadline - now)
        log.info("drain: evicting again after a restart")
        await self.drain(saved.reason or "", left)

    def _stop_evicting(self) -> None:
        self._evict_failed = False
        if self._evicting is not None and not self._evicting.done():
            self._evicting.cancel()

    def close(self) -> None:
        self._stop_evicting()
