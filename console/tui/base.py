"""What a view or a dialog knows of the app it runs in, and the one rule read-only applies.

Why a module of its own: the app (app.py) opens the views, and the views reach the app (its
fleet, its requester, its clock, ``open_node``). Had the views imported app.py, the two would
import each other, and every view would import the app inside its functions to dodge the
cycle. The views import this instead; app.py imports the views at its top.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen, Screen

from console.model.fleet import FleetState
from console.ops.actions import Requester

if TYPE_CHECKING:
    from console.sources.spec import FleetFeed

__all__ = ["Acts", "FleetAppBase", "FleetDialog", "FleetView", "acting_actions"]

ResultType = TypeVar("ResultType")


class FleetAppBase(App[None]):
    """The app the views run in (``console.tui.app.FleetApp``): the model, what keeps it
    current, where actions go, the clock, and how to open the other views."""

    fleet: FleetState
    #: What keeps the model current (the links, Prometheus), or None (a test feeds it).
    feed: FleetFeed | None
    requester: Requester | None
    #: No verbs and no marks: the keys flagged ``Acts`` are not there at all.
    readonly: bool
    clock: Callable[[], float]
    #: Where the console's log goes, said in every view's help.
    log_path: str | None

    def open_node(self, name: str) -> None:
        """Show the node view of ``name``."""
        raise NotImplementedError

    def open_alerts(self) -> None:
        """Show the alerts view."""
        raise NotImplementedError


class Acts(Binding):
    """A key that changes nodes (a verb) or chooses what a change acts on (a mark). Flagged
    on the binding itself, so read-only removes every such key, in every view, from the keys,
    the key bar, the help and the palette alike, without a list of names to keep in step."""


def _bindings(screen_type: type[Screen[Any]]) -> Iterator[object]:
    for cls in screen_type.__mro__:
        yield from cls.__dict__.get("BINDINGS", ())


@functools.cache  # asked for every key, at every redraw of the key bar
def acting_actions(screen_type: type[Screen[Any]]) -> frozenset[str]:
    """The names of the actions a screen binds to ``Acts`` keys (its own and inherited)."""
    return frozenset(
        b.action.split("(", 1)[0] for b in _bindings(screen_type) if isinstance(b, Acts)
    )


class FleetView(Screen[ResultType]):
    """A view or dialog of the fleet app: the app typed, and read-only's one rule."""

    @property
    def fleet_app(self) -> FleetAppBase:
        app = self.app
        assert isinstance(app, FleetAppBase), "the fleet's views run in a FleetApp"
        return app

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Read-only, the actions of ``Acts`` keys are not there at all (not shown, not
        bound, not in the palette)."""
        return not (self.fleet_app.readonly and action in acting_actions(type(self)))


class FleetDialog(ModalScreen[ResultType], FleetView[ResultType]):
    """A dialog over a view of the fleet app: modal, and a ``FleetView`` in all else."""
