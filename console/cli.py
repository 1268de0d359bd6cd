"""``gpufleet``: the operator's console, for people and for scripts.

Scripts get ``--json`` on stdout, messages on stderr, and exit codes that mean something:
0 every selected node answered, 1 some did not, 2 a usage error (bad selector, bad inventory),
3 none did. Our own errors are one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from agents.protocol import PROTOCOL_VERSION, GpufleetError
from console import __version__
from console.fleet import FleetState, NodeView
from console.fleetlinks import FleetLinks
from console.inventory import Inventory, find_inventory, load_inventory
from console.link import LinkOptions
from console.selector import parse_selector, select
from console.status import EXIT_USAGE, check_result, exit_code, snapshot, status_doc, table


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"gpufleet: error: {message}", err=True)
    sys.exit(code)


class _Commands(click.Group):
    """Our own errors (inventory, selector, connection setup) as one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpufleetError as exc:
            _fail(str(exc), EXIT_USAGE)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, prog_name="gpufleet", message=f"%(prog)s %(version)s (protocol {PROTOCOL_VERSION})"
)
def main() -> None:
    """Watch a GPU fleet live and act on it. (The TUI and the actions are being built; today:
    `gpufleet status`, and `gpufleet-agent demo` for what one node streams.)"""


def _link_options(
    known_hosts: Path | None, accept_new: bool, identity: Path | None, ssh_config: Path | None
) -> LinkOptions:
    kw: dict[str, Any] = {"host_keys": "accept-new" if accept_new else "strict"}
    if known_hosts is not None:
        kw["known_hosts"] = known_hosts
    if identity is not None:
        kw["client_keys"] = [str(identity)]
    if ssh_config is not None:
        kw["ssh_config"] = [str(ssh_config)]
    return LinkOptions(**kw)


def _fleet_options(fn: Any) -> Any:
    """The options every command that reaches nodes shares."""
    for option in reversed(
        [
            click.argument("selector", nargs=-1),
            click.option(
                "--inventory",
                type=click.Path(path_type=Path),
                default=None,
                help="Fleet inventory [default: $GPUFLEET_INVENTORY, "
                "~/.config/gpufleet/fleet.toml, /etc/gpufleet/fleet.toml].",
            ),
            click.option("--json", "as_json", is_flag=True, help="JSON on stdout."),
            click.option(
                "--wait",
                type=float,
                default=15.0,
                show_default=True,
                help="Seconds to wait for every node to answer.",
            ),
            click.option(
                "--known-hosts",
                type=click.Path(path_type=Path),
                default=None,
                help="known_hosts file [default: ~/.ssh/known_hosts].",
            ),
            click.option(
                "--accept-new",
                is_flag=True,
                help="Learn host keys never seen before (refuse changed ones), as OpenSSH's "
                "StrictHostKeyChecking=accept-new.",
            ),
            click.option(
                "--identity",
                type=click.Path(path_type=Path),
                default=None,
                help="SSH private key [default: ssh-agent and ~/.ssh keys].",
            ),
            click.option(
                "--ssh-config",
                type=click.Path(path_type=Path),
                default=None,
                help="SSH client config [default: ~/.ssh/config].",
            ),
        ]
    ):
        fn = option(fn)
    return fn  # fmt: skip


@dataclass(frozen=True)
class Reach:
    """What the options of a command that reaches nodes add up to."""

    selector: tuple[str, ...]
    inventory: Path | None
    as_json: bool
    wait: float
    options: LinkOptions

    def views(self) -> list[NodeView]:
        """Select nodes from the inventory and take one snapshot of them over SSH."""
        inv = load_inventory(find_inventory(self.inventory))
        selector = parse_selector(self.selector)
        chosen = select(FleetState(inv.nodes).nodes.values(), selector.before_contact())
        if not self.as_json:
            click.echo(f"{len(chosen)} node(s) from {inv.source}", err=True)
        fleet = asyncio.run(snapshot([v.entry for v in chosen], self.options, wait=self.wait))
        return select(fleet.nodes.values(), selector)  # state=, link=, alert: now known


def _reaching(fn: Callable[[Reach], None]) -> Callable[..., None]:
    """Give a command the shared options, handed to it as one ``Reach``."""

    @functools.wraps(fn)
    def command(
        selector: tuple[str, ...],
        inventory: Path | None,
        as_json: bool,
        wait: float,
        known_hosts: Path | None,
        accept_new: bool,
        identity: Path | None,
        ssh_config: Path | None,
    ) -> None:
        options = _link_options(known_hosts, accept_new, identity, ssh_config)
        fn(Reach(selector, inventory, as_json, wait, options))

    return cast(Callable[..., None], _fleet_options(command))


@main.command()
@_reaching
def status(reach: Reach) -> None:
    """One snapshot of the fleet (or the nodes SELECTOR names), as a table or JSON."""
    views = reach.views()
    now = time.monotonic()
    if reach.as_json:
        click.echo(json.dumps(status_doc(views, now)))
    else:
        click.echo(table(views, now))
    sys.exit(exit_code(views))


@main.group()
def inventory() -> None:
    """The fleet inventory."""


@inventory.command("check")
@_reaching
def inventory_check(reach: Reach) -> None:
    """Reach every node and say, per node, whether host key, login, agent and protocol are
    in order, with what to do about each one that is not."""
    views = reach.views()
    results = [check_result(v) for v in views]
    if reach.as_json:
        click.echo(json.dumps(results))
    else:
        for r in results:
            click.echo(f"{r['name']:<24} {'ok' if r['ok'] else r['problem']:<18} {r['detail']}")
    sys.exit(exit_code(views))


@main.command()
@click.option("--nodes", type=click.IntRange(1, 500), default=16, show_default=True)
@click.option("--gpus-per-node", "gpus", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option(
    "--faults",
    is_flag=True,
    help="Script a few incidents: overheat, XID 79, ECC, a node whose agent dies and comes back.",
)
@click.option(
    "--headless",
    is_flag=True,
    help="Serve the fleet without a screen, for other commands to use (with --inventory-out).",
)
@click.option(
    "--inventory-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the demo fleet's inventory here.",
)
@click.option("--seconds", type=float, default=None, help="Stop after this long.")
def demo(
    nodes: int,
    gpus: int,
    faults: bool,
    headless: bool,
    inventory_out: Path | None,
    seconds: float | None,
) -> None:
    """A fleet of simulated nodes on this machine, reached over real SSH (no root, no GPU,
    no configuration). Until the TUI lands, it shows a live status table."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(nodes, gpus, faults, headless, inventory_out, seconds))


async def _demo(
    nodes: int,
    gpus: int,
    faults: bool,
    headless: bool,
    inventory_out: Path | None,
    seconds: float | None,
) -> None:
    from console.demo import demo_fleet, run_incidents

    # The nodes' own logs would interleave with the table; the demo announces its incidents.
    logging.getLogger("gpufleet.agent").setLevel(logging.ERROR)
    async with demo_fleet(nodes, gpus) as fleet:
        if inventory_out is not None:
            try:
                await asyncio.to_thread(shutil.copyfile, fleet.inventory, inventory_out)
            except OSError as exc:
                raise GpufleetError(f"cannot write {inventory_out}: {exc.strerror}") from None
        where = inventory_out or fleet.inventory
        click.echo(
            f"demo fleet: {nodes} nodes x {gpus} simulated H100s behind SSH on 127.0.0.1; "
            f"try: gpufleet status --inventory {where}",
            err=True,
        )
        background = []
        if faults:
            rng = random.Random(0)  # noqa: S311  (a scripted demo, not security)
            background.append(
                asyncio.create_task(run_incidents(fleet, lambda m: click.echo(m, err=True), rng))
            )
        if not headless:
            background.append(asyncio.create_task(_watch(load_inventory(fleet.inventory))))
        try:
            if seconds is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(seconds)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)


async def _watch(inv: Inventory) -> None:
    """The live table, redrawn every 2 s from one FleetState fed by one link per node."""
    async with FleetLinks(inv.nodes, LinkOptions()) as links:
        while True:
            await asyncio.sleep(2.0)
            now = time.monotonic()
            links.fleet.tick(now)
            click.echo(table(links.fleet.nodes.values(), now) + "\n")
