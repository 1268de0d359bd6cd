"""The operator's screen: one ``FleetApp`` for the terminal, the demo and the tests.

The app holds no fleet logic. It owns a ``FleetState`` (fed by the links, or by a test), a
requester for actions (the links, or a stand-in), and a clock; twice a second it ages the model,
takes the coalesced changes and hands them to the screen on top. The refresh rate is the app's,
whatever the rate of frames, so 1,000 nodes streaming cost one redraw of what changed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen

from console.logs import get_logger
from console.model.fleet import FleetState
from console.model.heap import HeapFreezer
from console.ops.actions import Requester
from console.sources.ssh.fleetlinks import FleetLinks
from console.tui.alerts_view import AlertsScreen
from console.tui.base import FleetAppBase
from console.tui.commands import FleetCommands
from console.tui.fleet_view import FleetScreen
from console.tui.node_view import NodeScreen
from console.tui.style import clean

if TYPE_CHECKING:
    from console.sources.spec import FleetFeed

#: Seconds between screen refreshes (about 2 Hz, design.md §4).
REFRESH_S = 0.5
#: The operator is typing if a key or click came within this many seconds: the heap is not
#: frozen (a full collection) until they pause.
TYPING_S = 2.0

log = get_logger(__name__)


@runtime_checkable
class Stops(Protocol):
    async def stop(self) -> None: ...


@runtime_checkable
class FleetAware(Protocol):
    """A screen that shows fleet data: told which nodes changed at each refresh."""

    def fleet_changed(self, changed: set[str], now: float) -> None: ...


@runtime_checkable
class KeepsUp(Protocol):
    """A screen that, while covered, keeps its data current without drawing it, so that
    coming back to it is quick."""

    def keep_up(self, changed: set[str], now: float) -> None: ...


class FleetApp(FleetAppBase):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "gpufleet"
    #: On the views under the one on top (app.tcss hides their notifications: the one on top
    #: shows them, and a dialog leaves the view behind it in sight).
    SUSPENDED_SCREEN_CLASS = "-covered"
    COMMANDS: ClassVar = App.COMMANDS | {FleetCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            ":",
            "command_palette",
            "command palette (nodes, views, filters, actions)",
            show=False,
        ),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        fleet: FleetState,
        *,
        requester: Requester | None = None,
        links: FleetLinks | None = None,
        feed: FleetFeed | None = None,
        readonly: bool = False,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float | None = REFRESH_S,
        source: str = "",
        log: str | None = None,
    ) -> None:
        super().__init__()
        #: Where the console's log goes, said in every view's help (``?``): at the end of the
        #: title, 80 columns cut it off, and the source with it.
        self.log_path = log
        self.fleet = fleet
        #: What keeps the model current: the links, or another source (Prometheus), whose
        #: state the fleet view shows above the table.
        self.feed: FleetFeed | None = feed if feed is not None else links
        self.requester = requester if requester is not None else links
        self.readonly = readonly
        self.clock = clock
        self._refresh_s = refresh_s
        # "read-only" in the title, which comes first: at the end of the subtitle (the source
        # and the log's path) 80 columns cut it off.
        self.title = f"{self.TITLE} (read-only)" if readonly else self.TITLE
        self.sub_title = clean(source)
        #: Keeps full collections short (40 to 80 ms at 1,000 nodes otherwise): model/heap.py.
        self.heap = HeapFreezer(fleet, links.links if links is not None else None)
        self._last_input = -math.inf  # by ``clock``
        #: The exception that ended the screen, if one did (said by cli.py, logged here).
        self.failure: Exception | None = None

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast as text, never markup: its words quote nodes, agents and filters."""
        super().notify(
            clean(message), title=clean(title), severity=severity, timeout=timeout, markup=False
        )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Textual's own palette commands, but "Keys" is the view's help (what ``?`` shows,
        not Textual's side panel of the focused widget's cursor keys) and no "Maximize" (a
        table maximized hides the fleet's totals and the key bar)."""
        for command in super().get_system_commands(screen):
            if command.title == "Keys":
                help_ = getattr(screen, "action_help", None)
                if callable(help_):
                    yield SystemCommand("Keys", "the view's keys, as ? shows them", help_)
            elif command.title not in ("Maximize", "Minimize"):
                yield command

    def _handle_exception(self, error: Exception) -> None:
        """A failure in the screen ends it, as Textual does (``return_code`` 1), with the
        traceback in the console log and not on the operator's terminal: the command that ran
        the screen says it in one line and exits non-zero (cli.py)."""
        log.error("the screen failed", exc_info=error)
        if self.failure is None:
            self.failure = error
        super()._handle_exception(error)
        self._exit_renderables.clear()

    def on_load(self) -> None:
        """Tasks on this loop start lazily again, before any link opens.

        On Python 3.12+ Textual's ``run_async`` (the real terminal; Pilot's ``run_test`` does
        not) makes the whole loop run each new task eagerly, up to its first wait, inside
        ``create_task``. asyncssh is not written for that: its server stores the auth handler
        after the handler's task has already run, so a key check that needs no wait (the
        demo's) answers nothing and every demo node read "unreachable: TimeoutError". The
        links, the demo's SSH server and the agents share this loop, so the loop keeps
        asyncio's default; a task factory set by anything other than Textual is left alone."""
        loop = asyncio.get_running_loop()
        eager = getattr(asyncio, "eager_task_factory", None)
        if eager is not None and loop.get_task_factory() is eager:
            loop.set_task_factory(None)

    def on_mount(self) -> None:
        if self.feed is not None:
            self.feed.start()
        self.push_screen(FleetScreen())
        if self._refresh_s is not None:
            self.set_interval(self._refresh_s, self.refresh_fleet)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown) and not event.is_forwarded:
            self._last_input = self.clock()
        await super().on_event(event)

    async def on_unmount(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        requester: object = self.requester
        if requester is not self.feed and isinstance(requester, Stops):
            await requester.stop()  # links opened for actions only

    def refresh_fleet(self) -> None:
        """Age the model and show what changed (called at the steady rate, or by tests).

        Textual's timers tick on while the app closes its screens (it stops them only after),
        and a screen half taken down has no table to draw into: once closing, nothing is
        drawn (every quit of a fast-refreshing screen raised NoMatches before this)."""
        if not self.is_running:
            return
        now = self.clock()
        self.heap.step(busy=now - self._last_input < TYPING_S)
        self.fleet.tick(now)
        changed = self.fleet.flush()
        in_sight = self._in_sight()
        for screen in self.screen_stack:
            if screen in in_sight:
                if isinstance(screen, FleetAware):
                    screen.fleet_changed(changed, now)
            elif isinstance(screen, KeepsUp):
                screen.keep_up(changed, now)

    def _in_sight(self) -> list[Screen[Any]]:
        """The screen on top and those seen behind it: a dialog (modal) leaves the view under
        it on screen, so that view keeps drawing; a table frozen behind a dialog would show
        old rows under a current "data 0 s old"."""
        shown: list[Screen[Any]] = []
        for screen in reversed(self.screen_stack):
            shown.append(screen)
            if not isinstance(screen, ModalScreen):
                break
        return shown

    def open_node(self, name: str) -> None:
        if name not in self.fleet.nodes:
            return
        if not self.is_screen_installed("node"):
            self.install_screen(NodeScreen(), "node")
        node_screen = self.get_screen("node")
        assert isinstance(node_screen, NodeScreen)
        node_screen.show(name)
        if not any(s is node_screen for s in self.screen_stack):
            self.push_screen(node_screen)
            return
        self._back_to(node_screen)

    def _back_to(self, screen: NodeScreen) -> None:
        """Pop the views above ``screen`` (it was opened again from one of them) and show it
        afresh."""
        while self.screen_stack[-1] is not screen:
            self.pop_screen()
        screen.on_screen_resume()

    def open_alerts(self) -> None:
        self.push_screen(AlertsScreen())


def make_app(
    feed: FleetState | FleetFeed,
    *,
    requester: Requester | None = None,
    readonly: bool = False,
    clock: Callable[[], float] = time.monotonic,
    refresh_s: float | None = REFRESH_S,
    source: str = "",
    log: str | None = None,
) -> FleetApp:
    """The fleet screen on ``feed``, as the command line and the tests build it.

    ``feed`` is the links (which carry the actions too, and whose connections the heap
    freezer knows), another source of the model (Prometheus, with actions through
    ``requester``), or a bare model that a test feeds itself. Deciding here which is which
    keeps one way to build the screen: the app's own arguments let a caller pass a fleet
    other than its feed's, or links as a feed but not as links."""
    if isinstance(feed, FleetState):
        fleet, links, other = feed, None, None
    elif isinstance(feed, FleetLinks):
        fleet, links, other = feed.fleet, feed, None
    else:
        fleet, links, other = feed.fleet, None, feed
    return FleetApp(
        fleet,
        requester=requester,
        links=links,
        feed=other,
        readonly=readonly,
        clock=clock,
        refresh_s=refresh_s,
        source=source,
        log=log,
    )
