"""``gpufleet-agent install`` and ``uninstall``: the unit, its drop-in, the socket group, the
default config.

Both first compute a plan against what the node already has, then print it (``--dry-run``) or
apply it. So a dry run shows exactly what a real run would do, a second run finds nothing to
do, and every refusal (a bad flag, an operator's config that disagrees, no privileges) happens
while planning, before anything has changed.

The packaged unit is installed as shipped; what this node chose (the program's path, the user)
goes in a drop-in beside it, so the hardened unit stays reviewable as one file.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Final

from agents.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, parse_config
from agents.ops.store import atomic_write
from agents.protocol import GpufleetError, clip

UNIT: Final = "gpufleet-agent.service"
UNIT_DIR: Final = Path("/etc/systemd/system")
DROPIN: Final = "10-install.conf"
DEFAULT_GROUP: Final = "gpufleet"
#: What shadow's tools accept without --badname: lowercase, digits, _ and -, at most 32.
ACCOUNT_NAME: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: The template's socket_group line, which install points at the chosen group.
_TEMPLATE_GROUP_LINE: Final = f'socket_group = "{DEFAULT_GROUP}"'
#: A command that takes longer than this is stuck (start waits for the agent's READY).
COMMAND_TIMEOUT: Final = 120.0


class InstallError(GpufleetError):
    """Install or uninstall cannot go on; nothing after the last printed step was done."""


class BadFlag(InstallError):
    """A flag's value is wrong in itself (exit 2, as for any usage error)."""


def packaged_unit() -> str:
    return (files("agents") / "systemd" / UNIT).read_text(encoding="utf-8")


def config_template(group: str = DEFAULT_GROUP) -> str:
    """The commented default agent.toml, its socket group set to ``group``."""
    text = (files("agents") / "systemd" / "agent.toml").read_text(encoding="utf-8")
    if text.count(_TEMPLATE_GROUP_LINE) != 1:  # the template test keeps this true
        raise InstallError(f"the packaged agent.toml has no single line {_TEMPLATE_GROUP_LINE}")
    return text.replace(_TEMPLATE_GROUP_LINE, f'socket_group = "{group}"')


def agent_program() -> Path:
    """This installation's ``gpufleet-agent`` script: in a virtual environment or under pyenv
    the one on PATH may be a shim or another installation's."""
    program = Path(sysconfig.get_path("scripts")) / "gpufleet-agent"
    if not os.access(program, os.X_OK):
        raise InstallError(f"{program} is missing: install the gpufleet package first")
    return program


# ---------------------------------------------------------------------------------------------
# What the unit's sandbox hides: a program there cannot be started by the unit.

_TRUE: Final = ("yes", "true", "on", "1")


def unit_settings(text: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every assignment in a unit file, in order (comments skipped)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def hidden_paths(unit: str) -> list[tuple[Path, str]]:
    """The directories the unit's sandbox hides from the agent (or forbids it to run
    programs from), each with the setting that does it. Read from the unit itself, so that a
    setting added to it is checked too. ``ProtectSystem`` only makes paths read-only, and
    ``ProtectHome=read-only`` too: programs there still run."""
    out: list[tuple[Path, str]] = []
    for key, value in unit_settings(unit):
        v = value.lower()
        if key == "ProtectHome" and (v in _TRUE or v == "tmpfs"):
            out += [(Path(p), f"{key}={value}") for p in ("/home", "/root", "/run/user")]
        elif key == "PrivateTmp" and v in _TRUE:
            tmp = ("/tmp", "/var/tmp")  # noqa: S108  (what PrivateTmp hides, not a file we use)
            out += [(Path(p), f"{key}={value}") for p in tmp]
        elif key in ("InaccessiblePaths", "TemporaryFileSystem", "NoExecPaths"):
            for word in value.split():
                path = word.lstrip("-+").split(":")[0]
                if path.startswith("/"):
                    out.append((Path(path), f"{key}={path}"))
    return out


def _hidden_by(path: Path, hidden: list[tuple[Path, str]]) -> tuple[Path, str] | None:
    return next((h for h in hidden if path == h[0] or h[0] in path.parents), None)


def _resolved(target: Target, path: Path) -> Path:
    """``path`` on the target with its links followed, as the target sees it."""
    real = Path(os.path.realpath(target.path(path)))
    if target.live:
        return real
    try:
        return Path("/") / real.relative_to(target.root)
    except ValueError:  # an absolute link out of the root: the path it names
        return real


def _interpreter(target: Target, program: Path) -> Path | None:
    """The program's ``#!`` interpreter, when it names one by path (not through env)."""
    try:
        with target.path(program).open("rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    if not words or not words[0].startswith("/") or Path(words[0]).name == "env":
        return None
    return Path(words[0])


def _what_the_unit_runs(target: Target, program: Path, ours: bool) -> Iterator[tuple[str, Path]]:
    """Every path the agent needs at start, each named: the program, its interpreter, their
    targets through links; for this installation also its Python and the gpufleet package
    (an editable install runs from the clone)."""
    yield "the agent program", program
    yield "the agent program", _resolved(target, program)
    interpreter = _interpreter(target, program)
    if interpreter is not None:
        yield f"the interpreter of {program}", interpreter
        yield f"the interpreter of {program}", _resolved(target, interpreter)
    if ours and target.live:
        yield f"the Python {program} was installed with", Path(sys.base_prefix).resolve()
        yield "the gpufleet package", Path(__file__).resolve().parent


def check_program(target: Target, program: Path, *, ours: bool) -> None:
    """Refuse a program the installed unit could not start: one its sandbox hides (a virtual
    environment under /home or /tmp, a pyenv Python under /root), or one that is not there."""
    if not program.is_absolute():
        raise BadFlag(f"--program {program}: not an absolute path")
    real = target.path(program)
    if not (real.is_file() and os.access(real, os.X_OK)):
        whose = " (this installation's gpufleet-agent)" if ours else ""
        raise InstallError(
            f"{program}{whose}: no such executable in {target.root}: pass --program with the "
            "path of gpufleet-agent as the installed system has it; nothing was changed"
        )
    hidden = hidden_paths(packaged_unit())
    for what, path in _what_the_unit_runs(target, program, ours):
        found = _hidden_by(path, hidden)
        if found is None:
            continue
        prefix, setting = found
        hides = sorted({str(p) for p, _ in hidden})
        raise InstallError(
            f"{what}, {path}, is under {prefix}, which the unit hides from the agent ({setting}), "
            "so the unit could not start it: install gpufleet outside "
            f"{', '.join(hides)} (a virtual environment such as /opt/gpufleet/venv, made with a "
            "Python outside them too) and run that gpufleet-agent install; nothing was changed"
        )


# ---------------------------------------------------------------------------------------------
# The machine being installed on: the live system, or a directory holding another root.


@dataclass(frozen=True)
class Target:
    root: Path  # Path("/") for the running system

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    @property
    def booted(self) -> bool:
        """systemd runs this system (sd_booted), so units can be started and reloaded."""
        return self.live and Path("/run/systemd/system").is_dir()

    def path(self, where: Path) -> Path:
        """``where`` (a path on the target system) as a path on this machine."""
        return self.root / where.relative_to("/")

    def systemctl(self, *args: str) -> list[str]:
        tool = _tool("systemctl", "this node does not run systemd")
        return [tool, *([] if self.live else [f"--root={self.root}"]), *args]

    def shadow(self, tool: str, *args: str) -> list[str]:
        """groupadd/useradd/usermod; --prefix edits the target's /etc files without a chroot
        (which would need the tools inside the target)."""
        path = _tool(tool, "it comes with the passwd package")
        return [path, *([] if self.live else ["--prefix", str(self.root)]), *args]

    def group(self, name: str) -> tuple[int, list[str]] | None:
        """The group's gid and members, or None. The live system asks NSS (an LDAP group
        counts); a target root has only its own /etc/group."""
        if self.live:
            try:
                g = grp.getgrnam(name)
            except KeyError:
                return None
            return g.gr_gid, list(g.gr_mem)
        for fields in _colon_file(self.path(Path("/etc/group"))):
            if len(fields) >= 4 and fields[0] == name:
                return int(fields[2]), [m for m in fields[3].split(",") if m]
        return None

    def user_gid(self, name: str) -> int | None:
        """The user's primary gid, or None when there is no such user."""
        if self.live:
            try:
                return pwd.getpwnam(name).pw_gid
            except KeyError:
                return None
        for fields in _colon_file(self.path(Path("/etc/passwd"))):
            if len(fields) >= 4 and fields[0] == name:
                return int(fields[3])
        return None


def _colon_file(path: Path) -> Iterator[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from None
    for line in text.splitlines():
        yield line.split(":")


def _tool(name: str, why: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )
    if path is None:
        raise InstallError(f"{name} not found ({why})")
    return path


def make_target(root: Path | None, *, dry_run: bool) -> Target:
    if root is None:
        target = Target(Path("/"))
    else:
        if not root.is_dir():
            raise BadFlag(f"--root {root}: not a directory")
        target = Target(root.resolve())
    if target.live and not dry_run and os.geteuid() != 0:
        raise InstallError(
            "changing this system's units, groups and /etc needs root: run it with sudo "
            "(or look first with --dry-run)"
        )
    return target


def check_name(flag: str, name: str) -> None:
    if not ACCOUNT_NAME.fullmatch(name):
        raise BadFlag(
            f"{flag} {name!r}: not a user or group name (lowercase letters, digits, _ and -, "
            "starting with a letter or _, at most 32)"
        )


# ---------------------------------------------------------------------------------------------
# Steps: each knows how to say what it would do, do it, and say what it did.


@dataclass(frozen=True)
class Write:
    path: Path  # on the target system
    text: str
    what: str
    mode: int = 0o644

    def preview(self) -> Iterator[str]:
        yield f"would write {self.path} (mode {self.mode:04o}, {self.what}):"
        for line in self.text.splitlines():
            yield f"    {line}".rstrip()

    def apply(self, target: Target) -> str:
        dest = target.path(self.path)
        _makedirs(dest.parent)
        try:
            atomic_write(dest, self.text.encode(), self.mode)
        except OSError as exc:
            raise InstallError(f"cannot write {dest}: {exc.strerror}") from None
        return f"{self.path}: written ({self.what})"


@dataclass(frozen=True)
class Remove:
    path: Path
    what: str

    def preview(self) -> Iterator[str]:
        yield f"would remove {self.path} ({self.what})"

    def apply(self, target: Target) -> str:
        dest = target.path(self.path)
        try:
            dest.unlink(missing_ok=True)
            if dest.parent.name.endswith(".d") and not any(dest.parent.iterdir()):
                dest.parent.rmdir()  # the drop-in directory, once ours was its only file
        except OSError as exc:
            raise InstallError(f"cannot remove {dest}: {exc.strerror}") from None
        return f"{self.path}: removed ({self.what})"


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    done: str  # what it did, e.g. "group gpufleet: created"

    def preview(self) -> Iterator[str]:
        yield f"would run: {shlex.join(self.argv)}"

    def apply(self, target: Target) -> str:
        try:
            out = subprocess.run(
                self.argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise InstallError(
                f"{shlex.join(self.argv)}: no answer in {COMMAND_TIMEOUT:g} s"
            ) from None
        except OSError as exc:
            raise InstallError(f"{self.argv[0]}: {exc.strerror}") from None
        if out.returncode != 0:
            said = "; ".join(line for line in out.stderr.splitlines() if line.strip())
            raise InstallError(
                f"{shlex.join(self.argv)} failed (exit {out.returncode}): "
                f"{clip(said or out.stdout.strip(), 500)}"
            )
        return f"{self.done} ({shlex.join(self.argv)})"


@dataclass(frozen=True)
class Note:
    """Something already as wanted, or deliberately left alone: said, not done."""

    line: str

    def preview(self) -> Iterator[str]:
        yield self.line

    def apply(self, target: Target) -> str:
        return self.line


Step = Write | Remove | Run | Note


def _makedirs(path: Path) -> None:
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot create {path}: {exc.strerror}") from None


def changes(plan: list[Step]) -> int:
    return sum(not isinstance(step, Note) for step in plan)


def carry_out(
    plan: list[Step], target: Target, *, dry_run: bool, echo: Callable[[str], None]
) -> None:
    """Print the plan, or apply it step by step printing each result; a failing step stops
    the run with what was done already on screen (rerunning picks up from there)."""
    for step in plan:
        if dry_run:
            for line in step.preview():
                echo(line)
        else:
            echo(step.apply(target))
    n = changes(plan)
    if dry_run:
        echo(f"dry run: {n} change{'s' * (n != 1)} would be made" if n else "nothing would change")
    else:
        echo(f"{n} change{'s' * (n != 1)} made" if n else "nothing changed")


# ---------------------------------------------------------------------------------------------
# Planning


def _query(argv: list[str]) -> str:
    """A read-only systemctl question (is-enabled, is-active): its one-word answer."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{shlex.join(argv)}: {exc}") from None
    return out.stdout.strip()


def _current(target: Target, path: Path) -> tuple[str, int] | None:
    """The file's text and mode on the target, or None if it is not there."""
    real = target.path(path)
    try:
        return real.read_text(encoding="utf-8"), real.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {real}: {exc}") from None


def _write_if_changed(target: Target, step: Write) -> Step:
    if _current(target, step.path) == (step.text, step.mode):
        return Note(f"{step.path}: unchanged ({step.what})")
    return step


def dropin_text(program: Path, user: str | None, group: str) -> str:
    exec_path = str(program).replace("%", "%%")  # % starts a specifier in unit files
    if any(c.isspace() or c in "\"'\\" for c in exec_path):
        exec_path = '"' + exec_path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [
        "# Written by `gpufleet-agent install`, removed by `gpufleet-agent uninstall`: what this",
        "# node's install chose. The packaged unit beside it is installed as shipped.",
        f"# The socket's group is agent.socket_group in {DEFAULT_CONFIG_PATH}: {group}.",
        "[Service]",
        "# The program as installed here (pip may have put it in a virtual environment).",
        "ExecStart=",
        f"ExecStart={exec_path} serve",
    ]
    if user is not None:
        lines += [
            "# --user: the agent reads and serves as this user; restarts, reboots and scheduler",
            "# commands need root and will fail.",
            f"User={user}",
        ]
    return "\n".join(lines) + "\n"


def _config_steps(target: Target, group: str) -> Step:
    path = DEFAULT_CONFIG_PATH
    current = _current(target, path)
    if current is None:
        return Write(
            path, config_template(group), f"the commented defaults, socket_group = {group}"
        )
    cfg = parse_config(current[0].encode(), str(target.path(path)))
    have = cfg.agent.socket_group
    if have == group:
        return Note(f"{path}: kept (the operator's; its socket_group is {group})")
    if have is None:
        raise InstallError(
            f"{target.path(path)} sets no agent.socket_group, so members of {group} could not "
            f'connect: add socket_group = "{group}" under [agent] and rerun; nothing was changed'
        )
    raise InstallError(
        f"{target.path(path)} has socket_group = {have!r} but --group is {group!r}: edit the "
        f"file or pass --group {have}; nothing was changed"
    )


def plan_install(
    target: Target, user: str | None, group: str, program: Path | None = None
) -> list[Step]:
    check_name("--group", group)
    if user is not None:
        check_name("--user", user)
        if user == "root":
            user = None  # the unit's own User=root
    ours = program is None
    program = agent_program() if program is None else program
    check_program(target, program, ours=ours)
    plan: list[Step] = []

    existing = target.group(group)
    if existing is None:
        plan.append(
            Run(tuple(target.shadow("groupadd", "--system", group)), f"group {group}: created")
        )
    else:
        plan.append(Note(f"group {group}: already there"))

    if user is not None:
        gid = target.user_gid(user)
        if gid is None:
            argv = target.shadow(
                "useradd", "--system", "--user-group", "--groups", group, "--no-create-home",
                "--home-dir", "/var/lib/gpufleet", "--shell", "/usr/sbin/nologin", user,
            )  # fmt: skip
            plan.append(Run(tuple(argv), f"user {user}: created, in group {group}"))
        elif existing is not None and (gid == existing[0] or user in existing[1]):
            plan.append(Note(f"user {user}: already there, in group {group}"))
        else:  # the agent chowns its socket to the group, which a non-root user must be in
            argv = target.shadow("usermod", "--append", "--groups", group, user)
            plan.append(Run(tuple(argv), f"user {user}: added to group {group}"))

    unit_path = UNIT_DIR / UNIT
    dropin_path = UNIT_DIR / f"{UNIT}.d" / DROPIN
    unit_steps = [
        _write_if_changed(target, Write(unit_path, packaged_unit(), "the packaged unit")),
        _write_if_changed(
            target,
            Write(dropin_path, dropin_text(program, user, group), "this node's program and user"),
        ),
    ]
    plan += unit_steps
    plan.append(_config_steps(target, group))
    units_changed = any(isinstance(s, Write) for s in unit_steps)

    if target.booted and units_changed:
        plan.append(Run(tuple(target.systemctl("daemon-reload")), "systemd: reloaded"))
    if not units_changed and _query(target.systemctl("is-enabled", UNIT)) == "enabled":
        plan.append(Note(f"{UNIT}: already enabled"))
    else:  # enable again after a change: [Install] may have changed with the unit
        plan.append(Run(tuple(target.systemctl("enable", UNIT)), f"{UNIT}: enabled"))

    if not target.live:
        plan.append(Note(f"{UNIT}: not started (installed into {target.root}; it starts at boot)"))
    elif not target.booted:
        plan.append(Note(f"{UNIT}: not started (systemd is not running here; it starts at boot)"))
    elif _query(target.systemctl("is-active", UNIT)) != "active":
        plan.append(Run(tuple(target.systemctl("start", UNIT)), f"{UNIT}: started"))
    elif units_changed:  # restarting is the operator's call: one pool at a time, say
        plan.append(
            Note(f"{UNIT}: running; the new unit applies from its next restart (systemctl restart)")
        )
    else:
        plan.append(Note(f"{UNIT}: already running"))
    return plan


def _dropin_user(text: str) -> str | None:
    users = [line[5:].strip() for line in text.splitlines() if line.startswith("User=")]
    return users[-1] if users else None


def plan_uninstall(target: Target) -> list[Step]:
    unit_path = UNIT_DIR / UNIT
    dropin_path = UNIT_DIR / f"{UNIT}.d" / DROPIN
    plan: list[Step] = []
    unit = _current(target, unit_path)
    dropin = _current(target, dropin_path)

    enabled = _query(target.systemctl("is-enabled", UNIT)) == "enabled"
    active = target.booted and _query(target.systemctl("is-active", UNIT)) == "active"
    if enabled or active:
        now = ["--now"] if target.booted else []
        plan.append(
            Run(
                tuple(target.systemctl("disable", *now, UNIT)),
                f"{UNIT}: disabled{' and stopped' * bool(now)}",
            )
        )
    if dropin is not None:
        plan.append(Remove(dropin_path, "install's drop-in"))
    if unit is not None:
        plan.append(Remove(unit_path, "the unit"))
    if target.booted and (unit or dropin):
        plan.append(Run(tuple(target.systemctl("daemon-reload")), "systemd: reloaded"))
    if len(plan) == 0:
        plan.append(Note(f"{UNIT}: not installed"))

    plan += _kept(target, dropin[0] if dropin else None)
    return plan


def _kept(target: Target, dropin: str | None) -> Iterator[Step]:
    """What uninstall leaves, each said: an operator should not have to guess."""
    config_file = target.path(DEFAULT_CONFIG_PATH)
    cfg = AgentConfig()
    if config_file.exists():
        yield Note(f"{DEFAULT_CONFIG_PATH}: kept (the configuration)")
        # A broken file names no other state dir that we could know of: the default's stays.
        with contextlib.suppress(ConfigError, OSError):
            cfg = parse_config(config_file.read_bytes(), str(config_file), validate=False)
    state = Path(cfg.agent.state_dir)
    if target.path(state).exists():
        yield Note(f"{state}: kept (ops state and audit log)")
    if cfg.agent.socket_group and target.group(cfg.agent.socket_group) is not None:
        g = cfg.agent.socket_group
        yield Note(f"group {g}: kept (its members are the site's; groupdel {g} removes it)")
    user = _dropin_user(dropin) if dropin else None
    if user is not None and target.user_gid(user) is not None:
        yield Note(f"user {user}: kept (userdel {user} removes it)")
