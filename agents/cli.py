"""``gpufleet-agent``: serve, once, attach, watch, request, demo.

Expected failures (bad config, socket taken, no driver when NVML was demanded) end with one
line on stderr and a meaningful exit status, never a traceback: 78 (EX_CONFIG) for a bad
configuration, which the systemd unit lists in RestartPreventExitStatus so a typo does not
restart-loop, and 1 for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from agents import __version__
from agents.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    load_config,
    validate_config,
)
from agents.gpu.base import GpuBackend
from agents.gpu.select import open_backend
from agents.host import HostSampler, host_info
from agents.ops.store import AuditLog, StateStore, StoreError
from agents.protocol import (
    GpufleetError,
    Inventory,
    NodeState,
    Sample,
    parse_since,
    to_builtins,
)
from agents.render import frame_line, sample_report
from agents.sampler import Sampler, inventory_frame
from agents.serve.client import AgentClient, connect_unix
from agents.serve.daemon import Agent

EX_CONFIG = 78


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line; by hand, a time helps.
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(message)s" if journal else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"gpufleet-agent: error: {message}", err=True)
    sys.exit(code)


class _Commands(click.Group):
    """Turns our own errors, from any command, into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _fail(str(exc), EX_CONFIG)
        except GpufleetError as exc:
            _fail(str(exc))
        except BrokenPipeError:  # `watch | head`: the reader left, which is no error of ours
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no flush error at exit)
            sys.exit(0)


def _config(
    path: Path | None,
    *,
    backend: str | None = None,
    gpus: int | None = None,
    seed: int | None = None,
    socket_path: str | None = None,
    state_dir: str | None = None,
    interval: float | None = None,
    node: str | None = None,
) -> AgentConfig:
    """The file's config with command-line flags on top (flags win), validated merged. An
    error names the file when the file alone is wrong, else the command line."""
    agent_flags = {
        "backend": backend,
        "socket": socket_path,
        "state_dir": state_dir,
        "interval": interval,
        "node_name": node,
    }
    sim_flags = {"gpus": gpus, "seed": seed}
    agent_flags = {k: v for k, v in agent_flags.items() if v is not None}
    sim_flags = {k: v for k, v in sim_flags.items() if v is not None}
    cfg = load_config(path, validate=False)
    merged = msgspec.structs.replace(
        cfg,
        agent=msgspec.structs.replace(cfg.agent, **agent_flags),
        sim=msgspec.structs.replace(cfg.sim, **sim_flags),
    )
    try:
        validate_config(merged, "command line")
    except ConfigError:
        validate_config(cfg, str(path or DEFAULT_CONFIG_PATH))  # the file's own fault?
        raise
    return merged


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Agent config file [default: /etc/gpufleet/agent.toml if it exists].",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "nvml", "sim"]),
    default=None,
    help="GPU source: auto (NVML if the driver loads, else no GPUs), nvml, or sim.",
)
gpus_option = click.option("--gpus", type=int, default=None, help="Simulated GPUs (sim).")
seed_option = click.option("--seed", type=int, default=None, help="Simulator seed (sim).")
socket_option = click.option(
    "--socket", "socket_path", default=None, help="Agent socket [default from config]."
)


def _backend_for(cfg: AgentConfig) -> GpuBackend:
    a = cfg.agent
    return open_backend(
        a.backend, gpus=cfg.sim.gpus, seed=cfg.sim.seed, node=cfg.node, interval=a.interval
    )


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpufleet-agent")
def main() -> None:
    """The gpufleet node agent: samples GPUs (NVML) and the host (psutil) and serves them on a
    unix socket for the gpufleet console, which reaches it over SSH."""


@main.command()
@config_option
@backend_option
@gpus_option
@seed_option
@socket_option
@click.option("--state-dir", default=None, help="Where state and audit log live.")
@click.option("--interval", type=float, default=None, help="Seconds between samples.")
@click.option("--node", default=None, help="Node name [default: host name].")
def serve(
    config_path: Path | None,
    backend: str | None,
    gpus: int | None,
    seed: int | None,
    socket_path: str | None,
    state_dir: str | None,
    interval: float | None,
    node: str | None,
) -> None:
    """Sample and serve until SIGTERM (what the systemd unit runs)."""
    cfg = _config(
        config_path,
        backend=backend,
        gpus=gpus,
        seed=seed,
        socket_path=socket_path,
        state_dir=state_dir,
        interval=interval,
        node=node,
    )
    _setup_logging(cfg.agent.log_level)
    asyncio.run(_serve(cfg))


async def _serve(cfg: AgentConfig) -> None:
    agent = Agent(cfg, _backend_for(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)


@main.command()
@config_option
@backend_option
@gpus_option
@seed_option
@click.option("--json", "as_json", is_flag=True, help="Inventory and sample as JSON.")
def once(
    config_path: Path | None,
    backend: str | None,
    gpus: int | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Take one sample and print it (a readable table, or JSON)."""
    cfg = _config(config_path, backend=backend, gpus=gpus, seed=seed)
    _setup_logging("warning")
    inventory, sample = _one_sample(cfg)
    if as_json:
        click.echo(json.dumps({"inventory": to_builtins(inventory), "sample": to_builtins(sample)}))
    else:
        click.echo(sample_report(inventory, sample))


def _one_sample(cfg: AgentConfig) -> tuple[Inventory, Sample]:
    backend = _backend_for(cfg)
    try:
        host = HostSampler()
        sampler = Sampler(backend, host, history_len=1)
        host.prime()
        time.sleep(0.25)  # rates need a second reading
        sampler.slow_tick()  # a one-shot wants the slow readings too
        sample, _ = sampler.tick()
        try:
            state: NodeState | None = StateStore(Path(cfg.agent.state_dir)).load()
        except StoreError as exc:  # e.g. run by a user who may not read /var/lib/gpufleet
            logging.getLogger(f"gpufleet.{__name__}").warning("ops state unknown: %s", exc)
            state = None
        return inventory_frame(cfg.node, backend.inventory(), host_info(), state), sample
    finally:
        backend.close()


@main.command()
@config_option
@socket_option
def attach(config_path: Path | None, socket_path: str | None) -> None:
    """Bridge stdin/stdout to the agent's socket.

    For sshd configurations that forbid streamlocal forwarding: the console runs
    ``ssh node gpufleet-agent attach``. The agent still identifies the caller by the
    socket's peer credentials, which here are the SSH user's.
    """
    cfg = _config(config_path, socket_path=socket_path)
    sock = connect_unix(cfg.agent.socket, timeout=10.0)
    sock.settimeout(None)
    bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())


def bridge(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    """Copy bytes both ways until the agent hangs up (stdin EOF half-closes toward it)."""

    def pump_in() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd_in, 65536):
                sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=pump_in, name="stdin", daemon=True).start()
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view) :]
    sock.close()


@main.command()
@config_option
@socket_option
@click.option("--no-history", is_flag=True, help="Start with live samples only.")
@click.option("--count", type=int, default=None, help="Stop after this many frames.")
def watch(
    config_path: Path | None, socket_path: str | None, no_history: bool, count: int | None
) -> None:
    """Print what the agent streams, one line per frame."""
    cfg = _config(config_path, socket_path=socket_path)
    _watch(cfg.agent.socket, not no_history, count)


def _watch(path: str, history: bool, count: int | None) -> None:
    with AgentClient(path, history=history, read_timeout=None) as client:
        click.echo(frame_line(client.hello))
        for n, frame in enumerate(client.frames(), start=1):
            click.echo(frame_line(frame))
            if count is not None and n >= count:
                return


@main.command()
@config_option
@socket_option
@click.argument("op")
@click.argument("args", nargs=-1)
def request(
    config_path: Path | None, socket_path: str | None, op: str, args: tuple[str, ...]
) -> None:
    """Send one request (OP KEY=VALUE ...) and print the response as JSON.

    Exit 0 when the agent says ok, 1 when it refuses.
    """
    cfg = _config(config_path, socket_path=socket_path)
    kwargs = dict(_parse_args(args))
    with AgentClient(cfg.agent.socket, stream=False) as client:
        response = client.request(op, **kwargs)
    click.echo(json.dumps(to_builtins(response)))
    if not response.ok:
        click.echo(f"gpufleet-agent: {op} refused: {response.error}", err=True)
        sys.exit(1)


def _parse_args(args: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            _fail(f"argument {arg!r} is not KEY=VALUE", 2)
        # Numbers as numbers (gpu=3); everything else stays a string.
        yield key, int(value) if value.lstrip("-").isdigit() else value


@main.command()
@config_option
@click.option("--state-dir", default=None, help="Where state and audit log live.")
@click.option("--since", default=None, help="Only entries since: 30m, 12h, 7d or a date.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    config_path: Path | None, state_dir: str | None, since: str | None, as_json: bool
) -> None:
    """Print the node's audit log: every request that acted or was refused, oldest first."""
    cfg = _config(config_path, state_dir=state_dir)
    try:
        start = None if since is None else parse_since(since, time.time())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    log_file = AuditLog(Path(cfg.agent.state_dir))
    if not log_file.path.exists():
        click.echo(f"no audit log at {log_file.path} (nothing done on this node yet)", err=True)
        return
    try:
        for entry in log_file.entries(start):
            click.echo(json.dumps(to_builtins(entry)) if as_json else entry.line())
    except OSError as exc:
        _fail(f"cannot read {log_file.path}: {exc.strerror}")


@main.command()
@click.option("--gpus", type=int, default=8, show_default=True, help="Simulated GPUs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seconds", type=float, default=None, help="Stop after this long.")
@click.option(
    "--fault-every",
    type=float,
    default=15.0,
    show_default=True,
    help="Inject a random fault this often (0: never).",
)
def demo(gpus: int, seed: int, seconds: float | None, fault_every: float) -> None:
    """Run an agent on simulated H100s in a private directory and print what it streams.

    Needs no root, no GPU and no configuration; Ctrl-C stops it.
    """
    from agents.demo import run_demo

    _setup_logging("warning")
    run_demo(gpus=gpus, seed=seed, seconds=seconds, fault_every=fault_every)


def _root_option(verb: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--root",
        "root",
        type=click.Path(path_type=Path),
        default=None,
        help=f"{verb} this directory as a system root (image builds, tests).",
    )


@main.command()
@click.option(
    "--user",
    default=None,
    help="Run the agent as this user, created as a system user if missing "
    "[default: root, which actions need].",
)
@click.option(
    "--group",
    default="gpufleet",
    show_default=True,
    help="The socket group: its members may connect (created as a system group if missing).",
)
@click.option(
    "--program",
    type=click.Path(path_type=Path),
    default=None,
    help="The gpufleet-agent the unit runs, as the installed system has it [default: this one].",
)
@click.option("--dry-run", is_flag=True, help="Print the files and commands; change nothing.")
@_root_option("Install into")
def install(
    user: str | None, group: str, program: Path | None, dry_run: bool, root: Path | None
) -> None:
    """Install the systemd unit, the socket group and a default config, and enable the unit.

    Idempotent: a second run finds nothing to do. An operator's agent.toml is never
    overwritten; its socket_group must name --group. A program the unit's sandbox would hide
    (under /home, /root or /tmp) is refused.
    """
    from agents import install as inst

    with _install_errors():
        target = inst.make_target(root, dry_run=dry_run)
        plan = inst.plan_install(target, user, group, program)
        inst.carry_out(plan, target, dry_run=dry_run, echo=click.echo)


@main.command()
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@_root_option("Uninstall from")
def uninstall(dry_run: bool, root: Path | None) -> None:
    """Disable and remove the unit and its drop-in. The config, the ops state and the audit
    log, the group and the user stay (each is named)."""
    from agents import install as inst

    with _install_errors():
        target = inst.make_target(root, dry_run=dry_run)
        plan = inst.plan_uninstall(target)
        inst.carry_out(plan, target, dry_run=dry_run, echo=click.echo)


@contextlib.contextmanager
def _install_errors() -> Iterator[None]:
    """A bad flag is a usage error (2); anything else install refuses is 1."""
    from agents.install import BadFlag

    try:
        yield
    except BadFlag as exc:
        _fail(str(exc), 2)
