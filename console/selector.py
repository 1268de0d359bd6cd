"""Which nodes a command or a filter means: ``gpu[01-08] pool=train state=drained``.

Terms are separated by spaces. Host terms (hostlist expressions such as ``gpu[01-16,20]``, or
globs such as ``gpu1*``) add nodes; ``key=value`` terms (``pool=``, ``state=``, ``link=``) and
the bare word ``alert`` narrow them. With no host term, every node is a candidate. A hostlist
that names a node the inventory does not hold is an error, not an empty match: an operator who
typed ``gpu[01-80]`` into a 64-node fleet should hear about it before anything is acted on.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import hostlist

from agents.protocol import GpufleetError
from console.fleet import NodeView

FILTER_KEYS: Final = ("pool", "state", "link")
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
            filters.setdefault(key, set()).update(value.split(","))
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


def select(views: Iterable[NodeView], selector: Selector) -> list[NodeView]:
    """The matching nodes in inventory order; SelectorError if a named host is unknown."""
    views = list(views)
    known = {v.name for v in views}
    unknown = [h for h in selector.hosts if h not in known]
    if unknown:
        shown = hostlist.collect_hostlist(unknown)
        raise SelectorError(f"not in the inventory: {shown}")
    return [v for v in views if selector.matches(v)]
