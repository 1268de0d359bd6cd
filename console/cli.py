"""``gpufleet``: the operator's console, for people and for scripts.

Scripts get ``--json`` on stdout, messages on stderr, and exit codes that mean something:
0 every selected node answered, 1 some did not, 2 a usage error (bad selector, bad inventory),
3 none did; the screen exits 70 if it fails. Our own errors are one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import logging.handlers
import math
import os
import pwd
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import click
import hostlist

from agents.protocol import PROTOCOL_VERSION, GpufleetError, clip, parse_since, to_builtins
from console import __version__
from console.logs import ROOT, get_logger
from console.model.fleet import FleetState, NodeView
from console.model.inventory import Inventory, find_inventory, load_inventory
from console.model.selector import check_pools, known_pools, parse_selector, select
from console.ops.actions import Verb
from console.ops.operate import (
    EXIT_INTERRUPTED,
    Operation,
    Progress,
    build,
    chosen_nodes,
    no_match,
    operate,
    result_lines,
)
from console.ops.operate import fleet_audit as gather_audit
from console.present.status import (
    EXIT_USAGE,
    check_result,
    exit_code,
    not_tried_note,
    status_doc,
    table,
)
from console.present.words import aligned, plural
from console.sources.spec import SSH, SourceSpec, parse_source
from console.sources.ssh.fleetlinks import FleetLinks, snapshot
from console.sources.ssh.link import CONNECTING_AT_ONCE, LinkOptions

if TYPE_CHECKING:
    from console.tui.app import FleetApp


#: ``gpufleet audit``'s columns: ``AuditEntry.columns`` and the node it came from.
AUDIT_HEADER = ("NODE", "TIME (UTC)", "WHO", "OP", "RESULT", "WHY")


#: The screen ended on an error of ours (sysexits' EX_SOFTWARE): never 0, never a traceback.
EXIT_CRASH = 70


class ScreenFailed(Exception):
    """The screen stopped on an unexpected error; the message is one line for the operator
    (the traceback is in the console log)."""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"gpufleet: error: {message}", err=True)
    sys.exit(code)


#: The commands that change nothing anywhere (an interrupt can say so).
READ_ONLY: Final = frozenset({"status", "inventory", "audit"})


class _Commands(click.Group):
    """Our own errors (inventory, selector, connection setup) as one line and exit 2.

    Ctrl-C in a command that only reads (status, inventory check, audit: the verbs report
    what they sent themselves) is one line of ours and 130, as a shell reports an interrupt:
    click's "Aborted!" exits 1, which a script reads as "some nodes did not answer"."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpufleetError as exc:
            _fail(str(exc), EXIT_USAGE)
        except ScreenFailed as exc:
            _fail(str(exc), EXIT_CRASH)
        except KeyboardInterrupt:
            reads = ctx.invoked_subcommand in READ_ONLY
            click.echo(f"gpufleet: interrupted{'; nothing was changed' if reads else ''}", err=True)
            sys.exit(EXIT_INTERRUPTED)


#: The longest --connect-wait: a day.
MAX_WAIT: Final = 86400.0


def _wait(ctx: click.Context, param: click.Parameter, seconds: float) -> float:
    """A wait in seconds is more than 0 and finite: 0 or less tried no node at all, and nan
    or inf would wait for ever, where every command ends within its stated wait."""
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_WAIT):
        raise click.BadParameter(
            f"{seconds!r} is not a wait in seconds (more than 0, at most {MAX_WAIT:g})"
        )
    return seconds


def _ssh_options(fn: Any) -> Any:
    """How to reach the nodes: every command that connects takes these."""
    for option in reversed(
        [
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
            click.option(
                "--fan-out",
                type=click.IntRange(1, 1024),
                default=CONNECTING_AT_ONCE,
                show_default=True,
                help="SSH handshakes in flight at once, fleet-wide (at most 10 to any one sshd).",
            ),
        ]
    ):
        fn = option(fn)
    return fn  # fmt: skip


_INVENTORY_OPTION = click.option(
    "--inventory",
    type=click.Path(path_type=Path),
    default=None,
    help="Fleet inventory [default: $GPUFLEET_INVENTORY, ~/.config/gpufleet/fleet.toml, "
    "/etc/gpufleet/fleet.toml].",
)
_READONLY_OPTION = click.option(
    "--readonly", is_flag=True, help="The screen without drain, resume, restart or reassign."
)
_SOURCE_OPTION = click.option(
    "--source",
    "source_text",
    default="ssh",
    show_default=True,
    envvar="GPUFLEET_SOURCE",
    help="Where the live view comes from: ssh (a stream from every node) or "
    "prometheus=URL (a Prometheus server scraping the agents' /metrics); actions always go "
    "over SSH to the chosen nodes only [env: GPUFLEET_SOURCE].",
)


@click.group(
    cls=_Commands,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(
    __version__, prog_name="gpufleet", message=f"%(prog)s %(version)s (protocol {PROTOCOL_VERSION})"
)
@_INVENTORY_OPTION
@_READONLY_OPTION
@_SOURCE_OPTION
@_ssh_options
@click.option(
    "--debug",
    is_flag=True,
    help="Log every library's lines to the screen's log too (SSH, Textual), at debug level.",
)
@click.pass_context
def main(
    ctx: click.Context,
    inventory: Path | None,
    readonly: bool,
    source_text: str,
    known_hosts: Path | None,
    accept_new: bool,
    identity: Path | None,
    ssh_config: Path | None,
    debug: bool,
    fan_out: int,
) -> None:
    """Watch a GPU fleet live and act on it. With no command, on a terminal: the fleet screen
    for the configured inventory."""
    if ctx.invoked_subcommand is not None:
        if ctx.invoked_subcommand != "demo":  # the demo sets up its own (and headless, none)
            # Other libraries' lines (asyncio's, asyncssh's) would reach the terminal through
            # logging's last resort: they go to the user's log, and ours are said on stderr.
            _log_to_file(debug)
        return
    live = parse_source(source_text)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        _fail("no terminal for the screen: use a command (gpufleet --help)", EXIT_USAGE)
    inv = load_inventory(find_inventory(inventory))
    options = _link_options(known_hosts, accept_new, identity, ssh_config, fan_out)
    log = _log_to_file(debug)
    asyncio.run(_screen(inv, options, readonly, source=inv.source, live=live, log=log))


#: The screen's log file rotates at this size, keeping LOG_BACKUPS older files: a console
#: left open for weeks on a flapping fleet writes a line per link failure.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def _home_of(uid: int) -> Path | None:
    """The user's home as the account database has it (not $HOME, which sudo may keep)."""
    try:
        return Path(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        return None


def _own_dir(path: Path, uid: int) -> bool:
    """Whether ``path`` is, or can be made, a directory that is ``uid``'s alone.

    A log in a directory another user owns or may write could be theirs, or be swapped for a
    link by them; and a directory made in another user's tree (root under ``sudo`` with the
    caller's $HOME) would be root's there, and lock the caller out of their own log. So the
    nearest existing ancestor must be ``uid``'s too."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        if ancestor != path and ancestor.stat().st_uid != uid:
            return False
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.lstat()
    except OSError:
        return False
    return st.st_uid == uid and path.is_dir() and not path.is_symlink() and not st.st_mode & 0o022


def _log_path(uid: int) -> Path | None:
    """One log per user: ``$XDG_STATE_HOME/gpufleet/console.log`` (``~/.local/state`` by
    default) when that directory is this user's alone; otherwise (a state directory shared
    between users, or ``sudo`` keeping the caller's $HOME) the same place under the home the
    account database gives this user. None when neither is usable."""
    env_home = Path(os.environ.get("HOME") or "/nonexistent")
    state = os.environ.get("XDG_STATE_HOME")
    candidates = [Path(state) if state else env_home / ".local" / "state"]
    home = _home_of(uid)
    if home is not None:
        candidates.append(home / ".local" / "state")
    for base in candidates:
        folder = base / "gpufleet"
        if not _own_dir(folder, uid):
            continue
        path = folder / "console.log"
        try:
            st = path.lstat()
        except FileNotFoundError:
            return path
        except OSError:
            continue
        if st.st_uid == uid and not path.is_symlink():
            return path
    return None


#: The loggers logged at INFO: ours, every module's named under it (``console.logs``). Every
#: other package's INFO lines would bury ours (asyncssh logs each step of every connection:
#: 98 % of a day's log), so only their warnings reach the log, unless ``--debug``.
OUR_LOGGERS = ROOT


def _log_to_file(debug: bool = False) -> str:
    """On the screen, log lines go to a file: written to the terminal they would tear it.

    Our own lines at INFO; every other library's (asyncssh, Textual) only at WARNING, or
    everything at DEBUG with ``--debug``."""
    path = _log_path(os.geteuid())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    try:
        if path is None:
            raise OSError("no directory of this user's own for the log")
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS
        )
    except OSError:
        handler, path = logging.NullHandler(), Path("/dev/null")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger(OUR_LOGGERS).setLevel(logging.DEBUG if debug else logging.INFO)
    return str(path)


async def _screen(
    inv: Inventory,
    options: LinkOptions,
    readonly: bool,
    source: str,
    background: Callable[[FleetApp], Coroutine[Any, Any, None]] | None = None,
    live: SourceSpec = SSH,
    log: str | None = None,
) -> None:
    """The fleet screen over live links (or Prometheus), until the operator quits. An error
    that ends it raises ``ScreenFailed`` (one line; the traceback went to ``log``)."""
    from console.tui.app import make_app

    if live.url is not None:
        from console.sources.prometheus.source import PromSource
        from console.sources.ssh.actionlinks import ActionLinks

        feed = PromSource(inv.nodes, live.url)
        actions = ActionLinks(inv.nodes, options)
        app = make_app(feed, requester=actions, readonly=readonly, source=source, log=log)
    else:
        links = FleetLinks(inv.nodes, options)
        app = make_app(links, readonly=readonly, source=source, log=log)
    extra = asyncio.create_task(background(app)) if background is not None else None
    try:
        await app.run_async()
    except Exception as exc:  # outside the app's own handling (its driver, its start)
        get_logger(__name__).exception("the screen failed")
        app.failure = app.failure or exc
    finally:
        if extra is not None:
            extra.cancel()
            await asyncio.gather(extra, return_exceptions=True)
    if app.failure is not None or app.return_code:
        raise ScreenFailed(_failure_line(app.failure, log))


def _failure_line(error: BaseException | None, log: str | None) -> str:
    """What ended the screen, in one line: the error's kind and first line, and where the
    traceback is."""
    what = "an unexpected error"
    if error is not None:
        first = (str(error).strip().splitlines() or [""])[0]
        what = type(error).__name__ + (f": {clip(first)}" if first else "")
    where = f"the traceback is in {log}" if log else "see the console log"
    return f"the screen stopped on an error of gpufleet's ({what}); {where}"


def _link_options(
    known_hosts: Path | None,
    accept_new: bool,
    identity: Path | None,
    ssh_config: Path | None,
    fan_out: int = CONNECTING_AT_ONCE,
) -> LinkOptions:
    kw: dict[str, Any] = {
        "host_keys": "accept-new" if accept_new else "strict",
        "fan_out": fan_out,
    }
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
            _INVENTORY_OPTION,
            click.option("--json", "as_json", is_flag=True, help="JSON on stdout."),
            click.option(
                "--connect-wait",
                "wait",
                type=float,
                callback=_wait,
                default=15.0,
                show_default=True,
                help="Seconds to wait for every node to answer before going on without it.",
            ),
        ]
    ):
        fn = option(fn)
    return _ssh_options(fn)  # fmt: skip


@dataclass(frozen=True)
class Reach:
    """What the options of a command that reaches nodes add up to."""

    selector: tuple[str, ...]
    inventory: Path | None
    as_json: bool
    wait: float
    options: LinkOptions

    def views(self, source: SourceSpec = SSH) -> list[NodeView]:
        """Select nodes from the inventory and take one snapshot of them, over SSH or from
        Prometheus (whose fault, if it has one, is said on stderr)."""
        inv = load_inventory(find_inventory(self.inventory))
        selector = parse_selector(self.selector)
        pools = {e.pool for e in inv.nodes}
        chosen = select(FleetState(inv.nodes).nodes.values(), selector.before_contact())
        if not self.as_json:
            click.echo(f"{plural(len(chosen), 'node')} from {inv.source}", err=True)
        entries = [v.entry for v in chosen]
        if source.url is not None:
            from console.sources.prometheus.source import prom_snapshot

            fleet, fault = asyncio.run(prom_snapshot(entries, source.url, wait=self.wait))
            if fault is not None:
                click.echo(f"gpufleet: prometheus: {fault}", err=True)
        else:
            fleet = asyncio.run(snapshot(entries, self.options, wait=self.wait))
            note = not_tried_note(fleet.nodes.values())
            if note is not None:
                click.echo(f"gpufleet: {note}", err=True)
        # state=, link=, alert and a pool only an agent has: now known. Hosts were checked.
        check_pools(selector, known_pools(fleet.nodes.values()) | pools)
        views = [v for v in fleet.nodes.values() if selector.matches(v)]
        if not views and self.selector:
            click.echo(f"gpufleet: {no_match(self.selector)}", err=True)
        return views


def _reaching(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared options, handed to it as one ``Reach`` (its own options
    come through as keywords)."""

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
        fan_out: int,
        **own: Any,
    ) -> None:
        options = _link_options(known_hosts, accept_new, identity, ssh_config, fan_out)
        fn(Reach(selector, inventory, as_json, wait, options), **own)

    return cast(Callable[..., None], _fleet_options(command))


@main.command()
@_SOURCE_OPTION
@_reaching
def status(reach: Reach, source_text: str) -> None:
    """One snapshot of the fleet (or the nodes SELECTOR names), as a table or JSON."""
    views = reach.views(parse_source(source_text))
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
    elif results:
        rows = [
            [
                r["name"],
                "ok" if r["ok"] else r["problem"],
                r["detail"] + (f"; next: {r['next']}" if r["next"] else ""),
            ]
            for r in results
        ]
        for line in aligned(("NODE", "CHECK", "DETAIL"), rows):
            click.echo(line)
    sys.exit(exit_code(views))


def _acting(fn: Callable[..., None]) -> Callable[..., None]:
    """The options every verb shares, on top of the fleet options."""
    for option in reversed(
        [
            click.option("--dry-run", is_flag=True, help="Say what would be done; send nothing."),
            click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal)."),
            click.option(
                "--force", is_flag=True, help="Act past the guard on a pool's share out of service."
            ),
        ]
    ):
        fn = option(fn)
    return fn  # fmt: skip


def _operate(
    reach: Reach,
    verb: Verb,
    args: dict[str, Any],
    dry_run: bool,
    yes: bool,
    force: bool,
    until_drained: float | None = None,
) -> None:
    inv = load_inventory(find_inventory(reach.inventory))
    nodes = chosen_nodes(inv, reach.selector)
    op = Operation(verb, args, reach.selector, dry_run, force, reach.wait, until_drained, yes)
    progress = Progress()
    try:
        code, results = asyncio.run(operate(inv, nodes, op, reach.options, _say, progress=progress))
    except KeyboardInterrupt:
        _interrupted(verb, progress, reach.as_json)
    for line in result_lines(results, reach.as_json):
        click.echo(line)
    sys.exit(code)


def _say(message: str) -> None:
    click.echo(message, err=True)


def _interrupted(verb: Verb, progress: Progress, as_json: bool) -> NoReturn:
    """Ctrl-C: say what was sent and what is known of each node (never a bare "Aborted!"
    after half a fleet was drained), and exit 130."""
    if not progress.acting:
        click.echo(f"gpufleet: interrupted; no {verb} was sent", err=True)
        sys.exit(EXIT_INTERRUPTED)
    results = progress.lines()
    click.echo(
        f"gpufleet: interrupted: {verb} sent to {len(progress.sent)} of "
        f"{plural(len(results), 'node')}; "
        "what is known of each:",
        err=True,
    )
    for line in result_lines(results, as_json):
        click.echo(line)
    sys.exit(EXIT_INTERRUPTED)


@main.command()
@click.option("--reason", required=True, help="Why (stored and shown literally).")
@click.option(
    "--timeout", type=click.FloatRange(0, 604800), default=None,
    help="Seconds the drain may take: past it a node with work still running stays DRAINING "
    "(a bare node says so; Kubernetes stops evicting); --wait stops waiting and reports it.",
)  # fmt: skip
@click.option(
    "--wait", "wait_drained", is_flag=True,
    help="Wait until every node is DRAINED (at most --timeout seconds, if given).",
)  # fmt: skip
@_acting
@_reaching
def drain(
    reach: Reach, reason: str, timeout: float | None, wait_drained: bool, **flags: bool
) -> None:
    """Take nodes out of service: DRAINING until their GPU work ends, then DRAINED."""
    extra = {"timeout": timeout} if timeout is not None else {}
    until = (math.inf if timeout is None else timeout) if wait_drained else None
    _operate(reach, "drain", build("drain", reason, None, extra), **flags, until_drained=until)


@main.command()
@click.option("--reason", default="", help="Why (optional).")
@_acting
@_reaching
def resume(reach: Reach, reason: str, **flags: bool) -> None:
    """Put nodes back in service."""
    _operate(reach, "resume", build("resume", reason, None), **flags)


@main.command()
@click.option("--target", required=True, help="What to restart: agent, node, gpuN or a unit.")
@click.option("--reason", required=True, help="Why (stored and shown literally).")
@_acting
@_reaching
def restart(reach: Reach, target: str, reason: str, **flags: bool) -> None:
    """Restart something on nodes (the agent decides what it allows)."""
    _operate(reach, "restart", build("restart", reason, target), **flags)


@main.command()
@click.option("--pool", required=True, help="The pool to move the nodes to.")
@click.option("--reason", required=True, help="Why (stored and shown literally).")
@_acting
@_reaching
def reassign(reach: Reach, pool: str, reason: str, **flags: bool) -> None:
    """Move nodes to another pool."""
    _operate(reach, "reassign", build("reassign", reason, pool), **flags)


@main.command("audit")
@click.option("--since", default=None, help="Only entries since: 30m, 12h, 7d or a date.")
@_reaching
def fleet_audit(reach: Reach, since: str | None) -> None:
    """The audit logs of the selected nodes (all, with no SELECTOR, as status), merged,
    oldest first (asked of each agent)."""
    try:
        start = None if since is None else parse_since(since, time.time())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    inv = load_inventory(find_inventory(reach.inventory))
    selector = reach.selector or ("all",)  # reading acts on nothing: all by default
    nodes = chosen_nodes(inv, selector)
    code, got, missing, asked = asyncio.run(
        gather_audit(inv, nodes, start, reach.options, reach.wait, selector, _say)
    )
    if reach.as_json:
        click.echo(json.dumps([{"node": n, **to_builtins(e)} for n, e in got]))
    elif got:
        rows = [[node, *entry.columns()] for node, entry in got]
        for line in aligned(AUDIT_HEADER, rows):
            click.echo(line)
    for line in missing:
        click.echo(f"no audit log from {line}", err=True)
    answered = [n for n in asked if not any(m.startswith(f"{n}: ") for m in missing)]
    if not got and answered and not reach.as_json:  # an empty answer reads as no run
        when = f" since {since}" if since is not None else ""
        where = hostlist.collect_hostlist(answered)
        click.echo(f"no audit entry on {where}{when}: nothing was done there", err=True)
    sys.exit(code)


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
@_READONLY_OPTION
def demo(
    nodes: int,
    gpus: int,
    faults: bool,
    headless: bool,
    inventory_out: Path | None,
    seconds: float | None,
    readonly: bool,
) -> None:
    """A fleet of simulated nodes on this machine, reached over real SSH (no root, no GPU,
    no configuration), on the fleet screen."""
    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        _fail("no terminal for the screen: use --headless (and --inventory-out)", EXIT_USAGE)
    try:
        asyncio.run(_demo(nodes, gpus, faults, headless, inventory_out, seconds, readonly))
    except KeyboardInterrupt:
        pass
    except asyncio.CancelledError:  # SIGTERM (see _demo): ended as a shell reports it
        sys.exit(128 + signal.SIGTERM)


def _debug() -> bool:
    """``gpufleet --debug`` given before a command."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


async def _demo(
    nodes: int,
    gpus: int,
    faults: bool,
    headless: bool,
    inventory_out: Path | None,
    seconds: float | None,
    readonly: bool,
) -> None:
    from console.demo import demo_fleet, run_incidents

    log = None if headless else _log_to_file(_debug())
    # SIGTERM (systemd, kill, a test's teardown) ends the demo as Ctrl-C does: its temporary
    # directory, with the throwaway SSH keys in it, is removed on the way out.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    # Headless, the nodes' own logs would bury the demo's lines; it announces its incidents.
    logging.getLogger("gpufleet.agents").setLevel(logging.ERROR)
    async with demo_fleet(nodes, gpus) as fleet:
        if inventory_out is not None:
            try:
                await asyncio.to_thread(shutil.copyfile, fleet.inventory, inventory_out)
            except OSError as exc:
                raise GpufleetError(f"cannot write {inventory_out}: {exc.strerror}") from None
        where = inventory_out or fleet.inventory
        rng = random.Random(0)  # noqa: S311  (a scripted demo, not security)

        async def scripted(say: Callable[[str], None]) -> None:
            if faults:
                await run_incidents(fleet, say, rng)
            await asyncio.Event().wait()

        if not headless:

            async def beside(app: FleetApp) -> None:
                def say(message: str) -> None:
                    app.notify(message, title="demo incident", timeout=8)

                async with asyncio.timeout(seconds):
                    await scripted(say)

            async def on_screen(app: FleetApp) -> None:
                try:
                    await beside(app)
                except TimeoutError:
                    pass  # --seconds ran out
                except Exception:
                    get_logger(__name__).exception("demo incidents failed")
                finally:
                    app.exit()

            source = f"demo: {nodes} nodes x {gpus} simulated H100s over SSH"
            inv = load_inventory(where)
            await _screen(inv, LinkOptions(), readonly, source, on_screen, log=log)
            return
        click.echo(
            f"demo fleet: {nodes} nodes x {gpus} simulated H100s behind SSH on 127.0.0.1; "
            f"try: gpufleet status --inventory {where}",
            err=True,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await scripted(lambda m: click.echo(m, err=True))
