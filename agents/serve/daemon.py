"""``gpufleet-agent serve``: the sampling loop, the slow-read thread and the socket, together.

The backend's reads run on one worker thread so that a hung NVML call stalls sampling but not
the socket: clients stay connected and see the samples stop, the log says sampling is stalled,
and because the systemd watchdog is only fed after a completed tick, systemd restarts the agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from agents.config import AgentConfig
from agents.export.exporter import MetricsExporter
from agents.export.metrics import MetricsCollector
from agents.gpu.base import GpuBackend
from agents.host import HostSampler, host_info
from agents.ops.commands import CommandFailed
from agents.ops.requests import RequestHandler
from agents.ops.state import StateNotSaved, StateOwner
from agents.ops.store import AuditLog, StateStore, StoreError
from agents.protocol import Event, HostInfo, Inventory, NodeState, Sample, at_work
from agents.sampler import Sampler, inventory_frame
from agents.schedulers.base import NoScheduler, Scheduler
from agents.schedulers.kube import KubeScheduler
from agents.schedulers.slurm import SlurmScheduler
from agents.serve.sdnotify import Notifier
from agents.serve.server import AgentServer

log = logging.getLogger(f"gpufleet.{__name__}")
T = TypeVar("T")

#: A tick that has not returned after this many intervals (at least this many seconds) is
#: reported as stalled; the systemd watchdog decides when to give up on it.
STALL_INTERVALS = 5
STALL_MIN_SECONDS = 5.0
#: How long shutdown waits for a slow read (PCIe throughput blocks ~21 ms per GPU) to finish.
SLOW_JOIN_SECONDS = 5.0


class Worker:
    """One daemon thread for the blocking reads. Not a ThreadPoolExecutor: its threads are
    joined at interpreter exit, so a hung NVML call would keep a stopping agent alive."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the awaiting side, which logs it
                future.set_exception(exc)


def make_scheduler(config: AgentConfig, told: Callable[[str], None]) -> Scheduler:
    """The adapter the config names, talking about the node by its scheduler name."""
    sc = config.scheduler
    node = config.scheduler_node
    if sc.kind == "slurm":
        return SlurmScheduler(
            node,
            pools=sc.pools,
            timeout=sc.timeout,
            scontrol=sc.scontrol,
            sinfo=sc.sinfo,
            slurm_conf=sc.slurm_conf,
        )
    if sc.kind == "kubernetes":
        return KubeScheduler(
            node,
            pools=sc.pools,
            timeout=sc.timeout,
            kubectl=sc.kubectl,
            kubeconfig=sc.kubeconfig,
            pool_label=sc.pool_label,
            told=told,
        )
    return NoScheduler()


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        a = config.agent
        self.config = config
        self.node = config.node
        self.backend = backend
        self.notifier = notifier or Notifier()
        self._clock = clock
        state_dir = Path(a.state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StoreError(f"cannot create the state directory {state_dir}: {reason}") from None
        self.store = StateStore(state_dir)  # written only through ``ops``
        self.ops = StateOwner(self.store, node=self.node, clock=clock)
        self.ops.listen(self._state_changed)
        self._hold_work(self.ops.state)
        self.audit = AuditLog(state_dir)
        self.sampler = Sampler(backend, HostSampler(), history_len=config.history_len, clock=clock)
        self._host: HostInfo = host_info()
        inject = getattr(backend, "inject", None)
        self.scheduler = make_scheduler(config, self._told_by_scheduler)
        self.handler = RequestHandler(
            node=self.node,
            audit=self.audit,
            ops=self.ops,
            inject=inject if callable(inject) else None,
            clock=clock,
            told=self._tell,
            busy_gpus=self._busy_gpus,
            gpus=lambda: [g.index for g in self.backend.inventory().gpus],
            scheduler=self.scheduler,
            pools=config.scheduler.pools,
            restart=config.restart,
            boot_id=lambda: self._host.boot_id,
        )
        self.server = AgentServer(
            config=config,
            node=self.node,
            inventory=self.inventory,
            history=self.sampler.history,
            handler=self.handler,
            interval=a.interval,
        )
        self.metrics: MetricsExporter | None = None
        listen = config.metrics_listen
        if listen is not None:  # opt-in: /metrics from what the agent already holds
            collector = MetricsCollector(
                node=self.node,
                latest=lambda: self.sampler.latest,
                gpus=self.backend.inventory,
                state=lambda: self.ops.state,
                interval=a.interval,
                scheduler=self.scheduler.kind,
                restart_targets=self.handler.restart_targets(),
                clock=clock,
            )
            self.metrics = MetricsExporter(listen, collector)
        self._worker = Worker("sample")
        self._reading_since: float | None = None  # loop time the current read began
        self._slow_stop = threading.Event()
        self._slow_thread = threading.Thread(target=self._slow_loop, name="slow", daemon=True)
        self.serving = asyncio.Event()  # set once the socket is bound and READY was sent
        self._syncs: set[asyncio.Future[None]] = set()

    @property
    def state(self) -> NodeState:
        """The node's ops state now (``ops`` holds it and makes every change to it)."""
        return self.ops.state

    def inventory(self) -> Inventory:
        frame = inventory_frame(self.node, self.backend.inventory(), self._host, self.state)
        return msgspec.structs.replace(
            frame, scheduler=self.scheduler.kind, restart_targets=self.handler.restart_targets()
        )

    def _slow_loop(self) -> None:
        interval = self.config.agent.slow_interval
        while not self._slow_stop.is_set():
            try:
                self.sampler.slow_tick()
            except Exception as exc:  # a backend bug must not end the slow reads for good
                log.error("slow read failed: %s", exc)
            self._slow_stop.wait(interval)

    @property
    def _stall_after(self) -> float:
        return max(STALL_MIN_SECONDS, STALL_INTERVALS * self.config.agent.interval)

    async def _read(self, stop: asyncio.Event) -> Sample | None:
        """One tick's reads on the worker thread, reporting (not abandoning) a stall; gives up
        waiting only when the agent is asked to stop."""
        loop = asyncio.get_running_loop()
        fut = asyncio.wrap_future(self._worker.submit(self.sampler.read))
        started = self._reading_since = loop.time()
        stopping: asyncio.Task[bool] | None = None
        try:
            await asyncio.wait({fut}, timeout=self._stall_after)
            if not fut.done():  # stalled: keep waiting, saying so, until it returns or we stop
                stopping = asyncio.ensure_future(stop.wait())
                waiting: set[asyncio.Future[Any]] = {fut, stopping}
                while not fut.done():
                    waited = loop.time() - started
                    log.error("sampling stalled: the GPU read has not returned for %.0f s", waited)
                    self.notifier.status(f"sampling stalled for {waited:.0f} s")
                    await asyncio.wait(
                        waiting, timeout=self._stall_after, return_when=asyncio.FIRST_COMPLETED
                    )
                    if stopping.done() and not fut.done():
                        return None
        finally:
            self._reading_since = None
            if stopping is not None:
                stopping.cancel()
        try:
            raw = fut.result()
        except Exception as exc:
            log.error("sampling failed: %s", exc)
            return None
        sample, events = self.sampler.record(raw)
        for event in events:
            self._emit(event)
        return sample

    async def _feed_watchdog(self, period: float) -> None:
        """Tell systemd we are alive, on our own timer (so a long sampling interval cannot
        starve it), but only while no read is stuck: a hung NVML call gets us restarted."""
        loop = asyncio.get_running_loop()
        while True:
            since = self._reading_since
            if since is None or loop.time() - since < self._stall_after:
                self.notifier.watchdog()
            await asyncio.sleep(period)

    def _busy_gpus(self) -> frozenset[int]:
        """GPUs with work still on them, from the latest sample: a process listed, or busy
        with none listed (work in another PID namespace lists no process, design.md §2)."""
        latest = self.sampler.latest
        if latest is None:
            return frozenset()
        return frozenset(r.index for r in latest.gpus if at_work(r))

    def _tell(self, message: str) -> None:
        """A line for every operator watching (a reboot that failed after its reply)."""
        self._emit(self.sampler.event("notice", message))

    def _told_by_scheduler(self, message: str) -> None:
        """The scheduler finished something in the background (Kubernetes evicted the pods):
        say so and read the node again."""
        self._tell(message)
        self._background(self.handler.sync())

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        """A task the agent keeps a hold of (and cancels when it stops)."""
        task = asyncio.ensure_future(job)
        self._syncs.add(task)
        task.add_done_callback(self._syncs.discard)

    async def _poll_scheduler(self) -> None:
        """Follow the scheduler's view of the node: DRAINING becoming DRAINED when the last
        job ends, and changes an admin made with the scheduler's own tools."""
        while True:
            await asyncio.sleep(self.config.scheduler.poll)
            await self.handler.sync()

    def _hold_work(self, state: NodeState) -> None:
        """Tell a simulated node's GPUs whether new work may start there: a real node's
        scheduler stops giving a drained node work; the simulator's must be told."""
        hold = getattr(self.backend, "hold_work", None)
        if callable(hold):
            hold(state.state != "schedulable")

    def _state_changed(self, state: NodeState) -> None:
        """A new ops state (already saved): told to the simulator and, as an event, to every
        client."""
        self._hold_work(state)
        said = f"{state.state}" + (f": {state.reason}" if state.reason else "")
        self._emit(self.sampler.event("state", said, state=state))

    async def _advance_drain(self) -> None:
        """DRAINING becomes DRAINED when no GPU has work left, and only then: DRAINED means
        nothing runs there (an operator reboots or resets on that word). A drain's deadline
        passing with work still running is said once, to every console, and the node stays
        DRAINING: ``drain --wait --timeout`` reports it as a timeout."""
        if self.ops.state.state != "draining":
            return
        busy = self._busy_gpus()
        if busy:
            if self.ops.deadline_passed():
                gpus = ", ".join(f"gpu{i}" for i in sorted(busy))
                self._tell(
                    f"drain timeout passed with work still running on {gpus}: still draining"
                )
            return
        try:
            change = await self.ops.work_gone()
        except StateNotSaved as exc:
            log.error("drain: cannot save the drained state: %s", exc)
            return
        if change.changed:
            log.warning("drained (GPUs idle)")

    def _emit(self, event: Event) -> None:
        log.warning("event: %s", event.message)
        self.server.publish(event)
        if self.metrics is not None:
            self.metrics.collector.saw_event(event)
        if event.kind == "gpu_back":  # its static facts were re-read: let clients see them
            self.server.publish(self.inventory())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. Raises GpufleetError if the socket cannot be bound."""
        loop = asyncio.get_running_loop()
        interval = self.config.agent.interval
        watchdog: asyncio.Task[None] | None = None
        poller: asyncio.Task[None] | None = None
        try:
            self.sampler.host.prime()
            self.backend.start_events()
            self._slow_thread.start()
            # A first reading before READY: it proves the backend answers, gives new clients a
            # sample at once, and is the baseline later readings' events are measured from.
            await self._read(stop)
            await self.server.start()
            if self.metrics is not None:
                self.metrics.start()
            inv = self.backend.inventory()
            gpus = f"{len(inv.gpus)} GPU{'' if len(inv.gpus) == 1 else 's'}"
            summary = f"{self.node}: {gpus} via {inv.backend}, on {self.server.path}"
            log.info("serving %s", summary)
            self.notifier.ready(summary)
            if self.notifier.watchdog_interval is not None:
                watchdog = asyncio.create_task(self._feed_watchdog(self.notifier.watchdog_interval))
            if self.scheduler.kind != "none":
                try:
                    await self.scheduler.recover(self.state)
                except CommandFailed as exc:
                    log.error("cannot pick up the drain in flight: %s", exc)
                await self.handler.sync()
                poller = asyncio.create_task(self._poll_scheduler())
            self._background(self.handler.resume_after_reboot())
            self.serving.set()
            next_tick = loop.time() + interval
            while not stop.is_set():
                try:
                    async with asyncio.timeout_at(next_tick):
                        await stop.wait()
                    break
                except TimeoutError:
                    pass
                sample = await self._read(stop)
                if sample is not None:
                    self.server.publish(sample)
                    if self.scheduler.kind == "none":
                        await self._advance_drain()
                # Keep a steady cadence; after a stall, skip the ticks that were missed.
                next_tick += interval
                now = loop.time()
                if next_tick <= now:
                    next_tick = now + interval
        finally:
            for task in (watchdog, poller, *self._syncs):
                if task is not None:
                    task.cancel()
            self.scheduler.close()
            self.notifier.stopping()
            await self.server.close()
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.close)
            self._slow_stop.set()
            if self._slow_thread.is_alive():  # let a slow read finish before NVML shuts down
                await asyncio.to_thread(self._slow_thread.join, SLOW_JOIN_SECONDS)
            self._worker.stop()
            self.backend.close()
            self.notifier.close()
            log.info("stopped")
