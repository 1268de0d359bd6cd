"""``gpufleet drain | resume | restart | reassign``: the verbs for scripts, on the same path
as the screen's (``console.ops.actions`` over ``FleetLinks``).

In order: select candidates from the inventory (hosts), connect to them and to the rest of
their inventory pools, apply the selector's pool/state/link/alert terms (a node's pool is its
agent's once it has one, ``NodeView.pool``, known only after contact), connect to the rest of
the pools the targets are in now (the guard weighs whole pools), check everything the console
can know before asking (the mass-action guard, a pool no one knows, each node's restart targets
and state), print the nodes, then ask (a terminal) or require ``--yes`` (no terminal), then act
(or only say what would be done, ``--dry-run``), a result per node. Exit 0 all done, 1 some
not, 2 usage error or refusal, 3 no node reachable; interrupted (Ctrl-C): what was sent and
what is known per node, exit 130.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import hostlist

from agents.protocol import (
    MAX_AUDIT_READ,
    REQUEST_SPECS,
    AuditEntry,
    AuditResult,
    GpufleetError,
    ProtocolError,
    Request,
    Response,
    at_work,
    decode_args,
    result_as,
)
from console.model.fleet import DOWN_STATES, FleetState, NodeView
from console.model.inventory import Inventory
from console.model.selector import parse_selector, select
from console.ops.actions import (
    NodeResult,
    Verb,
    guard_warnings,
    known_pools,
    request_args,
    run_action,
)
from console.present.status import EXIT_ALL, EXIT_NONE, EXIT_SOME_MISSING
from console.present.words import plural
from console.sources.delivery import AgentTooOld, NotDelivered, knows
from console.sources.ssh.fleetlinks import FleetLinks
from console.sources.ssh.link import LinkOptions, one_shot

#: The exit status of a verb interrupted by Ctrl-C (SIGINT), as a shell reports one.
EXIT_INTERRUPTED: Final = 130


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
    yes: bool = False  # do not ask


@dataclass
class Progress:
    """What an operation has done so far, per node, for a report if it is interrupted: a
    node is not sent, sent with no answer yet (unknown), or has its result."""

    results: dict[str, NodeResult] = field(default_factory=dict)
    acting: bool = False  # requests have started going out
    sent: set[str] = field(default_factory=set)  # nodes a request went out to

    def lines(self) -> list[NodeResult]:
        return list(self.results.values())


class Reached:
    """Links to the nodes a verb needs, reached in rounds into one fleet model (the pools the
    targets are in are known only once they have answered), and requests to any of them."""

    def __init__(self, inv: Inventory, options: LinkOptions) -> None:
        self.fleet = FleetState(inv.nodes)
        self._entries = {e.name: e for e in inv.nodes}
        self._options = one_shot(options)
        self._links: dict[str, FleetLinks] = {}
        self._rounds: list[FleetLinks] = []

    async def reach(self, names: Iterable[str], wait: float) -> None:
        """Connect to those of ``names`` not reached yet and wait (``wait`` seconds at most)
        until each has answered or failed."""
        new = [self._entries[n] for n in dict.fromkeys(names) if n not in self._links]
        if not new:
            return
        links = FleetLinks(new, self._options, fleet=self.fleet)
        self._rounds.append(links)
        self._links.update((e.name, links) for e in new)
        links.start()
        links.give_up(await links.settle(wait), wait, time.monotonic())

    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response:
        return await self._links[node].request(node, op, args, wait)

    async def __aenter__(self) -> Reached:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(links.stop() for links in self._rounds))


def chosen_nodes(inv: Inventory, selector: tuple[str, ...]) -> list[str]:
    """The candidates the selector's host terms name, judged on the inventory alone (pools,
    states and links are the nodes' to say, after contact)."""
    if not selector:
        raise Refused("name the nodes (a hostlist, glob, pool=...): acting on all needs 'all'")
    terms = () if selector == ("all",) else selector
    views = FleetState(inv.nodes).nodes.values()
    chosen = [v.name for v in select(views, parse_selector(terms).before_contact())]
    if not chosen:
        raise Refused(f"{no_match(selector)}: nothing sent")
    return chosen


def no_match(selector: tuple[str, ...]) -> str:
    """What every command says of a selector that matched no node (``status`` as a note,
    ``audit`` too, a verb as its refusal), in the same words."""
    return f"no node matches {' '.join(selector)!r}"


Ask = Callable[[str], Awaitable[bool]]


async def ask_terminal(question: str) -> bool:
    """Ask on the terminal without blocking the event loop: the links stay served while the
    operator reads, and Ctrl-C at the question cancels like anywhere else."""
    sys.stderr.write(f"{question} [y/N]: ")
    sys.stderr.flush()
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not answer.done():
            answer.set_result(sys.stdin.readline())

    loop.add_reader(fd, readable)
    try:
        line = await answer
    finally:
        loop.remove_reader(fd)
    return line.strip().lower() in ("y", "yes")


def confirm_needed(op: Operation, targets: list[str]) -> bool:
    """Whether to ask; refuses when asking is needed and there is no terminal to ask on."""
    if op.yes or op.dry_run:
        return False
    if not sys.stdin.isatty():
        raise Refused(
            f"{op.verb} {plural(len(targets), 'node')} needs --yes when there is no terminal to ask"
        )
    return True


def _nodes(names: list[str]) -> str:
    return str(hostlist.collect_hostlist(names))


def refusals(fleet: FleetState, targets: list[str], op: Operation) -> list[str]:
    """What the nodes' agents would refuse, as far as the console knows it (each node's
    Inventory frame: its restart targets, its scheduler, its state): refused here, before
    asking, and the same in a dry run. A node not heard from is left to its agent."""
    out: list[str] = []
    views = [fleet.nodes[n] for n in targets]
    if op.verb == "restart":
        target = str(op.args["target"])
        # An agent too old for restart lists no targets: the link says so for it, not sent.
        heard = [v for v in views if v.inventory is not None and knows(v.protocol, "restart")]
        barred = [v for v in heard if v.inventory and target not in v.inventory.restart_targets]
        if barred:
            allowed = {t for v in barred if v.inventory for t in v.inventory.restart_targets}
            out.append(
                f"{target} is not a restart target on {_nodes([v.name for v in barred])} "
                f"(allowed there: {_nodes(sorted(allowed)) if allowed else 'none'})"
            )
        index = int(target[3:]) if target[:3] == "gpu" and target[3:].isdigit() else None
        if index is not None:  # the agent refuses a busy GPU's reset: so does its latest sample
            busy = [
                v.name for v in heard
                if v not in barred and v.link == "live" and v.sample is not None
                and any(r.index == index and at_work(r) for r in v.sample.gpus)
            ]  # fmt: skip
            if busy:
                out.append(
                    f"{target} is busy on {_nodes(busy)}: end its work (or drain the node) first"
                )
        if target == "node":
            # Slurm reboots a node itself once its jobs end; elsewhere it must be drained.
            undrained = [
                v for v in heard
                if v.inventory and v.inventory.scheduler in ("none", "kubernetes")
                and v not in barred
                and (v.state is None or v.state.state != "drained")
            ]  # fmt: skip
            if undrained:
                out.append(
                    f"a node restart needs the node drained first: "
                    f"{_nodes([v.name for v in undrained])} not drained"
                )
    return out


def would(view: NodeView, op: Operation) -> str:
    """What the verb would do to this node, in words (a dry run's line)."""
    args = op.args
    reason = f"reason {args['reason']!r}" if args.get("reason") else "no reason"
    state = view.state.state if view.state else None
    if op.verb == "drain":
        if state in ("draining", "drained"):
            return f"would leave {view.name} as it is: already {state}"
        timeout = f", timeout {args['timeout']:g} s" if args.get("timeout") is not None else ""
        return f"would drain {view.name}: {reason}{timeout}"
    if op.verb == "resume":
        if state == "schedulable":
            return f"would leave {view.name} as it is: already schedulable"
        return f"would resume {view.name}: {reason}"
    if op.verb == "restart":
        return f"would restart {args['target']} on {view.name}: {reason}"
    if view.pool == args["pool"] and view.pool_source == "agent":
        return f"would leave {view.name} as it is: already in pool {view.pool}"
    return (
        f"would move {view.name} from pool {view.pool} (the {view.pool_source}'s) to "
        f"{args['pool']}: {reason}"
    )


async def operate(
    inv: Inventory,
    chosen: list[str],
    op: Operation,
    options: LinkOptions,
    say: Callable[[str], None],
    ask: Ask = ask_terminal,
    progress: Progress | None = None,
) -> tuple[int, list[NodeResult]]:
    """Act on ``chosen`` (from ``chosen_nodes``): connect, narrow, check, ask, send.
    ``progress`` is kept up to date for a report if the operation is interrupted."""
    progress = progress if progress is not None else Progress()
    async with Reached(inv, options) as links:
        fleet = links.fleet
        planned = {e.pool for e in inv.nodes if e.name in chosen}
        await links.reach([*chosen, *(e.name for e in inv.nodes if e.pool in planned)], op.wait)
        terms = () if op.selector == ("all",) else op.selector
        views = [fleet.nodes[n] for n in chosen]
        targets = [v.name for v in select(views, parse_selector(terms))]  # pool=, state=: now
        if not targets:
            raise Refused(f"{no_match(op.selector)}: nothing sent")
        # The guard weighs the pools the targets are in now: a reassigned node's new one too.
        now_in = {fleet.nodes[t].pool for t in targets}
        await links.reach((e.name for e in inv.nodes if e.pool in now_in), op.wait)
        refused = refusals(fleet, targets, op)
        if refused:
            raise Refused("; ".join(refused) + ": nothing sent")
        warnings = guard_warnings(fleet, targets, op.verb)
        if op.verb == "reassign" and op.args["pool"] not in known_pools(fleet):
            pools = ", ".join(sorted(known_pools(fleet)))
            warnings.append(
                f"pool {op.args['pool']} is in neither the inventory nor any agent's state "
                f"(known: {pools})"
            )
        if warnings and not op.force:
            raise Refused("; ".join(warnings) + ": refused without --force")
        for w in warnings:
            say(f"warning: {w} (--force)")
        say(f"{op.verb} {plural(len(targets), 'node')}: {_nodes(targets)}")
        if op.dry_run:
            return dry_run(fleet, targets, op)
        if confirm_needed(op, targets):
            question = f"{op.verb.capitalize()} {plural(len(targets), 'node')} ({_nodes(targets)})?"
            if not await ask(question):
                raise Refused("not confirmed; nothing done")
        before = {n: (fleet.nodes[n].pool, fleet.nodes[n].pool_source) for n in targets}
        for n in targets:
            progress.results[n] = NodeResult(n, "not_delivered", "not sent")
        progress.acting = True

        def sent(node: str) -> None:
            progress.sent.add(node)
            progress.results[node] = NodeResult(node, "unknown", "sent, no answer yet")

        def answered(result: NodeResult) -> None:
            progress.results[result.node] = result

        results = await run_action(links, targets, op.verb, op.args, answered, on_send=sent)
        if op.verb == "reassign":
            results = [_moved(r, *before[r.node], op.args["pool"]) for r in results]
            progress.results.update((r.node, r) for r in results)
        if op.until_drained is not None:
            results = await wait_drained(fleet, results, op.until_drained, say, progress)
    return outcome_code(results), results


def _moved(result: NodeResult, pool: str, source: str, to: str) -> NodeResult:
    """A reassign's line with the pool the node was in as the console knew it: an agent with
    no pool of its own was in the inventory's, which it cannot know."""
    if result.outcome != "ok" or result.message.startswith("already"):
        return result
    return NodeResult(result.node, "ok", f"pool {pool} (the {source}'s) -> {to}")


def dry_run(fleet: FleetState, targets: list[str], op: Operation) -> tuple[int, list[NodeResult]]:
    """Each node's line as the real run would start: what would be sent, or that the node
    cannot be reached now."""
    results = []
    for name in targets:
        view = fleet.nodes[name]
        if view.link in DOWN_STATES or not view.answered:
            results.append(
                NodeResult(name, "not_delivered", f"would not reach {name}: {view.link_said}")
            )
        else:
            results.append(NodeResult(name, "dry_run", would(view, op)))
    return outcome_code(results), results


async def wait_drained(
    fleet: FleetState,
    results: list[NodeResult],
    limit: float,
    say: Callable[[str], None],
    progress: Progress | None = None,
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

    def now(node: str) -> str:
        state = fleet.nodes[node].state
        return state.state if state else "unknown"

    waiting = [r.node for r in results if r.outcome == "ok" and not drained(r.node)]
    if waiting:
        say(f"waiting for {plural(len(waiting), 'node')} to be drained")
    try:
        while waiting and loop.time() < deadline:
            await asyncio.sleep(0.05)
            waiting = [n for n in waiting if not drained(n)]
    except asyncio.CancelledError:
        if progress is not None:  # interrupted while waiting: each node as it is now
            for r in results:
                if r.outcome == "ok":
                    message = f"{r.message}; {now(r.node)} when interrupted"
                    progress.results[r.node] = NodeResult(r.node, "ok", message)
        raise
    took = loop.time() - started
    out = []
    for r in results:
        if r.outcome != "ok":
            out.append(r)
        elif r.node in waiting:
            out.append(NodeResult(r.node, "timeout", f"still {now(r.node)} after {took:.0f} s"))
        else:
            out.append(NodeResult(r.node, "ok", f"{r.message}; drained"))
    return out


def outcome_code(results: list[NodeResult]) -> int:
    """0 all done (or, in a dry run, all would be sent), 3 none reached, 1 anything
    between."""
    if all(r.outcome in ("ok", "dry_run") for r in results):
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
    inv: Inventory,
    chosen: list[str],
    since: float | None,
    options: LinkOptions,
    wait: float,
    selector: tuple[str, ...] = (),
    say: Callable[[str], None] = lambda _line: None,
) -> tuple[int, list[tuple[str, AuditEntry]], list[str], list[str]]:
    """The audit logs of ``chosen``, narrowed by the selector's terms once the nodes have
    answered (``pool=`` is the agents' pool), merged oldest first; the nodes that gave none;
    and the nodes asked (so that an empty answer can say whose it is). ``say``: told if the
    terms leave no node (nothing to read is not an empty log)."""
    entries = [e for e in inv.nodes if e.name in chosen]
    links = FleetLinks(entries, one_shot(options))
    got: list[tuple[str, AuditEntry]] = []
    missing: list[str] = []
    async with links:
        links.give_up(await links.settle(wait), wait, time.monotonic())
        terms = () if selector == ("all",) else selector
        views = [links.fleet.nodes[n] for n in chosen]
        chosen = [v.name for v in select(views, parse_selector(terms))]
        if not chosen:
            say(f"gpufleet: {no_match(selector)}")

        async def one(node: str) -> None:
            args: dict[str, Any] = {"limit": MAX_AUDIT_READ}
            if since is not None:
                args["since"] = since
            try:
                answer = await links.request(node, "audit", args)
            except (NotDelivered, AgentTooOld) as exc:
                missing.append(str(exc))  # the link's words name the node already
                return
            if not answer.ok:
                missing.append(f"{node}: {answer.code}: {answer.error}")
                return
            try:
                entries = result_as(answer, AuditResult).entries
            except ProtocolError as exc:
                missing.append(f"{node}: {exc}")
                return
            got.extend((node, entry) for entry in entries)

        await asyncio.gather(*(one(n) for n in chosen))
    got.sort(key=lambda pair: pair[1].ts)
    if not missing:
        return EXIT_ALL, got, missing, chosen
    code = EXIT_NONE if len(missing) == len(chosen) else EXIT_SOME_MISSING
    return code, got, missing, chosen
