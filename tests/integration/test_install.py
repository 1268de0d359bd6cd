"""``gpufleet-agent install`` / ``uninstall`` into a temporary root, with the real tools:
systemctl --root, groupadd/useradd --prefix and systemd-analyze verify."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agents.cli import main
from agents.install import DEFAULT_GROUP, config_template, packaged_unit
from tests.conftest import REPO, agent_command, skip_or_fail, system_tool

pytestmark = pytest.mark.integration

UNIT = Path("etc/systemd/system/gpufleet-agent.service")
DROPIN = Path("etc/systemd/system/gpufleet-agent.service.d/10-install.conf")
CONFIG = Path("etc/gpufleet/agent.toml")
#: The agent program as the installed system has it: in a system path the unit can reach.
PROGRAM = Path("/opt/gpufleet/venv/bin/gpufleet-agent")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``install --root`` with the program the root has (this machine's venv is not in it)."""
    return agent("install", "--root", str(root), "--program", str(PROGRAM), *args)


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root``: its kind, mode and contents (or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            out[str(path.relative_to(root))] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            out[str(path.relative_to(root))] = ("dir", st.st_mode, "")
        else:
            out[str(path.relative_to(root))] = ("file", st.st_mode, path.read_text())
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A bare system root: accounts files with root alone, nothing of systemd's."""
    if os.geteuid() != 0:
        skip_or_fail("groupadd/useradd --prefix need root, even on a temporary root")
    system_tool("systemctl")
    system_tool("groupadd")
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\n")
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/gshadow").write_text("root:*::\n")
    put_program(r, PROGRAM, "#!/usr/bin/python3")
    # The host's targets, for systemd-analyze verify --root (multi-user.target, ...).
    systemd = Path("/usr/lib/systemd/system")
    if systemd.is_dir():
        shutil.copytree(systemd, r / "usr/lib/systemd/system", symlinks=True)
    return r


def put_program(root: Path, program: Path, shebang: str) -> None:
    real = root / program.relative_to("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text(f"{shebang}\nfrom agents.cli import main\nmain()\n")
    real.chmod(0o755)


def is_enabled(root: Path) -> str:
    out = subprocess.run(
        ["systemctl", f"--root={root}", "is-enabled", "gpufleet-agent.service"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


def verify(root: Path) -> str:
    """systemd-analyze verify on the installed unit with its drop-in, inside the root (so
    that the program it checks for is the root's). verify only warns on errors, so its whole
    output is returned."""
    tool = system_tool("systemd-analyze")
    out = subprocess.run(
        [tool, "verify", f"--root={root}", f"/{UNIT}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"{out.stdout}{out.stderr}".strip() + ("" if out.returncode == 0 else " (exit != 0)")


def group_line(root: Path, name: str) -> str | None:
    lines = (root / "etc/group").read_text().splitlines()
    return next((line for line in lines if line.startswith(f"{name}:")), None)


# ---------------------------------------------------------------------------------------------


def test_dry_run_prints_files_and_commands_and_changes_nothing(root: Path) -> None:
    before = snapshot(root)
    out = install(root, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert snapshot(root) == before
    text = out.stdout
    assert "would run: " in text and "groupadd --prefix" in text and "--system gpufleet" in text
    assert f"--root={root} enable gpufleet-agent.service" in text
    for path, what in (
        ("/etc/systemd/system/gpufleet-agent.service", packaged_unit()),
        ("/etc/systemd/system/gpufleet-agent.service.d/10-install.conf", "ExecStart="),
        ("/etc/gpufleet/agent.toml", config_template()),
    ):
        assert f"would write {path} (mode 0644" in text
        first = next(line for line in what.splitlines() if line.strip())
        assert f"    {first}" in text  # the contents, indented under the path
    # The contents in full: every line of the template appears, indented.
    for line in config_template().splitlines():
        assert f"    {line}".rstrip() in text.splitlines()
    assert text.rstrip().endswith("dry run: 5 changes would be made")


def test_install_into_a_root_is_verified_enabled_and_idempotent(root: Path) -> None:
    out = install(root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("group gpufleet: created (")
    assert "/etc/systemd/system/gpufleet-agent.service: written (the packaged unit)" in lines
    assert lines[-1] == "5 changes made"

    assert (root / UNIT).read_text() == packaged_unit()  # installed as shipped
    dropin = (root / DROPIN).read_text()
    assert f"ExecStart={PROGRAM} serve" in dropin
    assert "User=" not in dropin  # the unit's own User=root
    assert (root / CONFIG).read_text() == config_template()
    assert group_line(root, DEFAULT_GROUP) is not None
    assert is_enabled(root) == "enabled"
    assert verify(root) == ""

    before = snapshot(root)
    again = install(root)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before
    assert again.stdout.splitlines()[-1] == "nothing changed"
    assert "written" not in again.stdout and "created" not in again.stdout
    dry = install(root, "--dry-run")
    assert "would" not in dry.stdout.replace("nothing would change", "")


def test_install_with_a_user_creates_it_in_the_socket_group(root: Path) -> None:
    out = install(root, "--user", "gfagent", "--group", "gpuview")
    assert out.returncode == 0, out.stderr
    assert "user gfagent: created, in group gpuview" in out.stdout
    passwd = (root / "etc/passwd").read_text()
    assert "gfagent:" in passwd and "/usr/sbin/nologin" in passwd
    line = group_line(root, "gpuview")
    assert line is not None and line.endswith(":gfagent")
    assert "User=gfagent" in (root / DROPIN).read_text()
    assert 'socket_group = "gpuview"' in (root / CONFIG).read_text()
    assert verify(root) == ""
    with pytest.raises(KeyError):
        pwd.getpwnam("gfagent")  # the host's own accounts are untouched

    again = install(root, "--user", "gfagent", "--group", "gpuview")
    assert "user gfagent: already there, in group gpuview" in again.stdout
    assert again.stdout.splitlines()[-1] == "nothing changed"


def test_an_existing_user_is_added_to_the_socket_group(root: Path) -> None:
    with (root / "etc/passwd").open("a") as f:
        f.write("svc:x:900:900::/nonexistent:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as f:
        f.write("svc:x:900:\n")
    with (root / "etc/shadow").open("a") as f:
        f.write("svc:!:19000::::::\n")
    with (root / "etc/gshadow").open("a") as f:
        f.write("svc:!::\n")
    out = install(root, "--user", "svc")
    assert out.returncode == 0, out.stderr
    assert "user svc: added to group gpufleet" in out.stdout
    line = group_line(root, "gpufleet")
    assert line is not None and line.endswith(":svc")


def test_the_operators_config_is_kept(root: Path) -> None:
    mine = '[agent]\nsocket_group = "gpufleet"\ninterval = 2.0   # mine\n'
    (root / "etc/gpufleet").mkdir(parents=True)
    (root / CONFIG).write_text(mine)
    out = install(root)
    assert out.returncode == 0, out.stderr
    assert (root / CONFIG).read_text() == mine
    assert "/etc/gpufleet/agent.toml: kept (the operator's; its socket_group is gpufleet)" in (
        out.stdout
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[agent]\nsocket_group = "wheel"\n', "has socket_group = 'wheel' but --group is"),
        ("[agent]\ninterval = 2.0\n", "sets no agent.socket_group"),
    ],
)
def test_a_config_naming_another_group_is_refused_before_any_change(
    root: Path, config: str, message: str
) -> None:
    (root / "etc/gpufleet").mkdir(parents=True)
    (root / CONFIG).write_text(config)
    before = snapshot(root)
    out = install(root)
    assert out.returncode == 1
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert message in out.stderr and "nothing was changed" in out.stderr
    assert snapshot(root) == before


def test_uninstall_removes_the_unit_and_keeps_state_audit_and_config(root: Path) -> None:
    assert install(root, "--user", "gfagent").returncode == 0
    state = root / "var/lib/gpufleet"
    state.mkdir(parents=True)
    (state / "audit.jsonl").write_text('{"op":"drain"}\n')
    (state / "state.json").write_text("{}\n")
    (root / CONFIG).write_text((root / CONFIG).read_text() + "# edited\n")
    config = (root / CONFIG).read_text()

    dry = agent("uninstall", "--root", str(root), "--dry-run")
    assert "would remove /etc/systemd/system/gpufleet-agent.service (the unit)" in dry.stdout
    assert is_enabled(root) == "enabled"

    out = agent("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert not (root / UNIT).exists()
    assert not (root / DROPIN).parent.exists()  # the drop-in directory held only ours
    assert is_enabled(root) != "enabled"
    assert not list((root / "etc/systemd/system").rglob("*.service"))  # no wants/ link left
    assert (root / CONFIG).read_text() == config
    assert (state / "audit.jsonl").read_text() == '{"op":"drain"}\n'
    assert (state / "state.json").exists()
    said = out.stdout.splitlines()
    for kept in (
        "/etc/gpufleet/agent.toml: kept (the configuration)",
        "/var/lib/gpufleet: kept (ops state and audit log)",
        "group gpufleet: kept (its members are the site's; groupdel gpufleet removes it)",
        "user gfagent: kept (userdel gfagent removes it)",
    ):
        assert kept in said
    assert said[-1] == "3 changes made"

    again = agent("uninstall", "--root", str(root))
    assert again.returncode == 0
    assert "gpufleet-agent.service: not installed" in again.stdout
    assert again.stdout.splitlines()[-1] == "nothing changed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "Gpu Fleet"], "--group 'Gpu Fleet': not a user or group name"),
        (["--user", "9-lives;"], "--user '9-lives;': not a user or group name"),
        (["--group", "x" * 33], "not a user or group name"),
        (["--root", "/nonexistent/root"], "--root /nonexistent/root: not a directory"),
        (["--root", "/etc/hostname"], "--root /etc/hostname: not a directory"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    if "--root" not in args:
        args = [*args, "--root", str(tmp_path)]
    out = agent("install", *args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("gpufleet-agent: error: ")
    assert message in out.stderr
    assert list(tmp_path.iterdir()) == []


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """``fn`` in a forked child running as nobody; its result comes back as JSON. What it
    imports must be imported already: nobody cannot read this interpreter's library."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_without_root_on_the_live_system_it_is_one_line() -> None:
    if os.geteuid() != 0:
        got = CliRunner().invoke(main, ["install"])
        result: dict[str, Any] = {"code": got.exit_code, "out": got.stdout, "err": got.stderr}
    else:
        system_tool("systemctl")

        def run() -> dict[str, Any]:
            got = CliRunner().invoke(main, ["install"])
            return {"code": got.exit_code, "out": got.stdout, "err": got.stderr}

        result = _as_nobody(run)
    assert result["code"] == 1
    assert result["out"] == ""
    assert result["err"].count("\n") == 1
    assert "needs root: run it with sudo" in result["err"]


# -- a program the unit's sandbox would hide ---------------------------------------------------


@pytest.mark.parametrize(
    ("program", "shebang", "link", "said"),
    [
        ("/home/alice/gpufleet/.venv/bin/gpufleet-agent", "#!/usr/bin/python3", None,
         "the agent program, /home/alice/gpufleet/.venv/bin/gpufleet-agent, is under /home, "
         "which the unit hides from the agent (ProtectHome=yes)"),
        ("/tmp/venv/bin/gpufleet-agent", "#!/usr/bin/python3", None,
         "is under /tmp, which the unit hides from the agent (PrivateTmp=yes)"),
        ("/var/tmp/venv/bin/gpufleet-agent", "#!/usr/bin/python3", None,
         "is under /var/tmp, which the unit hides from the agent (PrivateTmp=yes)"),
        ("/opt/gf/bin/gpufleet-agent", "#!/root/.pyenv/versions/3.11.7/bin/python3", None,
         "the interpreter of /opt/gf/bin/gpufleet-agent, /root/.pyenv/versions/3.11.7/bin/"
         "python3, is under /root"),
        # A venv in /opt whose python is a link to a pyenv Python under /root.
        ("/opt/gf/bin/gpufleet-agent", "#!/opt/gf/bin/python3",
         ("/opt/gf/bin/python3", "../../../root/.pyenv/versions/3.11.7/bin/python3"),
         "the interpreter of /opt/gf/bin/gpufleet-agent, /root/.pyenv/versions/3.11.7/bin/"
         "python3, is under /root, which the unit hides from the agent (ProtectHome=yes)"),
    ],
)  # fmt: skip
def test_a_program_the_unit_would_hide_is_refused_before_any_change(
    root: Path, program: str, shebang: str, link: tuple[str, str] | None, said: str
) -> None:
    put_program(root, Path(program), shebang)
    if link is not None:
        interpreter = root / "root/.pyenv/versions/3.11.7/bin/python3"
        interpreter.parent.mkdir(parents=True)
        interpreter.write_text("")
        interpreter.chmod(0o755)
        (root / link[0].lstrip("/")).symlink_to(link[1])
    before = snapshot(root)
    for dry in ([], ["--dry-run"]):  # the dry run says what the real run would: no
        out = agent("install", "--root", str(root), "--program", program, *dry)
        assert out.returncode == 1, out
        assert out.stdout == ""
        assert len(out.stderr.splitlines()) == 1, out.stderr
        assert said in out.stderr
        assert "install gpufleet outside /home, /root, /run/user, /tmp, /var/tmp" in out.stderr
        assert out.stderr.rstrip().endswith("nothing was changed")
    assert snapshot(root) == before


def test_a_program_the_root_does_not_have_is_refused(root: Path) -> None:
    before = snapshot(root)
    out = agent("install", "--root", str(root))  # this installation's: not in the root
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "(this installation's gpufleet-agent): no such executable in" in out.stderr
    assert "pass --program" in out.stderr
    assert snapshot(root) == before


def test_installing_from_a_venv_under_tmp_is_refused(tmp_path: Path) -> None:
    """What a new user does: a virtual environment in /tmp (or a clone under /home), then
    install. The unit's PrivateTmp=yes would hide the program: refused, on the live system."""
    if os.geteuid() != 0:
        skip_or_fail("install on the live system needs root")
    system_tool("systemctl")
    venv = Path(tempfile.mkdtemp(prefix="gpufleet-venv-", dir="/tmp"))
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
        )
        put_program(Path("/"), venv / "bin" / "gpufleet-agent", f"#!{venv}/bin/python")
        out = subprocess.run(
            [venv / "bin" / "python", "-m", "agents", "install", "--dry-run"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        shutil.rmtree(venv)
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr.splitlines() == [out.stderr.rstrip()]
    assert f"the agent program, {venv}/bin/gpufleet-agent, is under /tmp" in out.stderr
    assert "(PrivateTmp=yes)" in out.stderr
