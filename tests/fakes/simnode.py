"""A simulated node's agent-side pieces (simulator, sampler), producing the frames a console
link would deliver, without a socket: for the console's model tests. The GPUs are simulated
because no GPU exists on dev or CI machines; the sampler and frames are the agent's own."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from agents.gpu.sim import SimBackend
from agents.host import HostSampler
from agents.ops.restart import allowed_targets
from agents.protocol import Event, HostInfo, HostReading, Inventory, NodeState, Sample
from agents.sampler import Sampler, inventory_frame
from console.model.fleet import FleetState


class QuietHost(HostSampler):
    """A host reading without psutil, so the frames are the same on every machine."""

    def __init__(self) -> None:
        pass

    def prime(self) -> None:
        return None

    def read_slow(self) -> None:
        return None

    def read(self) -> HostReading:
        return HostReading(
            cpu_percent=1.0, cpu_per_core=[1.0], load=(0.0, 0.0, 0.0), mem_total=1, mem_used=0,
            mem_available=1, swap_total=0, swap_used=0, disk_read_bps=0.0, disk_write_bps=0.0,
            net_rx_bps=0.0, net_tx_bps=0.0, uptime_s=1.0, boot_id="b",
        )  # fmt: skip


class AgentClock:
    """The agent's wall clock, one second a tick from a fixed date, so frames are the same
    on every run (the screen's snapshots show event times)."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Node:
    """One simulated node's agent-side pieces, producing the frames a link would deliver."""

    def __init__(self, name: str, gpus: int = 2) -> None:
        self.backend = SimBackend(gpus, seed=1, node=name)
        self.clock = AgentClock()
        self.sampler = Sampler(self.backend, QuietHost(), history_len=10, clock=self.clock)
        self.name = name

    def inventory(self, state: NodeState | None = None, units: Sequence[str] = ()) -> Inventory:
        """As an agent with the default restart allowlist (plus ``units``) would send it."""
        host = HostInfo(hostname=self.name, kernel="k", cpu_count=1, memory_total=1, boot_id="b")
        gpus = self.backend.inventory()
        frame = inventory_frame(self.name, gpus, host, state or NodeState())
        targets = allowed_targets(
            agent=True, node=True, gpu_reset=True, units=units, gpus=[g.index for g in gpus.gpus]
        )
        return msgspec.structs.replace(frame, scheduler="none", restart_targets=targets)

    def tick(self) -> tuple[Sample, list[Event]]:
        return self.sampler.tick()


def feed(fleet: FleetState, node: Node, now: float) -> list[Event]:
    sample, events = node.tick()
    for e in events:
        fleet.apply(node.name, e, now)
    fleet.apply(node.name, sample, now)
    return events
