"""What a real agent said on a real NVIDIA H100, read back by today's code.

The files in tests/fixtures/h100 named ``agent_*`` and ``metrics_*`` were captured by
bench/gpu_check.sh on a lent H100 (driver 580.159.04, 2026-11-27): one ``serve --backend nvml``
agent streamed 62 samples to one client while, from about 17 s in, a bf16 matrix-product loop
kept the GPU busy for 30 s; its ``/metrics`` was scraped once idle and once busy, and
``once --json`` read the GPU idle and busy. Nothing here is made up: these tests hold our
decoder, the console's model and the exporter to what the hardware really produced (its
``null``s, its units, throttling under load, a process in the same PID namespace).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

import pytest

from agents.export.metrics import MetricsCollector, render
from agents.gpu.base import GpuInventory
from agents.protocol import Hello, Inventory, NodeState, Sample, decode
from console.model.fleet import FleetState
from console.model.inventory import parse_inventory
from console.present.rows import summarize
from tests.conftest import FIXTURES
from tests.support.exposition import Series, parse

H100 = FIXTURES / "h100"
_TS = re.compile(r"^gpufleet_sample_timestamp_seconds\{.*\} (\S+)$", re.MULTILINE)


def stream() -> tuple[Hello, Inventory, list[Sample]]:
    frames = [decode(line) for line in (H100 / "agent_stream.jsonl").read_bytes().splitlines()]
    hello, inventory, *samples = frames
    assert isinstance(hello, Hello) and isinstance(inventory, Inventory)
    assert all(isinstance(s, Sample) for s in samples)
    return hello, inventory, [s for s in samples if isinstance(s, Sample)]


def test_every_captured_frame_decodes_and_the_samples_are_consecutive() -> None:
    hello, inventory, samples = stream()
    assert hello.proto.startswith("1.")
    assert inventory.backend == "nvml" and inventory.driver_version == "580.159.04"
    assert [g.name for g in inventory.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert [s.seq for s in samples] == list(range(1, 63))
    assert all(s.ts > samples[i].ts for i, s in enumerate(samples[1:]))


def test_the_busy_spell_as_the_hardware_reported_it() -> None:
    """Idle: 0 %, ~74 W, 345 MHz, gpu_idle. Busy: 99-100 %, capped at ~700 W, the SM clock
    pulled down to ~1,400 MHz with the SW power cap as the reason, and the process seen."""
    _, inventory, samples = stream()
    limit = inventory.gpus[0].power_limit_mw
    assert limit == 700_000
    idle = [s.gpus[0] for s in samples if s.gpus[0].util_gpu == 0]
    busy = [s.gpus[0] for s in samples if (s.gpus[0].util_gpu or 0) >= 99]
    assert len(busy) >= 25 and len(idle) >= 20
    assert all(g.clock_reasons == ["sw_power_cap"] for g in busy)
    assert all(g.power_mw is not None and g.power_mw > 0.9 * limit for g in busy[1:])
    assert all(g.sm_clock_mhz is not None and g.sm_clock_mhz < 1980 for g in busy)
    assert all(len(g.processes or []) == 1 for g in busy)
    assert any(g.clock_reasons == ["gpu_idle"] and g.sm_clock_mhz == 345 for g in idle)
    # The slow readings (HBM temperature, PCIe) are absent only before the first slow tick.
    assert samples[0].gpus[0].temp_mem_c is None
    assert all(s.gpus[0].temp_mem_c is not None for s in samples[1:])


def test_the_console_shows_the_busy_card_without_alarming_on_its_power_cap() -> None:
    """Throttling at the power cap is a busy GPU's normal state (design.md §2): the row
    shows the load, the power and the temperature, and no alert is raised."""
    _, inventory, samples = stream()
    fleet = FleetState(parse_inventory('[[group]]\nname = "h100"\nnodes = "vm"\n', "f").nodes)
    fleet.apply("vm", inventory, 0.0)
    for s in samples:
        fleet.apply("vm", s, s.ts - samples[0].ts + 0.1)
        fleet.tick(s.ts - samples[0].ts + 0.2)
        view = fleet.nodes["vm"]
        assert view.alerts == [], (s.seq, [a.kind for a in view.alerts])
    busiest = max(samples, key=lambda s: s.gpus[0].power_mw or 0)
    fleet.apply("vm", busiest, 100.0)
    row = summarize(fleet.nodes["vm"], 100.1)
    assert (row.gpus, row.util_max, row.gpus_busy) == (1, busiest.gpus[0].util_gpu, 1)
    assert row.power_w is not None and 690 < row.power_w < 710
    assert len(fleet.nodes["vm"].history) == len(samples) + 1  # the sparklines hold them all


@pytest.mark.parametrize("name", ["metrics_idle.txt", "metrics_busy.txt"])
def test_the_exporter_renders_the_captured_sample_as_the_agent_served_it(name: str) -> None:
    """The scrape names the sample it came from (gpufleet_sample_timestamp_seconds); today's
    collector, given that very sample from the stream, must say the same thing, series for
    series (the agent info's version aside: it changes with every release)."""
    text = (H100 / name).read_text()
    _, inventory, samples = stream()
    match = _TS.search(text)
    assert match is not None
    sample = next(s for s in samples if s.ts == float(match[1]))
    inv = GpuInventory(
        backend=inventory.backend,
        gpus=list(inventory.gpus),
        driver_version=inventory.driver_version,
        cuda_version=inventory.cuda_version,
        nvml_version=inventory.nvml_version,
    )
    collector = MetricsCollector(
        node="vm", latest=lambda: sample, gpus=lambda: inv, state=lambda: NodeState(),
        interval=1.0, scheduler="none", clock=lambda: sample.ts + 0.5,
    )  # fmt: skip
    served, served_types, _ = parse(text)
    ours, our_types, _ = parse(render(collector.collect()).decode())
    assert set(our_types) - set(served_types) == ADDED_METRICS, "only the listed additions"
    assert our_types == served_types | {m: our_types[m] for m in ADDED_METRICS}
    assert _without_version(_as_captured(ours)) == _without_version(served)


#: What the exposition gained after the capture (metrics, and labels on a metric): left out
#: of the comparison by name, so that everything the capture holds is still compared exactly.
ADDED_METRICS: Final = {"gpufleet_inventory_timestamp_seconds"}
ADDED_LABELS: Final = {("gpufleet_agent_info", "restart_targets")}


def _as_captured(series: Series) -> Series:
    """Our series less what was added since the capture. An added label is dropped only
    where it is empty (this collector is given no restart targets): a value there would be
    something the captured agent did not say."""
    out: Series = {}
    for (name, labels), value in series.items():
        if name in ADDED_METRICS:
            continue
        for kv in labels:
            if (name, kv[0]) in ADDED_LABELS:
                assert kv[1] == "", (name, kv)
        kept = frozenset(kv for kv in labels if (name, kv[0]) not in ADDED_LABELS)
        out[(name, kept)] = value
    return out


def _without_version(series: Series) -> Series:
    return {
        (n, frozenset(kv for kv in labels if kv[0] not in ("version", "protocol"))): v
        for (n, labels), v in series.items()
    }


def test_once_json_idle_and_busy() -> None:
    """The one-shot path read the same card: idle with nothing on it, busy with our load."""
    idle = json.loads(Path(H100 / "agent_once.json").read_text())
    busy = json.loads(Path(H100 / "agent_once_busy.json").read_text())
    (gi,) = idle["sample"]["gpus"]
    (gb,) = busy["sample"]["gpus"]
    assert gi["util_gpu"] == 0 and gi["clock_reasons"] == ["gpu_idle"] and gi["processes"] == []
    assert gb["util_gpu"] >= 99 and gb["clock_reasons"] == ["sw_power_cap"]
    (proc,) = gb["processes"]
    assert proc["user"] == "root" and proc["used_memory"] > 0
    assert "python" in (proc["command"] or "")
