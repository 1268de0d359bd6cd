"""What ``status`` prints for a node whose agent stopped: a real sshd, a real agent process,
the console's own link and model; the agent killed while the console watches. Its last
readings (held by the model for the node view's history) must not print as its present."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from console.present.status import node_doc, table
from tests.conftest import AgentProc, until
from tests.integration.sshd import Sshd
from tests.support.links import FAST, Running, entry, options
from tests.support.status_cli import gpufleet, write_fleet

pytestmark = pytest.mark.integration


async def test_a_stopped_agents_last_readings_are_not_printed_as_current(
    sshd: Sshd, agent_factory: Callable[..., AgentProc]
) -> None:
    agent = agent_factory(*FAST).start()
    run = Running(entry(sshd, agent.socket), options(sshd))
    try:
        await until(run.shows("live"), "live")
        live = node_doc(run.view, asyncio.get_running_loop().time())
        assert len(live["gpus"]) == 2 and live["host"] is not None
        agent.stop(signal.SIGKILL)
        await until(run.shows("agent_down"), "the agent's loss seen")
        now = asyncio.get_running_loop().time()
        assert run.view.sample is not None, "the model keeps it (sparklines, node view)"
        doc = node_doc(run.view, now)
        assert doc["gpus"] == [] and doc["host"] is None, "no reading as if current"
        assert (doc["link"], doc["gpus"], doc["host"], doc["last_seen"]) == (
            "agent_down", [], None, None,
        )  # fmt: skip
        _header, row = table([run.view], now).splitlines()
        cells = row.split()
        assert cells[2:8] == ["agent_down", "schedulable", "2", "n/a", "n/a", "n/a"], row
    finally:
        await run.stop()


def test_an_unknown_state_or_pool_is_a_usage_error_and_no_match_is_said(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path
) -> None:
    a = agent_factory(*FAST, name="a").start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": a.socket})
    for term, says in [
        ("state=bogus", "unknown state 'bogus' in 'state=bogus' (known: schedulable, draining, "
                        "drained, unknown)"),
        ("pool=nope", "unknown pool 'nope' (known: train)"),
    ]:  # fmt: skip
        out = gpufleet(sshd, inventory, config, term)
        assert out.returncode == 2, out.stderr
        assert out.stderr.splitlines()[-1] == f"gpufleet: error: {says}"
        assert out.stdout == ""
    none = gpufleet(sshd, inventory, config, "state=draining", "--json")
    assert (none.returncode, json.loads(none.stdout)) == (0, [])
    assert "gpufleet: no node matches 'state=draining'" in none.stderr
