"""The ``:`` command palette: jump to a node, open a view, filter by pool or state, and act
(drain, resume, restart, reassign) on what the view underneath has chosen: the marked rows or
the cursor's node in the fleet view, the node in the node view. The action goes through the
view's own key action, so the palette and the keys cannot differ (read-only hides both)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, runtime_checkable

import hostlist
from textual.command import DiscoveryHit, Hit, Hits, Matcher, Provider
from textual.content import Content
from textual.screen import Screen

from console.ops.actions import VERBS
from console.present.rows import parse_filter
from console.tui.base import FleetAppBase
from console.tui.fleet_view import FleetScreen
from console.tui.style import clean


@runtime_checkable
class Chooses(Protocol):
    """A view whose verbs act on nodes it has chosen (the fleet view, the node view)."""

    def chosen(self) -> list[str]: ...

    def action_verb(self, verb: str) -> None: ...


def _actions(screen: Screen[Any]) -> list[tuple[str, Callable[[], None], str]]:
    """A command per verb the view allows now, named with the nodes it would act on."""
    if not isinstance(screen, Chooses) or not (nodes := screen.chosen()):
        return []
    where = hostlist.collect_hostlist(nodes)
    count = f"{len(nodes)} nodes: " if len(nodes) > 1 else ""
    return [
        (
            f"{verb} {count}{where}",
            partial(screen.action_verb, verb),
            f"{spec.title}: opens the same dialog as its key",
        )
        for verb, spec in VERBS.items()
        if screen.check_action("verb", (verb,)) is not False
    ]


class FleetCommands(Provider):
    def _commands(self) -> list[tuple[str, Callable[[], None], str]]:
        app = self.app
        assert isinstance(app, FleetAppBase)
        out: list[tuple[str, Callable[[], None], str]] = [
            ("alerts", app.open_alerts, "active and recent alerts across the fleet"),
        ]
        out.extend(_actions(self.screen))
        fleet_screen = next((s for s in app.screen_stack if isinstance(s, FleetScreen)), None)
        if fleet_screen is not None:
            pools = sorted({v.pool for v in app.fleet.nodes.values()})
            for text in [*(f"pool={p}" for p in pools), "state=drained", "alert", "link=stale"]:
                out.append((f"filter {text}", partial(_filter, app, text), "show only these nodes"))
        for name in app.fleet.nodes:
            out.append((f"node {name}", partial(app.open_node, name), "open the node view"))
        return out

    async def discover(self) -> Hits:
        for text, run, help_text in self._commands()[:20]:
            yield DiscoveryHit(Content(clean(text)), run, text=text, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, run, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, _highlight(matcher, text), run, text=text, help=help_text)


def _highlight(matcher: Matcher, text: str) -> Content:
    """The match shown as ``Matcher.highlight`` shows it, but the text taken literally: node
    and pool names are data, and the highlighter would read them as markup."""
    shown = clean(text)
    content = Content(shown)
    _, offsets = matcher.fuzzy_search.match(matcher.query, shown)
    for at in offsets:
        if not shown[at].isspace():
            content = content.stylize(matcher.match_style, at, at + 1)
    return content


def _filter(app: FleetAppBase, text: str) -> None:
    while not isinstance(app.screen, FleetScreen) and len(app.screen_stack) > 2:
        app.pop_screen()
    screen = app.screen
    if isinstance(screen, FleetScreen):
        screen.row_filter, screen.filter_text = parse_filter(text), text
        screen.redraw()
