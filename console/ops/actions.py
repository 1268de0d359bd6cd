"""The three verbs (and resume) as the console sends them: what each needs, what it would
touch, when to warn, and the result per node. Shared by the screen and the scripted commands.

The console decides nothing about a node's state here: it sends a request to each node's
agent and reports what the agent answered. A request that never reached the agent, or whose
answer never came back, is reported as exactly that, never as success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import hostlist

from agents.protocol import (
    GpufleetError,
    NodeState,
    ProtocolError,
    Response,
    Said,
    at_work,
    result_as,
)
from console.model.fleet import DOWN_STATES, FleetState, NodeView
from console.sources.delivery import AgentTooOld, NotDelivered

Verb = Literal["drain", "resume", "restart", "reassign"]

#: Share of a pool's nodes one action may take out of service before the console warns (the
#: agents and the scripted commands enforce their own guard; this one is for the eyes).
GUARD_SHARE: Final = 0.25
#: Requests in flight at once for one action.
ACTION_CONCURRENCY: Final = 32
#: Seconds to wait for a node's answer to an action.
REQUEST_WAIT_S: Final = 30.0
#: Seconds to wait for a node to come back, after an action's answer was lost, to read its
#: state again.
REREAD_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class VerbSpec:
    verb: Verb
    title: str  # "Drain"
    reason_required: bool
    takes_out_of_service: bool  # counts against the mass-action guard
    choice: Literal["target", "pool"] | None = None  # what the operator must pick


VERBS: Final[dict[Verb, VerbSpec]] = {
    "drain": VerbSpec("drain", "Drain", reason_required=True, takes_out_of_service=True),
    "resume": VerbSpec("resume", "Resume", reason_required=False, takes_out_of_service=False),
    "restart": VerbSpec(
        "restart", "Restart", reason_required=True, takes_out_of_service=True, choice="target"
    ),
    "reassign": VerbSpec(
        "reassign", "Reassign", reason_required=True, takes_out_of_service=False, choice="pool"
    ),
}


class ActionError(GpufleetError):
    """The action cannot be sent as asked (no nodes, no reason, nothing picked)."""


def request_args(verb: Verb, reason: str, choice: str | None) -> dict[str, Any]:
    """The request's arguments, checked here so a bad action is refused before anything is
    sent to any node."""
    spec = VERBS[verb]
    reason = reason.strip()
    if spec.reason_required and not reason:
        raise ActionError(f"{verb} needs a reason")
    args: dict[str, Any] = {"reason": reason} if reason else {}
    if spec.choice is not None:
        if not choice:
            raise ActionError(f"{verb} needs a {spec.choice}")
        args[spec.choice] = choice
    return args


def restart_targets(fleet: FleetState, nodes: Sequence[str]) -> list[str]:
    """Restart targets every one of the nodes allows, as their agents listed them (the
    allowlist is each node's own config): a target offered is one every node will accept."""
    common: list[str] | None = None
    for name in nodes:
        inv = fleet.nodes[name].inventory
        allowed = inv.restart_targets if inv else []
        common = list(allowed) if common is None else [t for t in common if t in allowed]
    return common or []


def why_no_restart_targets(fleet: FleetState, nodes: Sequence[str]) -> str | None:
    """Why ``restart_targets`` offers nothing for these nodes, in words for the dialog; None
    when it offers something. An empty list alone reads as a bug."""
    if restart_targets(fleet, nodes):
        return None
    silent = [n for n in nodes if fleet.nodes[n].inventory is None]
    none = [n for n in nodes if (inv := fleet.nodes[n].inventory) and not inv.restart_targets]
    if silent:
        return f"no restart targets: {hostlist.collect_hostlist(silent)} not heard from yet"
    if none:
        return (
            f"no restart targets: {hostlist.collect_hostlist(none)} list none (an agent older than "
            f"protocol 1.4, or nothing allowed in its [restart])"
        )
    return "no restart target is allowed on every one of these nodes: choose fewer"


def pools(fleet: FleetState) -> list[str]:
    """Every pool a node is in now (``NodeView.pool``: its agent's, else the inventory's)."""
    return sorted({v.pool for v in fleet.nodes.values()})


def known_pools(fleet: FleetState) -> set[str]:
    """Pools the console knows of: the inventory's and every agent's. A reassign to any
    other is most likely a typo, and a node moved there would leave every pool the console
    shows."""
    return {v.entry.pool for v in fleet.nodes.values()} | set(pools(fleet))


@dataclass(frozen=True, slots=True)
class Affected:
    node: str
    gpu: int
    pid: int
    user: str | None
    command: str | None


def affected(fleet: FleetState, nodes: Iterable[str]) -> list[Affected]:
    """GPU processes on the nodes, from the latest samples: who an action would disturb. A GPU
    at work in another PID namespace lists no process (design.md §2), so this can be short."""
    out = []
    for name in nodes:
        sample = fleet.nodes[name].sample
        for r in sample.gpus if sample else []:
            for p in r.processes or []:
                out.append(Affected(name, r.index, p.pid, p.user, p.command))
    return out


def busy_without_processes(fleet: FleetState, nodes: Iterable[str]) -> list[str]:
    """Nodes with work on a GPU but no process listed (``at_work``, as the agent's drain
    decides it): the list above is not the whole story."""
    out = []
    for name in nodes:
        sample = fleet.nodes[name].sample
        for r in sample.gpus if sample else []:
            if at_work(r) and not r.processes:
                out.append(name)
                break
    return out


def out_of_service(view: NodeView) -> str | None:
    """Why the node is out of service now (its state, or its link down), or None."""
    if view.link in DOWN_STATES:
        return view.link
    if view.state is not None and view.state.state != "schedulable":
        return view.state.state
    return None


def guard_warnings(fleet: FleetState, nodes: Iterable[str], verb: Verb) -> list[str]:
    """One line per pool of which the action would leave more than GUARD_SHARE out of
    service. What counts is what the action changes: a chosen node already out (draining,
    drained, its link down: a request could not reach it anyway) is counted once, among those
    already out, which the line names with why; a pool the action changes nothing in is not
    warned about."""
    if not VERBS[verb].takes_out_of_service:
        return []
    chosen = set(nodes)
    warnings = []
    for pool in pools(fleet):
        members = [v for v in fleet.nodes.values() if v.pool == pool]
        already = {v.name: why for v in members if (why := out_of_service(v)) is not None}
        taken = [v.name for v in members if v.name in chosen and v.name not in already]
        if not taken:
            continue
        after = len(already) + len(taken)
        if after / len(members) > GUARD_SHARE:
            line = (
                f"pool {pool}: {after} of {len(members)} nodes would be out of service "
                f"(more than {GUARD_SHARE:.0%}): {verb} {hostlist.collect_hostlist(taken)}"
            )
            if already:
                by_why: dict[str, list[str]] = {}
                for name, why in already.items():
                    by_why.setdefault(why, []).append(name)
                out = ", ".join(
                    f"{hostlist.collect_hostlist(names)} {why}"
                    for why, names in sorted(by_why.items())
                )
                line += f"; already out: {out}"
            warnings.append(line)
    return warnings


class Requester(Protocol):
    async def request(
        self, node: str, op: str, args: dict[str, Any], wait: float = 30.0
    ) -> Response: ...


#: not_delivered: certainly not applied; unknown: sent, its answer lost (the node's state
#: read again afterwards is in the message); timeout: drain --wait gave up waiting.
#: dry_run: what would be sent (nothing was).
Outcome = Literal["pending", "ok", "refused", "not_delivered", "unknown", "timeout", "dry_run"]


@dataclass(frozen=True, slots=True)
class NodeResult:
    node: str
    outcome: Outcome
    message: str


def _result(node: str, response: Response) -> NodeResult:
    if response.ok:
        try:
            said = result_as(response, Said).message
        except ProtocolError:  # it was done; only its words are unreadable
            said = ""
        return NodeResult(node, "ok", said or "done")
    return NodeResult(node, "refused", f"{response.code}: {response.error}")


def _said_state(state: NodeState) -> str:
    out: str = state.state
    if state.state != "schedulable" and state.reason:
        out += f" ({state.reason!r} by {state.who or '?'})"
    return out + (f", pool {state.pool}" if state.pool else "")


async def reread(requester: Requester, node: str, lost: str, within: float) -> NodeResult:
    """An action whose answer was lost may have been applied: never send it again blindly.
    Read the node's state instead, once its link is back (``within`` seconds at most), and
    report the action as unknown with what the node says now."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            left = max(0.5, deadline - loop.time())
            answer = await requester.request(node, "state", {}, wait=left)
        except NotDelivered as exc:
            if exc.maybe or loop.time() >= deadline:
                return NodeResult(node, "unknown", f"{lost}; its state could not be read again")
            await asyncio.sleep(0.2)  # the link is down: wait for it to come back
            continue
        if answer.ok and answer.result:
            try:
                now = _said_state(result_as(answer, NodeState))
            except ProtocolError as exc:
                return NodeResult(node, "unknown", f"{lost}; reading its state: {exc}")
            return NodeResult(node, "unknown", f"{lost}; the node is now {now}")
        return NodeResult(node, "unknown", f"{lost}; reading its state: {answer.error}")


async def run_action(
    requester: Requester,
    nodes: Sequence[str],
    verb: Verb,
    args: dict[str, Any],
    on_result: Callable[[NodeResult], Awaitable[None] | None] | None = None,
    *,
    wait: float = REQUEST_WAIT_S,
    on_send: Callable[[str], None] | None = None,
) -> list[NodeResult]:
    """Send the verb to every node (bounded), reporting each node's result as it comes.
    ``wait``: seconds for each node's answer; ``on_send``: told as each request goes out (an
    interrupted operation says which nodes were sent one)."""
    if not nodes:
        raise ActionError("no nodes selected")
    gate = asyncio.Semaphore(ACTION_CONCURRENCY)

    async def one(node: str) -> NodeResult:
        async with gate:
            if on_send is not None:
                on_send(node)
            try:
                result = _result(node, await requester.request(node, verb, args, wait=wait))
            except AgentTooOld as exc:  # the node cannot do it: refused, on its behalf
                result = NodeResult(node, "refused", str(exc))
            except NotDelivered as exc:
                if exc.maybe:
                    result = await reread(requester, node, str(exc), REREAD_S)
                else:
                    result = NodeResult(node, "not_delivered", str(exc))
        if on_result is not None:
            done = on_result(result)
            if done is not None:
                await done
        return result

    return list(await asyncio.gather(*(one(n) for n in nodes)))
