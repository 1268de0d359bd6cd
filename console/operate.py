"""``gpufleet drain | resume | restart | reassign``: the verbs for scripts, on the same path
as the screen's (``console.actions`` over ``FleetLinks``).

In order: select nodes from the inventory (and print them), ask (a terminal) or require
``--yes`` (no terminal), connect to them and to the rest of their pools (the guard needs the
pools' states), apply the selector's state/link/alert terms, refuse past the mass-action
guard without ``--force``, then act (or only say what would be done, ``--dry-run``), a result
per node. Exit 0 all done, 1 some not, 2 usage error or refusal, 3 no node reachable.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hostlist
import msgspec

from agents.protocol import (
    MAX_AUDIT_READ,
    REQUEST_SPECS,
    AuditEntry,
    GpufleetError,
    ProtocolError,
    Request,
    decode_args,
)
from console.actions import NodeResult, Verb, guard_warnings, request_args, run_action
from console.fleet import FleetState
from console.fleetlinks import FleetLinks
from console.inventory import Inventory
from console.link import LinkOptions, one_shot
from console.selector import parse_selector, select
from console.status import EXIT_ALL, EXIT_NONE, EXIT_SOME_MISSING


class Refused(GpufleetError):
    """The command will not act (no confirmation, the guard): exit 2 with this line."""


@dataclass(frozen=True)
class Operation:
    verb: Verb
    args: dict[str, Any]
    selector: tuple[str, ...]
    dry_run: bool
    force: bool
    wait: float  # seconds to wait for nodes to answer before acting
    #: drain --wait: seconds to wait, after the drain, for the nodes to be DRAINED (inf: no
    #: bound); None: do not wait.
    until_drained: float | None = None


def chosen_nodes(inv: Inventory, selector: tuple[str, ...]) -> list[str]:
    """The nodes the selector names, judged on the inventory (pools, hosts) alone."""
    if not selector:
        raise Refused("name the nodes (a hostlist, glob, pool=...): acting on all needs 'all'")
    terms = () if selector == ("all",) else selector
    views = FleetState(inv.nodes).nodes.values()
    chosen = [v.name for v in select(views, parse_selector(terms).before_contact())]
    if not chosen:
        raise Refused("the selector matches no node")
    return chosen


def confirm(verb: Verb, nodes: list[str], yes: bool, ask: Callable[[str], bool]) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Refused(f"{verb} {len(nodes)} node(s) needs --yes when there is no terminal to ask")
    if not ask(f"{verb.capitalize()} {len(nodes)} node(s) ({hostlist.collect_hostlist(nodes)})?"):
        raise Refused("not confirmed; nothing done")


async def operate(
    inv: Inventory,
    chosen: list[str],
    op: Operation,
    options: LinkOptions,
    say: Callable[[str], None],
) -> tuple[int, list[NodeResult]]:
    """Act on ``chosen`` (from ``chosen_nodes``): connect, narrow, guard, send."""
    pools = {e.pool for e in inv.nodes if e.name in chosen}
    reach = [e for e in inv.nodes if e.pool in pools]  # the guard weighs whole pools
    links = FleetLinks(reach, one_shot(options))
    fleet = links.fleet
    async with links:
        await links.settle(op.wait)
        terms = () if op.selector == ("all",) else op.selector
        views = [fleet.nodes[n] for n in chosen]
        targets = [v.name for v in select(views, parse_selector(terms))]  # state=, link=: now
        if not targets:
            raise Refused("after contact, no selected node matches the selector's terms")
        warnings = guard_warnings(fleet, targets, op.verb)
        if warnings and not op.force:
            raise Refused("; ".join(warnings) + ": refused without --force")
        for w in warnings:
            say(f"warning: {w} (--force)")
        if op.dry_run:
            results = [
                NodeResult(n, "ok", f"dry run: would {op.verb} with {op.args}") for n in targets
            ]
            return EXIT_ALL, results
        results = await run_action(links, targets, op.verb, op.args)
        if op.until_drained is not None:
            results = await wait_drained(fleet, results, op.until_drained, say)
    return outcome_code(results), results


async def wait_drained(
    fleet: FleetState, results: list[NodeResult], limit: float, say: Callable[[str], None]
) -> list[NodeResult]:
    """After a drain: wait until every node that took it is DRAINED (the agents announce it
    as a state event, and only once no GPU works there), at most ``limit`` seconds; a node
    still draining then is a timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    started = loop.time()

    def drained(node: str) -> bool:
        state = fleet.nodes[node].state
        return state is not None and state.state == "drained"

    waiting = [r.node for r in results if r.outcome == "ok" and not drained(r.node)]
    if waiting:
        say(f"waiting for {len(waiting)} node(s) to be drained")
    while waiting and loop.time() < deadline:
        await asyncio.sleep(0.05)
        waiting = [n for n in waiting if not drained(n)]
    took = loop.time() - started
    out = []
    for r in results:
        if r.outcome != "ok":
            out.append(r)
        elif r.node in waiting:
            state = fleet.nodes[r.node].state
            now = state.state if state else "unknown"
            out.append(NodeResult(r.node, "timeout", f"still {now} after {took:.0f} s"))
        else:
            out.append(NodeResult(r.node, "ok", f"{r.message}; drained"))
    return out


def outcome_code(results: list[NodeResult]) -> int:
    """0 all done, 3 none reached, 1 anything between."""
    if all(r.outcome == "ok" for r in results):
        return EXIT_ALL
    if all(r.outcome == "not_delivered" for r in results):
        return EXIT_NONE
    return EXIT_SOME_MISSING


def result_lines(results: list[NodeResult], as_json: bool) -> list[str]:
    if as_json:
        doc = [{"name": r.node, "outcome": r.outcome, "message": r.message} for r in results]
        return [json.dumps(doc)]
    width = max((len(r.node) for r in results), default=4)
    return [f"{r.node:<{width}}  {r.outcome:<13}  {r.message}" for r in results]


def build(
    verb: Verb, reason: str, choice: str | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The request's arguments, checked before anything connects: by the console's rules,
    then by the protocol's own typed arguments (the same check the agent makes)."""
    try:
        args = {**request_args(verb, reason, choice), **(extra or {})}
    except GpufleetError as exc:
        raise Refused(str(exc)) from None
    if verb in REQUEST_SPECS:  # restart: the agent alone knows what it allows
        try:
            decode_args(Request(id=0, op=verb, args=args))
        except ProtocolError as exc:
            raise Refused(exc.message) from None
    return args


async def fleet_audit(
    inv: Inventory, chosen: list[str], since: float | None, options: LinkOptions, wait: float
) -> tuple[int, list[tuple[str, AuditEntry]], list[str]]:
    """The audit logs of ``chosen``, merged oldest first, and the nodes that gave none."""
    entries = [e for e in inv.nodes if e.name in chosen]
    links = FleetLinks(entries, one_shot(options))
    got: list[tuple[str, AuditEntry]] = []
    missing: list[str] = []
    async with links:
        await links.settle(wait)

        async def one(node: str) -> None:
            args: dict[str, Any] = {"limit": MAX_AUDIT_READ}
            if since is not None:
                args["since"] = since
            try:
                answer = await links.request(node, "audit", args)
            except GpufleetError as exc:
                missing.append(f"{node}: {exc}")
                return
            if not answer.ok:
                missing.append(f"{node}: {answer.code}: {answer.error}")
                return
            for raw in (answer.result or {}).get("entries", []):
                got.append((node, msgspec.convert(raw, AuditEntry)))

        await asyncio.gather(*(one(n) for n in chosen))
    got.sort(key=lambda pair: pair[1].ts)
    if not missing:
        return EXIT_ALL, got, missing
    return (EXIT_NONE if len(missing) == len(chosen) else EXIT_SOME_MISSING), got, missing
