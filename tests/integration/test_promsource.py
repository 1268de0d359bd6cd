"""The console's Prometheus source against real components: agents (simulated GPUs) serving
``/metrics``, scraped every second by a real Prometheus (Debian's), and reached over a real
sshd for the SSH source and for actions. The Prometheus view must show the same fleet as the
SSH view of the same agents; an action taken over SSH must show in it once scraped; and a
Prometheus that is down must be said, not hidden."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from console.model.inventory import load_inventory
from console.ops.actions import restart_targets
from console.sources.prometheus.source import PromSource
from console.sources.ssh.actionlinks import ActionLinks
from console.sources.ssh.link import LinkOptions
from console.tui.action_dialog import ActionDialog, ActionResults
from console.tui.app import make_app
from console.tui.fleet_view import FleetScreen
from console.tui.text_line import TextLine
from tests.conftest import AgentProc, until, wait_for
from tests.integration.prometheus import PrometheusServer, prometheus_factory
from tests.integration.sshd import Sshd, free_port

__all__ = ["prometheus_factory"]  # the fixture, used by name below
pytestmark = pytest.mark.integration

FAST = ("--backend", "sim", "--gpus", "2", "--interval", "0.5")
#: The inventory: two pools, and gpu04 with no agent at all (down over SSH, no data in
#: Prometheus). "stranger" runs an agent Prometheus scrapes but the inventory does not name.
POOLS = {"gpu01": "train", "gpu02": "train", "gpu03": "infer", "gpu04": "infer"}


@dataclass
class Site:
    sshd: Sshd
    prom: PrometheusServer
    inventory: Path
    ssh_config: Path
    agents: dict[str, AgentProc]

    def gpufleet(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "console", *args, "--inventory", str(self.inventory),
             "--ssh-config", str(self.ssh_config), "--known-hosts", str(self.sshd.known_hosts),
             "--identity", str(self.sshd.client_key_path)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def status(self, *args: str) -> tuple[int, list[dict[str, Any]], str]:
        out = self.gpufleet("status", "--json", "--connect-wait", "20", *args)
        assert out.stdout, out.stderr
        return out.returncode, json.loads(out.stdout), out.stderr

    @property
    def source(self) -> str:
        return f"prometheus={self.prom.base_url}"


@pytest.fixture
def site(
    sshd: Sshd,
    agent_factory: Callable[..., AgentProc],
    prometheus_factory: Callable[..., PrometheusServer],
    short_tmp: Path,
) -> Site:
    agents, targets = {}, []
    for name in ("gpu01", "gpu02", "gpu03", "stranger"):
        port = free_port()
        config = f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        agents[name] = agent_factory(*FAST, "--node", name, config=config, name=name).start()
        targets.append(f"127.0.0.1:{port}")
    sockets = {n: agents[n].socket if n in agents else str(short_tmp / "no.sock") for n in POOLS}
    ssh_config = short_tmp / "ssh_config"
    ssh_config.write_text(
        "".join(f"Host {n}\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n" for n in POOLS)
    )
    inventory = short_tmp / "fleet.toml"
    inventory.write_text(
        "".join(
            f'[[group]]\nname = "{n}"\npool = "{pool}"\nnodes = "{n}"\nsocket = "{sockets[n]}"\n'
            for n, pool in POOLS.items()
        )
    )
    prom = prometheus_factory(targets)
    prom.wait_up(len(targets))
    return Site(sshd, prom, inventory, ssh_config, agents)


def stable(node: dict[str, Any]) -> dict[str, Any]:
    """What does not move between two reads of the same agent (the simulated readings do)."""
    return {
        "name": node["name"],
        "pool": node["pool"],
        "state": node["state"],
        "reason": node["reason"],
        "who": node["who"],
        "gpus": [
            (g["index"], g["uuid"], g["name"], g["mem_total"], g["lost"]) for g in node["gpus"]
        ],
        "host_memory": node["host"] and node["host"]["memory"]["total"],
    }


def test_the_prometheus_source_shows_the_same_fleet_as_the_ssh_source(site: Site) -> None:
    drained = site.gpufleet(
        "drain", "gpu03", "--reason", "HBM errors", "--timeout", "0", "--yes", "--force"
    )
    assert drained.returncode == 0, drained.stderr

    def both() -> tuple[tuple[int, list[dict[str, Any]]], ...] | None:
        code_ssh, ssh, _ = site.status()
        code_prom, prom, _ = site.status("--source", site.source)
        states = {n["name"]: n["state"] for n in prom}
        if states.get("gpu03") != "drained" or states.get("gpu01") is None:
            return None  # not scraped since the drain yet
        return (code_ssh, ssh), (code_prom, prom)

    (code_ssh, ssh), (code_prom, prom) = wait_for(both, "the drain in both views", 60)
    assert [n["name"] for n in prom] == [n["name"] for n in ssh] == list(POOLS)
    assert [stable(n) for n in prom[:3]] == [stable(n) for n in ssh[:3]]
    for node in prom[:3]:
        assert node["link"] == "live", node
        assert len(node["gpus"]) == 2
        assert all(g["util"] is not None and g["temp"] is not None for g in node["gpus"])
        assert node["age_s"] is not None and node["age_s"] < 10
    assert prom[2]["reason"] == "HBM errors"
    # gpu04 has no agent: down over SSH, no data in Prometheus; both exit 1 (some missing).
    assert ssh[3]["link"] == "agent_down"
    assert prom[3]["link"] == "no_data"
    assert "not in Prometheus" in prom[3]["link_reason"]
    assert code_ssh == code_prom == 1
    assert "stranger" not in {n["name"] for n in prom}, "the inventory decides the fleet"


def test_a_prometheus_that_is_down_is_said_and_counts_as_no_node_answering(site: Site) -> None:
    code, doc, _ = site.status("--source", site.source, "gpu0[1-3]")
    assert code == 0
    site.prom.stop()
    code, doc, err = site.status("--source", site.source, "gpu0[1-3]")
    assert code == 3, "none answered"
    assert f"gpufleet: prometheus: cannot reach {site.prom.base_url}: connection refused" in err
    assert {n["link"] for n in doc} == {"unreachable"}
    assert all("Prometheus: cannot reach" in n["link_reason"] for n in doc)


def test_bad_sources_are_one_line_usage_errors(site: Site) -> None:
    for bad, why in [
        ("prometheus", "prometheus needs a URL"),
        ("prometheus=ftp://x", "expected ssh or prometheus=http://HOST:PORT"),
        ("grafana=http://x", "expected ssh or prometheus=http://HOST:PORT"),
    ]:
        out = site.gpufleet("status", "--source", bad)
        assert out.returncode == 2
        assert out.stderr.startswith(f"gpufleet: error: --source {bad!r}: ")
        assert why in out.stderr
        assert len(out.stderr.splitlines()) == 1
        assert out.stdout == ""


async def test_the_screen_on_prometheus_acts_over_ssh_on_the_chosen_node_only(site: Site) -> None:
    inv = load_inventory(site.inventory)
    options = LinkOptions(
        known_hosts=site.sshd.known_hosts,
        client_keys=[str(site.sshd.client_key_path)],
        ssh_config=[str(site.ssh_config)],
    )
    feed = PromSource(inv.nodes, site.prom.base_url, poll_s=0.5)
    actions = ActionLinks(inv.nodes, options)
    app = make_app(feed, requester=actions, refresh_s=0.2)
    fleet = feed.fleet
    async with app.run_test(size=(160, 45)) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        line = screen.query_one("#source", TextLine)
        live = ("gpu01", "gpu02", "gpu03")
        await until(lambda: all(fleet.nodes[n].link == "live" for n in live), "three live")
        await until(lambda: "data" in line.text and "s old" in line.text, "the data's age")
        assert line.text.startswith(f"source: prometheus {site.prom.base_url}")
        assert "(1 host not in the inventory, ignored)" in line.text
        assert not line.has_class("fault")
        assert screen.table.cell_text("gpu04", "link").startswith("no_data")

        await pilot.press("down", "d")  # the cursor on gpu02
        dialog = app.screen
        assert isinstance(dialog, ActionDialog)
        assert dialog.nodes == ["gpu02"]
        dialog.query_one("#reason", Input).value = "fan swap"
        await pilot.click("#confirm")
        results = app.screen
        assert isinstance(results, ActionResults)
        await until(lambda: results.results["gpu02"].outcome != "pending", "the answer")
        assert results.results["gpu02"].outcome == "ok", results.results["gpu02"].message
        assert set(actions.links) == {"gpu02"}, "SSH to the chosen node only"
        await until(
            lambda: (s := fleet.nodes["gpu02"].state) is not None and s.reason == "fan swap",
            "the drain, scraped, in the Prometheus view",
        )
        await pilot.press("escape")

        # Restart: the targets each agent allows, as Prometheus carries them (agent info).
        await until(lambda: restart_targets(fleet, ["gpu02"]) != [], "the static set read")
        assert restart_targets(fleet, ["gpu01", "gpu02"]) == ["gpu0", "gpu1"]
        await pilot.press("r")
        dialog = app.screen
        assert isinstance(dialog, ActionDialog) and dialog.nodes == ["gpu02"]
        said = str(dialog.query_one("#affected").render())
        assert "process lists are not in Prometheus" in said
        warned = dialog.query("#warnings")
        assert not warned or "no restart targets" not in str(warned.first().render())
        await pilot.press("escape")
        assert set(actions.links) == {"gpu02"}, "opening the dialog connects nowhere"

        site.prom.stop()
        await until(lambda: line.has_class("fault"), "the source's fault shown")
        assert f"FAULT: cannot reach {site.prom.base_url}: connection refused" in line.text
