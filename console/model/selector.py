"""Which nodes a command or a filter means: ``gpu[01-08] pool=train state=drained``.

Terms are separated by spaces. Host terms (hostlist expressions such as ``gpu[01-16,20]``, or
globs such as ``gpu1*``) add nodes; ``key=value`` terms (``pool=``, ``state=``, ``link=``) and
the bare word ``alert`` narrow them. With no host term, every node is a candidate. A hostlist
that names a node the inventory does not hold is an error, not an empty match: an operator who
typed ``gpu[01-80]`` into a 64-node fleet should hear about it before anything is acted on.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, get_args

import hostlist

from agents.protocol import GpufleetError, OpsState
from console.model.fleet import LinkState, NodeView

FILTER_KEYS: Final = ("pool", "state", "link")
#: What ``state=`` and ``link=`` may name: a value outside these can match no node ever, so it
#: is a typo to say, not an empty answer. ``unknown``: no agent has said yet.
KNOWN_VALUES: Final[dict[str, tuple[str, ...]]] = {
    "state": (*get_args(OpsState), "unknown"),
    "link": get_args(LinkState),
}
_GLOB_CHARS: Final = frozenset("*?")


class SelectorError(GpufleetError):
    """The selector cannot be read or names unknown nodes; the message says which term."""


@dataclass(frozen=True)
class Selector:
    hosts: tuple[str, ...] = ()  # expanded hostlist names
    globs: tuple[str, ...] = ()
    filters: dict[str, frozenset[str]] = field(default_factory=dict)
    alerting: bool = False

    def before_contact(self) -> Selector:
        """The part that can be judged from the inventory alone (hosts): what to connect to.
        Pools, state, link and alerts are known only after (a node's pool is its agent's once
        it has one, ``NodeView.pool``), so they are applied then."""
        return Selector(hosts=self.hosts, globs=self.globs)

    def describe(self) -> str:
        """The selector as the operator typed it, near enough to recognise."""
        terms = [*self.hosts, *self.globs]
        terms += [f"{k}={','.join(sorted(v))}" for k, v in self.filters.items()]
        return " ".join(terms + (["alert"] if self.alerting else [])) or "all"

    def matches(self, view: NodeView) -> bool:
        if (self.hosts or self.globs) and not (
            view.name in self.hosts or any(fnmatch.fnmatchcase(view.name, g) for g in self.globs)
        ):
            return False
        values = {
            "pool": view.pool,
            "state": view.state.state if view.state else "unknown",
            "link": view.link,
        }
        if any(values[key] not in wanted for key, wanted in self.filters.items()):
            return False
        return not self.alerting or bool(view.alerts)


def parse_selector(text: str | Iterable[str]) -> Selector:
    terms = text.split() if isinstance(text, str) else [t for part in text for t in part.split()]
    hosts: list[str] = []
    globs: list[str] = []
    filters: dict[str, set[str]] = {}
    alerting = False
    for term in terms:
        key, sep, value = term.partition("=")
        if sep:
            if key not in FILTER_KEYS:
                known = ", ".join(f"{k}=" for k in FILTER_KEYS)
                raise SelectorError(f"unknown filter {key!r} in {term!r} (known: {known}, alert)")
            if not value:
                raise SelectorError(f"{term!r}: {key}= needs a value")
            values = value.split(",")
            valid = KNOWN_VALUES.get(key)
            bad = [v for v in values if valid is not None and v not in valid]
            if bad:
                raise SelectorError(
                    f"unknown {key} {bad[0]!r} in {term!r} (known: {', '.join(valid or ())})"
                )
            filters.setdefault(key, set()).update(values)
        elif term == "alert":
            alerting = True
        elif _GLOB_CHARS & set(term):
            globs.append(term)
        else:
            try:
                hosts.extend(hostlist.expand_hostlist(term))
            except hostlist.BadHostlist as exc:
                raise SelectorError(f"bad host list {term!r}: {exc}") from None
    return Selector(
        hosts=tuple(dict.fromkeys(hosts)),
        globs=tuple(globs),
        filters={k: frozenset(v) for k, v in filters.items()},
        alerting=alerting,
    )


def known_pools(views: Iterable[NodeView]) -> set[str]:
    """Pools the inventory names for these nodes, and those their agents said they are in."""
    pools: set[str] = set()
    for v in views:
        pools.add(v.entry.pool)
        if v.state is not None and v.state.pool:
            pools.add(v.state.pool)
    return pools


def check_pools(selector: Selector, pools: Collection[str]) -> None:
    """SelectorError for a ``pool=`` that names no pool anyone knows: a typo, not a pool
    with nothing in it."""
    unknown = sorted(set(selector.filters.get("pool", ())) - set(pools))
    if unknown:
        raise SelectorError(
            f"unknown pool {unknown[0]!r} (known: {', '.join(sorted(pools)) or 'none'})"
        )


def select(
    views: Iterable[NodeView], selector: Selector, pools: Collection[str] = ()
) -> list[NodeView]:
    """The matching nodes in inventory order; SelectorError if a named host is unknown, or a
    pool neither these nodes (inventory or agent) nor ``pools`` know."""
    views = list(views)
    known = {v.name for v in views}
    unknown = [h for h in selector.hosts if h not in known]
    if unknown:
        shown = hostlist.collect_hostlist(unknown)
        raise SelectorError(f"not in the inventory: {shown}")
    check_pools(selector, known_pools(views) | set(pools))
    return [v for v in views if selector.matches(v)]
