"""Simulated NVIDIA H100 80GB HBM3 GPUs that read like the card captured in tests/fixtures/h100.

The demo fleet, the console's screens and the sampler's event logic all run against this backend
when no driver is present, so it models what a toy simulator gets wrong (design.md §2): an idle
SXM card still draws about 75 W in P0 with only the ``gpu_idle`` clocks-event reason set; a busy
one sits at its 700 W cap with the SM clock pulled down to 1275-1440 MHz and ``sw_power_cap``
set as its normal state; most workloads run in containers, so an empty process list at 100 % is
ordinary.

What ``read`` returns is a pure function of the constructor's arguments and of the injections
made between reads: simulated time moves by ``interval`` per call, never with the wall clock, and
each GPU draws from its own generator, so a fault injected on one GPU leaves the others' futures
alone. A demo runs hundreds of these in one process, so all state lives on the instance and a
tick costs a few arithmetic operations per GPU.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Final, Literal, get_args, get_type_hints

from agents.gpu.base import SLOW_FIELDS, GpuInventory, XidEvent
from agents.gpu.clocks import decode_clock_reasons, encode_clock_reasons
from agents.protocol import GpuInfo, GpuProcess, GpuReading, SimInjectArgs

# Static facts, as the captured card reported them.
GPU_NAME: Final = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION: Final = "580.159.04"
CUDA_VERSION: Final = "13.0"
NVML_VERSION: Final = "13.580.159.04"
MEMORY_TOTAL: Final = 85_520_809_984  # bytes
MEMORY_RESERVED: Final = 503_316_480  # bytes the driver holds back, shown by MemoryInfo_v2
POWER_LIMIT_MW: Final = 700_000
TEMP_MAX_OPERATING_C: Final = 87  # GPU_MAX / T.Limit: software thermal slowdown above it
TEMP_SLOWDOWN_C: Final = 89  # hardware slowdown from here on
TEMP_SHUTDOWN_C: Final = 95
TEMP_MEM_MAX_C: Final = 95
SM_CLOCK_IDLE: Final = 345
SM_CLOCK_MAX: Final = 1980
SM_CLOCK_CAPPED_MIN: Final = 1275
SM_CLOCK_CAPPED_MAX: Final = 1440
SM_CLOCK_STEP: Final = 15  # every clock the card reported is 345 + 15 * k
MEM_CLOCK: Final = 2619
PCIE_WIDTH: Final = 16
PCIE_GEN: Final = 5
ENERGY_AT_START_MJ: Final = 8_845_614

#: The faults ``inject`` accepts: exactly the wire protocol's, so the two cannot drift apart.
FAULTS: Final[tuple[str, ...]] = get_args(get_type_hints(SimInjectArgs)["fault"])

#: Bus numbers of an HGX H100 8-GPU baseboard. Identical servers enumerate identically, so every
#: simulated node shows the same layout, as a real fleet does.
_HGX_BUSES: Final = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)

_USERS: Final = ("alice", "bob", "carol", "dmitri", "erin", "farah")
_COMMANDS: Final = (
    "python train.py --model llama-70b",
    "torchrun --nproc-per-node 8 pretrain.py --config gpt-13b.yaml",
    "python -m vllm.entrypoints.openai.api_server --model mistral-7b",
    "python finetune.py --lora --model llama-8b",
    "python bench_matmul.py --dtype bf16",
)
#: Synthetic pids start here so they never collide with a real host pid (pid_max <= 4194304).
_PID_BASE: Final = 4_000_000

# Dynamics, in simulated seconds unless said otherwise.
_IDLE_SPELL_S: Final = (20.0, 240.0)
_BUSY_SPELL_S: Final = (30.0, 600.0)
#: The demo fleet's (``SimBackend(spells=...)``): jobs short enough that a drained node, which
#: takes no new work (``hold_work``), is DRAINED within two minutes, as an operator trying the
#: demo can wait for; the fleet stays about two-thirds busy.
DEMO_SPELLS: Final = ((10.0, 50.0), (20.0, 120.0))
_P_START_BUSY: Final = 0.4
_P_CAPPED: Final = 0.65  # share of workloads whose demand exceeds the cap (bf16 matmul does)
_P_CONTAINER: Final = 0.7  # share of workloads in another PID namespace
_TEMP_TAU_S: Final = 40.0
#: An injected overheat must show within a few ticks whatever the interval, so its lag is per
#: tick rather than per second.
_OVERHEAT_ALPHA_PER_TICK: Final = 0.6
_OVERHEAT_TEMP_C: Final = 92.0
_IDLE_POWER_SPAN_MW: Final = (73_000, 78_000)


def _identity(seed: int, node: str, index: int) -> tuple[str, str]:
    """UUID and serial from a hash, so hundreds of simulated nodes never share one."""
    digest = hashlib.blake2b(f"{seed}\0{node}\0{index}".encode(), digest_size=24).digest()
    h = digest[:16].hex()
    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
    serial = str(1_650_000_000_000 + int.from_bytes(digest[16:], "big") % 200_000_000_000)
    return uuid, serial


def _pci_bus_id(index: int) -> str:
    if index < len(_HGX_BUSES):
        return f"00000000:{_HGX_BUSES[index]:02X}:00.0"
    spare = [bus for bus in range(1, 256) if bus not in _HGX_BUSES]
    domain, slot = divmod(index - len(_HGX_BUSES), len(spare))
    return f"{domain:08X}:{spare[slot]:02X}:00.0"


def _clip(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


class _Gpu:
    """One simulated card's mutable state; touched only under the backend's lock."""

    __slots__ = (
        "ambient",
        "busy",
        "busy_temp",
        "demand",
        "ecc_volatile",
        "energy",
        "heat_offset",
        "idle_power",
        "index",
        "lost",
        "mem_used",
        "overheat",
        "processes",
        "remaining",
        "remap_pending",
        "remapped_uncorrectable",
        "rng",
        "spells",
        "temp",
        "util",
        "util_mem_target",
        "util_target",
        "wander",
    )

    def __init__(
        self, index: int, rng: random.Random, spells: tuple[tuple[float, float], ...]
    ) -> None:
        self.index = index
        self.spells = spells  # (idle, busy) spell lengths, (shortest, longest)
        self.rng = rng
        r = rng.random
        self.lost = False
        self.overheat = False
        self.ecc_volatile = 0
        self.remapped_uncorrectable = 0
        self.remap_pending = False
        # Card-to-card spread: cooling position and silicon leakage differ across a baseboard.
        self.ambient = 32.0 + 3.5 * r()
        self.wander = 1.5 * r()
        self.heat_offset = 2.0 * r()
        self.idle_power = 74_500 + int(2_000 * r())
        self.energy = float(ENERGY_AT_START_MJ + int(400_000 * r()))
        self.busy = False
        self.remaining = 0.0
        self.util = 0
        self.util_target = 0
        self.util_mem_target = 0
        self.demand = 0.0
        self.mem_used = 0
        self.busy_temp = self.ambient
        self.processes: tuple[GpuProcess, ...] = ()
        self.start_spell(busy=r() < _P_START_BUSY)
        # Join the schedule part-way through a spell, as an agent that starts on a live node does.
        self.remaining *= r()
        self.temp = self.busy_temp if self.busy else self.ambient + self.wander

    def start_spell(self, *, busy: bool) -> None:
        """Draw the next workload (or pause): its length and everything that stays fixed in it."""
        rng = self.rng
        r = rng.random
        self.busy = busy
        if not busy:
            self.remaining = rng.uniform(*self.spells[0])
            self.util = 0
            self.mem_used = 0
            self.processes = ()
            return
        self.remaining = rng.uniform(*self.spells[1])
        self.util_target = 92 + int(9 * r())
        self.util = self.util_target
        self.util_mem_target = 35 + int(50 * r())
        if r() < _P_CAPPED:
            self.demand = 730_000.0 + 220_000.0 * r()
        else:
            self.demand = 380_000.0 + 280_000.0 * r()
        self.mem_used = (16 * 1024 + int(62 * 1024 * r())) << 20
        if r() < _P_CONTAINER:
            self.processes = ()
        else:
            self.processes = (
                GpuProcess(
                    pid=_PID_BASE + int(190_000 * r()),
                    used_memory=self.mem_used,
                    user=rng.choice(_USERS),
                    command=rng.choice(_COMMANDS),
                ),
            )
        drawn = min(self.demand, POWER_LIMIT_MW)
        load = min(1.0, max(0.0, (drawn - 300_000.0) / 400_000.0))
        self.busy_temp = 60.0 + 13.0 * load + self.heat_offset


class SimBackend:
    """Simulated H100s for demos, tests and development hosts without a driver.

    Readings evolve with simulated time only, so a test can replay a fleet exactly and a demo
    of hundreds of nodes costs no more than its arithmetic.
    """

    # Typed as wide as the protocol's mutable attribute, which mypy matches invariantly.
    name: Literal["nvml", "sim", "none"] = "sim"

    def __init__(
        self,
        gpus: int = 8,
        *,
        seed: int = 0,
        node: str = "sim",
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        spells: tuple[tuple[float, float], tuple[float, float]] = (_IDLE_SPELL_S, _BUSY_SPELL_S),
    ) -> None:
        """``spells``: how long idle spells and jobs last, each (shortest, longest) in
        simulated seconds (``DEMO_SPELLS`` for the demo fleet)."""
        if gpus < 0:
            raise ValueError(f"gpus must be 0 or more, not {gpus}")
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval}")
        self._interval = float(interval)
        self._clock = clock
        self._alpha = 1.0 - math.exp(-self._interval / _TEMP_TAU_S)
        self._alpha_overheat = max(self._alpha, _OVERHEAT_ALPHA_PER_TICK)
        self._lock = threading.Lock()
        self._events: list[XidEvent] = []
        self._held = False  # the node takes no new work (draining, drained)
        # String seeds hash through SHA-512, so they are stable across runs and PYTHONHASHSEED.
        self._gpus = [
            _Gpu(i, random.Random(f"gpufleet-sim/{seed}/{node}/{i}"), spells)  # noqa: S311  simulation, not security
            for i in range(gpus)
        ]
        # The slow thread has its own generator: whenever it runs, read()'s draws stay the same.
        self._slow_rng = random.Random(f"gpufleet-sim/{seed}/{node}/slow")  # noqa: S311  simulation, not security
        infos = []
        for i in range(gpus):
            uuid, serial = _identity(seed, node, i)
            infos.append(
                GpuInfo(
                    index=i,
                    uuid=uuid,
                    name=GPU_NAME,
                    serial=serial,
                    pci_bus_id=_pci_bus_id(i),
                    memory_total=MEMORY_TOTAL,
                    power_limit_mw=POWER_LIMIT_MW,
                    temp_slowdown_c=TEMP_SLOWDOWN_C,
                    temp_shutdown_c=TEMP_SHUTDOWN_C,
                    temp_mem_max_c=TEMP_MEM_MAX_C,
                    mig_enabled=False,
                    persistence_mode=True,
                    ecc_enabled=True,
                    pcie_max_width=PCIE_WIDTH,
                    pcie_max_gen=PCIE_GEN,
                    sm_clock_max_mhz=SM_CLOCK_MAX,
                )
            )
        self._infos = tuple(infos)

    def inventory(self) -> GpuInventory:
        return GpuInventory(
            backend="sim",
            gpus=list(self._infos),
            driver_version=DRIVER_VERSION,
            cuda_version=CUDA_VERSION,
            nvml_version=NVML_VERSION,
        )

    def read(self) -> list[GpuReading]:
        with self._lock:
            return [self._tick(g) for g in self._gpus]

    def read_slow(self) -> dict[int, dict[str, int | None]]:
        out: dict[int, dict[str, int | None]] = {}
        with self._lock:
            r = self._slow_rng.random
            for g in self._gpus:
                if g.lost:
                    out[g.index] = dict.fromkeys(SLOW_FIELDS, None)
                    continue
                if g.busy:
                    tx = 30_000 + int(370_000 * r())
                    rx = 150_000 + int(1_350_000 * r())
                else:
                    tx = 1_100 + int(500 * r())
                    rx = 350 + int(200 * r())
                out[g.index] = {
                    "energy_mj": int(g.energy),
                    "pcie_tx_kbs": tx,
                    "pcie_rx_kbs": rx,
                    # HBM runs a little warmer than the die, more so the harder it is worked.
                    "temp_mem_c": round(g.temp + 1.0 + 4.0 * g.util / 100.0),
                }
        return out

    def start_events(self) -> None:
        """Simulated XIDs are queued by ``inject``; there is no driver to watch."""
        return None

    def drain_events(self) -> list[XidEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def close(self) -> None:
        return None

    def hold_work(self, held: bool) -> None:
        """The node's scheduler stops (or starts again) giving it work: the agent calls this
        when the node is drained or resumed. Work running now ends in its own time; no new
        work starts while held (an injected ``busy`` still does: that is a test's own)."""
        with self._lock:
            self._held = held

    def inject(self, fault: str, gpu: int) -> str:
        """Apply a fault now; the readings show it from the next ``read`` on.

        Returns one line for the operator's log. Only XIDs become events here: lost, back, ECC
        and thermal events are the sampler's to derive from the readings, as with NVML.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: expected one of {', '.join(FAULTS)}")
        if not 0 <= gpu < len(self._gpus):
            if not self._gpus:
                raise ValueError(f"no GPU {gpu}: this simulated node has no GPUs")
            raise ValueError(f"no GPU {gpu}: this simulated node has GPUs 0-{len(self._gpus) - 1}")
        with self._lock:
            g = self._gpus[gpu]
            if fault == "overheat":
                g.overheat = True
                return (
                    f"gpu {gpu}: cooling failure, temperature climbing to about "
                    f"{_OVERHEAT_TEMP_C:.0f} C (slowdown at {TEMP_SLOWDOWN_C} C)"
                )
            if fault == "xid79":
                self._events.append(XidEvent(gpu=gpu, xid=79, ts=self._clock()))
                g.lost = True
                return f"gpu {gpu}: XID 79, fell off the bus; reads lost until cleared"
            if fault == "ecc":
                g.ecc_volatile += 1
                g.remapped_uncorrectable += 1
                g.remap_pending = True
                return (
                    f"gpu {gpu}: uncorrectable ECC error (volatile {g.ecc_volatile}, "
                    f"remapped rows {g.remapped_uncorrectable}); row remap pending until reset"
                )
            if fault == "lost":
                g.lost = True
                return f"gpu {gpu}: lost until cleared"
            if fault == "clear":
                g.lost = False
                g.overheat = False
                g.ecc_volatile = 0
                g.remap_pending = False
                # A reset tears down every context on the card, so it comes back idle and cool.
                g.start_spell(busy=False)
                g.temp = g.ambient + g.wander
                return f"gpu {gpu}: reset; idle, temperature normal, volatile ECC 0, remap done"
            busy = fault == "busy"
            g.start_spell(busy=busy)
            what = "workload started" if busy else "workload stopped"
            return f"gpu {gpu}: {what} for {g.remaining:.0f} s of simulated time"

    def _tick(self, g: _Gpu) -> GpuReading:
        if g.lost:
            # A card off the bus answers nothing, and nothing on it moves until it is reset.
            return GpuReading(index=g.index, lost=True)
        dt = self._interval
        g.remaining -= dt
        while g.remaining <= 0.0:
            carry = g.remaining
            g.start_spell(busy=not g.busy and not self._held)
            g.remaining += carry
        r = g.rng.random
        capped = False
        if g.busy:
            util = _clip(g.util_target + int(5 * r()) - 2, 90, 100)
            util_mem = _clip(g.util_mem_target + int(7 * r()) - 3, 0, 100)
            demand = g.demand * (0.97 + 0.06 * r())
            if demand > POWER_LIMIT_MW:
                capped = True
                power = POWER_LIMIT_MW - int(2_500 * r())
                excess = min(1.0, (demand - POWER_LIMIT_MW) / 250_000.0)
                steps = round(11 * excess) + int(3 * r()) - 1
                sm = _clip(
                    SM_CLOCK_CAPPED_MAX - SM_CLOCK_STEP * steps,
                    SM_CLOCK_CAPPED_MIN,
                    SM_CLOCK_CAPPED_MAX,
                )
            else:
                power = int(demand)
                sm = SM_CLOCK_MAX
            target = g.busy_temp
        else:
            util = util_mem = 0
            power = _clip(g.idle_power + int(3_000 * r()) - 1_500, *_IDLE_POWER_SPAN_MW)
            sm = SM_CLOCK_IDLE
            # The room and the neighbours warm and cool slowly; keep the idle card within 32-39.
            g.wander = min(3.0, max(0.0, g.wander + (r() - 0.5) * 0.2 * min(dt, 5.0)))
            target = g.ambient + g.wander
        if g.overheat:
            target = _OVERHEAT_TEMP_C + 2.0 * r() - 1.0
            g.temp += self._alpha_overheat * (target - g.temp)
        else:
            g.temp += self._alpha * (target - g.temp)
        temp_c = round(g.temp)
        reasons: list[str] = []
        if temp_c > TEMP_MAX_OPERATING_C:
            thermal_sm = max(SM_CLOCK_IDLE, 1410 - 4 * SM_CLOCK_STEP * (temp_c - TEMP_SLOWDOWN_C))
            if sm > thermal_sm:
                # Slower clocks draw less: the card falls below its power cap once heat binds.
                power = g.idle_power + (power - g.idle_power) * thermal_sm // sm
                sm = thermal_sm
                capped = False
        # As the card reports them (nvidia-smi -q in the capture): "Idle" when nothing runs;
        # software thermal slowdown past T.Limit (87 C); hardware slowdown, thermal, from the
        # slowdown threshold (89 C) on.
        if not util and not g.overheat:
            reasons.append("gpu_idle")
        if capped:
            reasons.append("sw_power_cap")
        if temp_c > TEMP_MAX_OPERATING_C:
            reasons.append("sw_thermal_slowdown")
        if temp_c >= TEMP_SLOWDOWN_C:
            reasons += ["hw_slowdown", "hw_thermal_slowdown"]
        reasons = decode_clock_reasons(encode_clock_reasons(reasons))  # in NVML's bit order
        g.util = util
        g.energy += power * dt  # mW x s = mJ
        return GpuReading(
            index=g.index,
            util_gpu=util,
            util_mem=util_mem,
            mem_used=g.mem_used,
            mem_total=MEMORY_TOTAL,
            mem_reserved=MEMORY_RESERVED,
            temp_c=temp_c,
            power_mw=power,
            sm_clock_mhz=sm,
            mem_clock_mhz=MEM_CLOCK,
            clock_reasons=reasons,
            pstate=0,
            ecc_uncorrected_volatile=g.ecc_volatile,
            remapped_correctable=0,
            remapped_uncorrectable=g.remapped_uncorrectable,
            remap_pending=g.remap_pending,
            remap_failure=False,
            pcie_width=PCIE_WIDTH,
            processes=list(g.processes),
        )
