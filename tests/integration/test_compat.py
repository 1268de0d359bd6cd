"""Mixed versions, as a fleet upgraded one pool at a time runs them: the previous protocol
minor's agent and console, taken from git history and run as real processes, against the
current console and agent, over a real sshd. Both ways: handshake, status, live samples,
drain and resume audited; what only the newer side knows is said clearly, not hung on. And a
major version apart is refused with the reason, both ways.

Which commit holds the previous minor is in ``tests/fixtures/protocol_versions.toml`` (one
line per minor); a bump of ``PROTOCOL_MINOR`` without its line there fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from agents.ops.store import AuditLog
from agents.protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    REQUEST_SPECS,
    Event,
    Frame,
    NodeState,
    Response,
    encode,
)
from console.ops.actions import restart_targets, run_action
from console.sources.delivery import REQUEST_SINCE
from console.sources.ssh.fleetlinks import FleetLinks
from tests.conftest import FIXTURES, REPO, AgentProc, extract_tar, skip_or_fail, until
from tests.fakes.simnode import Node
from tests.integration.sshd import Sshd
from tests.support.links import entry, options
from tests.support.status_cli import write_fleet

pytestmark = pytest.mark.integration

VERSIONS = FIXTURES / "protocol_versions.toml"
FAST = ("--backend", "sim", "--gpus", "2", "--interval", "0.2")
PREVIOUS = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR - 1}"
#: Where the protocol's version is written (``agents/protocol.py`` before it was a package).
VERSION_FILE = "agents/protocol/frames.py"
_LINE = re.compile(r"^PROTOCOL_(MAJOR|MINOR): Final = (\d+)", re.MULTILINE)


def last_commits() -> dict[str, str]:
    return dict(tomllib.loads(VERSIONS.read_text())["last_commit"])


def git(*args: str, check: bool = True) -> bytes:
    """git in this checkout, or a skip (a failure under CI) saying what is missing: the older
    code these tests run comes from the repository's history."""
    tool = shutil.which("git")
    if tool is None:
        skip_or_fail("git is not installed: the previous protocol minor's code comes from history")
        raise AssertionError("unreachable")
    out = subprocess.run([tool, "-C", str(REPO), *args], capture_output=True, timeout=60)
    if out.returncode != 0 and not check:
        return b""
    if out.returncode != 0:
        said = out.stderr.decode(errors="replace").strip()
        skip_or_fail(f"git {' '.join(args)}: {said} (a shallow clone, or no .git?)")
    return out.stdout


def version_at(commit: str) -> str:
    """MAJOR.MINOR as the protocol said it at ``commit`` (a module, later a package)."""
    old = "agents/protocol.py"
    path = old if git("cat-file", "-t", f"{commit}:{old}", check=False) else VERSION_FILE
    found = dict(_LINE.findall(git("show", f"{commit}:{path}").decode()))
    return f"{found['MAJOR']}.{found['MINOR']}"


def run_from(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ...`` with ``tree``'s packages, not this checkout's, first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=tree, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def console_args(sshd: Sshd, inventory: Path, config: Path) -> list[str]:
    """The options every console of this major takes (the connect wait is left at its
    default: its name changed in 1.4)."""
    return [
        *("--inventory", str(inventory), "--ssh-config", str(config)),
        *("--known-hosts", str(sshd.known_hosts), "--identity", str(sshd.client_key_path)),
    ]


def audit_ops(agent: AgentProc) -> list[tuple[str, str, str]]:
    """(op, who, result) for each line of the agent's audit log, read with today's code."""
    return [(e.op, e.who, e.result) for e in AuditLog(agent.state_dir).entries()]


# ---------------------------------------------------------------------------------------------
# The table


def test_the_previous_minor_is_in_the_table() -> None:
    assert PROTOCOL_MINOR > 0, "no earlier minor of this major to test against"
    assert PREVIOUS in last_commits(), (
        f"PROTOCOL_MINOR is {PROTOCOL_MINOR}: add the last commit that spoke {PREVIOUS} (the "
        f"parent of the commit that bumped it) to {VERSIONS.relative_to(REPO)}"
    )


def test_each_commit_in_the_table_is_the_last_of_its_minor() -> None:
    for version, commit in last_commits().items():
        assert version_at(commit) == version, f"{commit} speaks {version_at(commit)}, not {version}"
        after = git("rev-list", "--ancestry-path", "--reverse", f"{commit}..HEAD").split()
        if after:  # its child (on the way to HEAD) is the commit that left this minor
            child = after[0].decode()
            assert version_at(child) != version, (
                f"{commit} is not the last commit of {version}: {child} still speaks it"
            )


def test_every_request_says_which_minor_brought_it() -> None:
    """The console refuses to send a request to an agent older than the request: a new
    request without its minor in ``console.sources.delivery.REQUEST_SINCE`` would be sent to
    any agent."""
    assert set(REQUEST_SINCE) == set(REQUEST_SPECS)
    assert all(0 <= m <= PROTOCOL_MINOR for m in REQUEST_SINCE.values())


def test_no_frame_refuses_fields_it_does_not_know() -> None:
    """Today's code is tomorrow's older peer: frames, and every struct inside them, must
    ignore fields a newer minor adds (``forbid_unknown_fields`` would break that)."""
    seen: set[type] = set()

    def walk(kind: msgspec.inspect.Type) -> None:
        for t in _types(kind):
            if isinstance(t, msgspec.inspect.StructType) and t.cls not in seen:
                seen.add(t.cls)
                assert not t.forbid_unknown_fields, f"{t.cls.__name__} forbids unknown fields"
                for f in t.fields:
                    walk(f.type)

    walk(msgspec.inspect.type_info(Frame))
    assert {"Inventory", "NodeState", "GpuReading"} <= {c.__name__ for c in seen}


def _types(t: msgspec.inspect.Type) -> Iterator[msgspec.inspect.Type]:
    """``t`` and the types it is made of, down to (not into) structs."""
    yield t
    inner: list[msgspec.inspect.Type] = []
    if isinstance(t, msgspec.inspect.UnionType):
        inner = list(t.types)
    elif isinstance(t, msgspec.inspect.ListType | msgspec.inspect.DictType):
        inner = [t.item_type] if isinstance(t, msgspec.inspect.ListType) else [t.value_type]
    elif isinstance(t, msgspec.inspect.TupleType | msgspec.inspect.VarTupleType):
        inner = list(t.item_types) if isinstance(t, msgspec.inspect.TupleType) else [t.item_type]
    for i in inner:
        yield from _types(i)


# ---------------------------------------------------------------------------------------------
# The previous minor's code, from history


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous minor's ``agents`` and ``console``, as its last commit had them."""
    commit = last_commits().get(PREVIOUS)
    if commit is None:
        pytest.fail(
            f"{PREVIOUS} is not in {VERSIONS.name}: see test_the_previous_minor_is_in_the_table"
        )
    tree = tmp_path_factory.mktemp(f"protocol-{PREVIOUS}")
    data = git("archive", "--format=tar", commit, "agents", "console")
    extract_tar(data, tree)
    said = run_from(tree, "agents", "--version")
    assert said.returncode == 0, said.stderr
    return tree


def test_the_previous_decoder_reads_todays_frames_and_fields_yet_to_come(previous: Path) -> None:
    """The older side's own decoder, on what today's agent sends (fields it never heard of:
    the inventory's restart targets, a state's resume_after_boot) plus a field from the future
    on every frame: each decodes to its type, the unknown fields ignored."""
    node = Node("n1")
    state = NodeState(state="draining", reason="r", who="root", resume_after_boot="b0")
    sample, _ = node.tick()
    frames: list[Frame] = [
        node.inventory(state),
        sample,
        Event(seq=1, ts=1.0, kind="state", message="draining", state=state),
        Response(id=1, ok=True, result={"message": "ok"}),
    ]
    lines = []
    for frame in frames:
        doc = msgspec.json.decode(encode(frame))
        doc["added_in_a_later_minor"] = {"x": [1]}
        lines.append(json.dumps(doc))
    reader = (
        "import sys\nfrom agents.protocol import decode\n"
        "for line in sys.stdin: print(type(decode(line.encode())).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(previous)}
    out = subprocess.run(
        [sys.executable, "-c", reader], input="\n".join(lines), cwd=previous, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [type(f).__name__ for f in frames]


# ---------------------------------------------------------------------------------------------
# The previous minor's agent, today's console


async def test_todays_console_with_the_previous_agent(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], previous: Path
) -> None:
    agent = agent_factory(*FAST, name="old", tree=previous).start()
    node = entry(sshd, agent.socket)
    async with FleetLinks([node], options(sshd)) as links:
        view = links.fleet.nodes[node.name]
        await until(lambda: view.link == "live" and view.sample is not None, "the old agent live")
        assert view.agent is not None and view.agent.endswith(f"protocol {PREVIOUS}")
        assert view.inventory is not None and len(view.inventory.gpus) == 2
        assert view.state is not None and view.state.state == "schedulable"
        first = view.sample
        assert first is not None
        await until(
            lambda: view.sample is not None and view.sample.seq >= first.seq + 3, "live samples"
        )
        assert view.sample is not None and not view.sample.replay

        drained = await run_action(links, [node.name], "drain", {"reason": "mixed", "timeout": 0})
        assert [r.outcome for r in drained] == ["ok"], drained
        await until(lambda: view.state is not None and view.state.state == "drained", "drained")
        resumed = await run_action(links, [node.name], "resume", {"reason": "back"})
        assert [r.outcome for r in resumed] == ["ok"], resumed
        await until(lambda: view.state is not None and view.state.state == "schedulable", "back")
        answer = await links.request(node.name, "audit", {})
        assert answer.ok, answer
        entries = (answer.result or {})["entries"]
        assert [(e["op"], e["result"]) for e in entries] == [("drain", "ok"), ("resume", "ok")]

        # Restart is newer than this agent: nothing to offer, and asked anyway, a refusal
        # that says so, without sending it.
        assert restart_targets(links.fleet, [node.name]) == []
        [restart] = await run_action(
            links, [node.name], "restart", {"target": "agent", "reason": "x"}
        )
        assert restart.outcome == "refused"
        assert f"agent too old for restart (it speaks protocol {PREVIOUS}" in restart.message
        assert "upgrade gpufleet-agent" in restart.message
    assert [op for op, _, _ in audit_ops(agent)] == ["drain", "resume"], "restart never sent"


def test_todays_commands_with_the_previous_agent(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path, previous: Path
) -> None:
    agent = agent_factory(*FAST, name="old", tree=previous).start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": agent.socket})
    reach = console_args(sshd, inventory, config)

    status = run_from(REPO, "console", "status", "--json", *reach)
    assert status.returncode == 0, status.stderr
    [doc] = json.loads(status.stdout)
    assert (doc["link"], doc["state"], len(doc["gpus"])) == ("live", "schedulable", 2)

    check = run_from(REPO, "console", "inventory", "check", "--json", *reach)
    assert check.returncode == 0, check.stderr
    assert f"protocol {PREVIOUS}" in json.loads(check.stdout)[0]["detail"]

    restart = run_from(
        REPO, "console", "restart", "node1", "--target", "agent", "--reason", "x", "--yes",
        "--force", *reach,
    )  # fmt: skip
    assert restart.returncode == 1, restart.stdout + restart.stderr
    assert "Traceback" not in restart.stderr
    [line] = restart.stdout.splitlines()
    assert line.split()[:2] == ["node1", "refused"]
    assert f"agent too old for restart (it speaks protocol {PREVIOUS}" in line
    assert audit_ops(agent) == []


# ---------------------------------------------------------------------------------------------
# The previous minor's console, today's agent


def test_the_previous_console_with_todays_agent(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path, previous: Path
) -> None:
    agent = agent_factory(*FAST, name="new").start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": agent.socket})
    reach = console_args(sshd, inventory, config)

    status = run_from(previous, "console", "status", "--json", *reach)
    assert status.returncode == 0, status.stderr  # 0: the node answered with a live sample
    [doc] = json.loads(status.stdout)
    assert (doc["link"], doc["state"], len(doc["gpus"])) == ("live", "schedulable", 2)
    assert all(g["util"] is not None for g in doc["gpus"])

    drain = run_from(
        previous, "console", "drain", "node1", "--reason", "mixed", "--yes", "--force", *reach
    )
    assert drain.returncode == 0, drain.stdout + drain.stderr
    assert drain.stdout.split()[:2] == ["node1", "ok"]
    resume = run_from(previous, "console", "resume", "node1", "--yes", *reach)
    assert resume.returncode == 0, resume.stdout + resume.stderr

    audit = run_from(previous, "console", "audit", "node1", "--json", *reach)
    assert audit.returncode == 0, audit.stderr
    said = [(e["op"], e["who"], e["result"]) for e in json.loads(audit.stdout)]
    assert said == [("drain", "root", "ok"), ("resume", "root", "ok")]
    assert audit_ops(agent) == said

    after = run_from(previous, "console", "status", "--json", *reach)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)[0]["state"] == "schedulable"


# ---------------------------------------------------------------------------------------------
# A major apart


@pytest.fixture(scope="module")
def next_major(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Today's code with the major bumped: a peer from an incompatible future, whose console
    still reads this major's agents (as one built for the upgrade would), so that today's
    agent is the side that refuses."""
    tree = tmp_path_factory.mktemp("protocol-next-major")
    for package in ("agents", "console"):
        shutil.copytree(
            REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    proto = tree / VERSION_FILE
    text = proto.read_text()
    for old, new in (
        (r"^PROTOCOL_MAJOR: Final = \d+", f"PROTOCOL_MAJOR: Final = {PROTOCOL_MAJOR + 1}"),
        (r"if major != PROTOCOL_MAJOR:", "if major not in (PROTOCOL_MAJOR, PROTOCOL_MAJOR - 1):"),
    ):
        text, n = re.subn(old, new, text, flags=re.MULTILINE)
        assert n == 1, f"{old!r} is not in {VERSION_FILE} any more"
    proto.write_text(text)
    return tree


def test_a_major_apart_is_refused_with_the_reason_both_ways(
    sshd: Sshd, agent_factory: Callable[..., AgentProc], short_tmp: Path, next_major: Path
) -> None:
    future = agent_factory(*FAST, name="future", tree=next_major).start()
    today = agent_factory(*FAST, name="today").start()
    inventory, config = write_fleet(short_tmp, sshd, {"node1": future.socket})
    reach = console_args(sshd, inventory, config)
    out = run_from(REPO, "console", "status", "--json", *reach)
    assert out.returncode == 3, out.stdout + out.stderr
    [doc] = json.loads(out.stdout)
    assert doc["link"] == "protocol_mismatch"
    assert f"protocol {PROTOCOL_MAJOR + 1}.{PROTOCOL_MINOR}" in doc["link_reason"]
    assert "upgrade the older side" in doc["link_reason"]

    inventory, config = write_fleet(short_tmp, sshd, {"node1": today.socket})
    out = run_from(next_major, "console", "status", "--json", *reach)
    assert out.returncode == 3, out.stdout + out.stderr
    [doc] = json.loads(out.stdout)
    assert doc["link"] == "protocol_mismatch", "refused by the agent: a mismatch, not down"
    future_version = f"{PROTOCOL_MAJOR + 1}.{PROTOCOL_MINOR}"
    assert doc["link_reason"].startswith(f"agent: protocol {future_version} ")
    assert f"not compatible with {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}" in doc["link_reason"]
    assert "not compatible" in today.log()
