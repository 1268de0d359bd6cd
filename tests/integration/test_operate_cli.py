"""``gpufleet drain / resume / reassign / restart`` for scripts, end to end: the console
command, SSH (the demo's embedded server), the real agents (on simulated GPUs) and back."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.protocol import Sample
from agents.serve.client import AgentClient
from console.model.inventory import load_inventory
from tests.conftest import wait_for
from tests.support.demo import demo_process, gpufleet

pytestmark = pytest.mark.integration
TRICKY = 'fan "A"; $(reboot) `id` ünï'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Eight quiet nodes: demo01-04 in pool train, demo05-08 in pool infer."""
    with demo_process(tmp_path_factory.mktemp("ops"), nodes=8, faults=False) as (_, inventory):
        yield inventory


def states(inventory: Path, nodes: str) -> dict[str, tuple[str, str | None]]:
    done = gpufleet(inventory, "status", nodes, "--json")
    return {n["name"]: (n["state"], n["reason"]) for n in json.loads(done.stdout)}


def test_without_a_terminal_nothing_is_done_without_yes(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo05", "--reason", "r")
    assert done.returncode == 2
    assert "drain 1 node: demo05" in done.stderr
    assert "needs --yes when there is no terminal" in done.stderr
    assert states(fleet, "demo05") == {"demo05": ("schedulable", None)}


def test_dry_run_sends_nothing_and_says_it_in_words(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo06", "--reason", "r", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    [line] = json.loads(done.stdout)
    assert line == {
        "name": "demo06",
        "outcome": "dry_run",
        "message": "would drain demo06: reason 'r'",
    }
    assert states(fleet, "demo06") == {"demo06": ("schedulable", None)}
    moved = gpufleet(fleet, "reassign", "demo06", "--pool", "train", "--reason", "r", "--dry-run")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.split(None, 2)[1:] == [
        "dry_run", "would move demo06 from pool infer (the inventory's) to train: reason 'r'\n"
    ]  # fmt: skip


def test_dry_run_refuses_what_the_real_run_would(fleet: Path) -> None:
    """A simulated node's restart targets (its Inventory frame) exclude the agent: refused,
    dry run or not, before anything is sent or asked."""
    for extra in (["--dry-run"], ["--yes"]):
        done = gpufleet(fleet, "restart", "demo07", "--target", "agent", "--reason", "r", *extra)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stdout == ""
        assert (
            "agent is not a restart target on demo07 (allowed there: gpu[0-1]): nothing sent"
        ) in done.stderr
        node = gpufleet(fleet, "restart", "demo07", "--target", "node", "--reason", "r", *extra)
        assert node.returncode == 2
        assert "node is not a restart target on demo07" in node.stderr
    inject(fleet, "demo07", "busy")
    reset = gpufleet(fleet, "restart", "demo07", "--target", "gpu0", "--reason", "r", "--yes")
    assert reset.returncode == 2, reset.stdout + reset.stderr
    assert "gpu0 is busy on demo07: end its work (or drain the node) first: nothing sent" in (
        reset.stderr
    )
    audit = json.loads(gpufleet(fleet, "audit", "demo07", "--json").stdout)
    assert [e for e in audit if e["op"] == "restart"] == [], "nothing reached the agent"


def test_drain_resume_with_a_reason_kept_literally(fleet: Path) -> None:
    done = gpufleet(fleet, "drain", "demo07", "--reason", TRICKY, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    [line] = json.loads(done.stdout)
    assert line["outcome"] == "ok"
    assert line["message"].startswith(("draining", "drained"))
    state, reason = states(fleet, "demo07")["demo07"]
    assert (state in ("draining", "drained"), reason) == (True, TRICKY)
    again = gpufleet(fleet, "drain", "demo07", "--reason", "other", "--yes", "--json")
    assert json.loads(again.stdout)[0]["message"] == f"already {state}"
    back = gpufleet(fleet, "resume", "demo07", "--yes")
    assert back.returncode == 0, back.stderr
    assert "schedulable" in back.stdout
    assert states(fleet, "demo07")["demo07"][0] == "schedulable"


def test_the_guard_refuses_a_pool_emptied_and_force_passes(fleet: Path) -> None:
    refused = gpufleet(fleet, "drain", "pool=train", "--reason", "r", "--yes")
    assert refused.returncode == 2
    assert "pool train: 4 of 4 nodes would be out of service" in refused.stderr
    assert "refused without --force" in refused.stderr
    assert {s for s, _ in states(fleet, "pool=train").values()} == {"schedulable"}
    forced = gpufleet(fleet, "drain", "pool=train", "--reason", "r", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert {s for s, _ in states(fleet, "pool=train").values()} <= {"draining", "drained"}
    assert gpufleet(fleet, "resume", "pool=train", "--yes").returncode == 0


def test_a_reassigned_node_is_in_its_new_pool_everywhere(fleet: Path) -> None:
    """The agent's pool wins over the inventory's: status, its JSON (saying where the pool
    came from) and the pool= term show the move; the line says the pool the node was in. A
    pool no one knows is refused without --force."""
    typo = gpufleet(fleet, "reassign", "demo08", "--pool", "spare", "--reason", "r", "--yes")
    assert typo.returncode == 2
    assert "pool spare is in neither the inventory nor any agent's state (known: infer, " in (
        typo.stderr
    )
    assert "refused without --force" in typo.stderr
    moved = gpufleet(
        fleet, "reassign", "demo08", "--pool", "spare", "--reason", "r", "--yes", "--force"
    )
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.split(None, 2)[1:] == ["ok", "pool infer (the inventory's) -> spare\n"]
    try:
        [doc] = json.loads(gpufleet(fleet, "status", "demo08", "--json").stdout)
        assert (doc["pool"], doc["pool_source"], doc["inventory_pool"]) == (
            "spare",
            "agent",
            "infer",
        )
        spare = gpufleet(fleet, "status", "pool=spare")
        assert [line.split()[:2] for line in spare.stdout.splitlines()[1:]] == [["demo08", "spare"]]
        infer = json.loads(gpufleet(fleet, "status", "pool=infer", "--json").stdout)
        assert "demo08" not in {n["name"] for n in infer}
    finally:
        back = gpufleet(fleet, "reassign", "demo08", "--pool", "infer", "--reason", "r", "--yes")
    assert back.returncode == 0, back.stderr
    assert back.stdout.split(None, 2)[1:] == ["ok", "pool spare (the agent's) -> infer\n"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["drain", "demo01"], "Missing option '--reason'"),
        (["drain", "demo01", "--reason", " ", "--yes"], "drain needs a reason"),
        (["drain", "gpu[01-02]", "--reason", "r", "--yes"], "not in the inventory"),
        (["drain", "--reason", "r", "--yes"], "name the nodes"),
        (["reassign", "demo01", "--pool", "a b", "--reason", "r", "--yes"], "pool must be"),
        (["drain", "demo01", "--reason", "\x1b[2J", "--yes"], "control or format character"),
        # A wait that is no number of seconds: -1 and 0 tried no node, nan or inf never ends.
        (["status", "--connect-wait", "nan"], "'--connect-wait': nan is not a wait"),
        (
            ["drain", "demo01", "--reason", "r", "--yes", "--connect-wait", "-1"],
            "'--connect-wait': -1.0 is not a wait",
        ),
        (["audit", "--connect-wait", "0"], "'--connect-wait': 0.0 is not a wait"),
        (["inventory", "check", "--connect-wait", "inf"], "'--connect-wait': inf is not a wait"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(fleet: Path, args: list[str], says: str) -> None:
    done = gpufleet(fleet, *args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_the_fleet_audit_merges_the_nodes_logs(fleet: Path) -> None:
    assert gpufleet(fleet, "drain", "demo06", "--reason", "audit me", "--yes").returncode == 0
    assert gpufleet(fleet, "resume", "demo06", "--yes").returncode == 0
    done = gpufleet(fleet, "audit", "demo0[5-6]", "--since", "1h")
    assert done.returncode == 0, done.stderr
    mine = [line.split() for line in done.stdout.splitlines() if line.startswith("demo06")]
    # NODE, TIME (UTC) (a date and a time), WHO, OP, RESULT, WHY
    assert ["drain", "ok", "audit"] in [cells[4:7] for cells in mine]
    assert ["resume", "ok"] in [cells[4:6] for cells in mine]
    doc = json.loads(gpufleet(fleet, "audit", "demo06", "--json").stdout)
    assert {"node": "demo06", "op": "drain"}.items() <= doc[-2].items()
    assert [e["ts"] for e in doc] == sorted(e["ts"] for e in doc)
    bad = gpufleet(fleet, "audit", "demo06", "--since", "soon")
    assert bad.returncode == 2
    assert "--since 'soon'" in bad.stderr


def test_a_node_that_cannot_be_reached_says_why_on_every_verb(fleet: Path, tmp_path: Path) -> None:
    """A node whose sshd refuses: the drain is not sent and its line says why (the words the
    dry run and ``status`` give), as does the audit; not only that it is unreachable."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: the port refuses
    port = closed.getsockname()[1]
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(
        fleet.read_text()
        + f'\n[[group]]\nname = "gone"\npool = "infer"\nnodes = "gone01"\nport = {port}\n'
    )
    try:
        why = f"unreachable: connection refused by 127.0.0.1 on port {port}"
        done = gpufleet(inventory, "drain", "gone01", "--reason", "r", "--yes", "--json")
        assert done.returncode == 3, done.stderr
        [line] = json.loads(done.stdout)
        assert line["outcome"] == "not_delivered"
        assert f"not sent, the node is {why}" in line["message"]
        audit = gpufleet(inventory, "audit", "gone01")
        assert audit.returncode == 3, audit.stderr
        assert f"no audit log from gone01: not sent, the node is {why}" in audit.stderr
    finally:
        closed.close()


def test_a_selector_that_matches_no_node_says_so_in_every_command(fleet: Path) -> None:
    """As `status` says it: a verb sends nothing (exit 2) and `audit` shows nothing (exit 0),
    each saying that the selector matched no node, in the same words; audit was silent."""
    term = "link=hostkey_changed"  # known, and no node of this fleet is in it
    verb = gpufleet(fleet, "drain", term, "--reason", "r", "--yes")
    assert verb.returncode == 2, verb.stderr
    assert f"gpufleet: error: no node matches '{term}': nothing sent" in verb.stderr
    audit = gpufleet(fleet, "audit", term)
    assert (audit.returncode, audit.stdout) == (0, ""), audit.stderr
    assert f"gpufleet: no node matches '{term}'" in audit.stderr


def test_an_audit_with_no_entries_says_so(fleet: Path) -> None:
    """An audit of nodes nothing was done on printed nothing at all, exit 0: an empty answer
    reads as a command that did not run."""
    # the fleet is shared by this module's tests: "since" a date to come, nothing was done
    done = gpufleet(fleet, "audit", "demo0[3-4]", "--since", "2099-01-01")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    said = "no audit entry on demo[03-04] since 2099-01-01: nothing was done there"
    assert said in done.stderr, done.stderr
    doc = gpufleet(fleet, "audit", "demo04", "--since", "2099-01-01", "--json").stdout
    assert doc.strip() == "[]"
    none = gpufleet(fleet, "audit", "demo04", "state=draining")  # asked of no node
    assert none.returncode == 0
    assert "gpufleet: no node matches 'demo04 state=draining'" in none.stderr, none.stderr
    assert "no audit entry" not in none.stderr, none.stderr


def test_the_guard_weighs_the_pool_a_reassigned_node_is_in_now(fleet: Path) -> None:
    """demo08, moved from infer to train, is drained as a member of train: the guard reaches
    train's nodes too, and counts demo01, drained there already."""
    assert gpufleet(fleet, "drain", "demo01", "--reason", "r", "--yes").returncode == 0
    move = gpufleet(fleet, "reassign", "demo08", "--pool", "train", "--reason", "r", "--yes")
    try:
        assert move.returncode == 0, move.stderr
        done = gpufleet(fleet, "drain", "demo08", "--reason", "r", "--dry-run")
        assert done.returncode == 2, done.stdout + done.stderr
        assert (
            "pool train: 2 of 5 nodes would be out of service (more than 25%): drain demo08; "
            "already out: demo01 drain"
        ) in done.stderr
    finally:
        back = gpufleet(fleet, "reassign", "demo08", "--pool", "infer", "--reason", "r", "--yes")
        assert back.returncode == 0, back.stderr
        assert gpufleet(fleet, "resume", "demo01", "--yes").returncode == 0


def inject(inventory: Path, node: str, fault: str) -> None:
    """Make a demo node's GPUs busy or idle, through its agent's own request (the simulator
    stands in for a GPU here), and wait for a sample that shows it: the agent judges its
    GPUs by its latest sample."""
    [entry] = [e for e in load_inventory(inventory).nodes if e.name == node]
    with AgentClient(entry.socket, stream=False) as client:
        for gpu in (0, 1):
            assert client.request("sim_inject", fault=fault, gpu=gpu).ok
    with AgentClient(entry.socket, history=False) as watcher:

        def shown() -> bool:
            frame = watcher.recv()
            if not isinstance(frame, Sample):
                return False
            utils = [frame.gpus[gpu].util_gpu or 0 for gpu in (0, 1)]
            return all(u >= 90 for u in utils) if fault == "busy" else not any(utils)

        wait_for(shown, f"{node}'s GPUs {fault} in a sample", 20)


def test_drain_wait_returns_when_the_node_is_drained(fleet: Path) -> None:
    inject(fleet, "demo05", "idle")
    done = gpufleet(
        fleet, "drain", "demo05", "--reason", "wait for me", "--wait", "--timeout", "30", "--yes"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("demo05  ok")
    assert done.stdout.rstrip().endswith("; drained")
    assert states(fleet, "demo05")["demo05"] == ("drained", "wait for me")
    assert gpufleet(fleet, "resume", "demo05", "--yes").returncode == 0


def test_drain_wait_reports_a_node_still_working_as_a_timeout(fleet: Path) -> None:
    """A node whose GPUs still work is never called drained: past --timeout it is still
    draining, reported as a timeout, exit 1."""
    inject(fleet, "demo06", "busy")
    done = gpufleet(
        fleet, "drain", "demo06", "--reason", "busy", "--wait", "--timeout", "2", "--yes"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.split(None, 2)[1:] == ["timeout", "still draining after 2 s\n"]
    [doc] = json.loads(gpufleet(fleet, "status", "demo06", "--json").stdout)
    assert doc["state"] == "draining"
    assert max(g["util"] for g in doc["gpus"]) >= 90
    assert gpufleet(fleet, "resume", "demo06", "--yes").returncode == 0


def test_ctrl_c_says_what_was_sent_and_what_is_known_of_each_node(
    fleet: Path, tmp_path: Path
) -> None:
    """Interrupted while --wait waits (the drains were sent and answered): each node's line,
    exit 130, never a bare "Aborted!"."""
    for node in ("demo02", "demo03"):
        inject(fleet, node, "busy")
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console", "drain", "demo0[2-3]", "--reason", "r", "--wait",
             "--yes", "--force", "--inventory", str(fleet)],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            said = "waiting for 2 nodes to be drained"
            wait_for(lambda: said in err.read_text() or proc.poll() is not None, said, 60)
            assert proc.poll() is None, err.read_text()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
    try:
        assert proc.returncode == 130, out + err.read_text()
        assert "Aborted!" not in err.read_text()
        assert "interrupted: drain sent to 2 of 2 nodes" in err.read_text()
        lines = [line.split(None, 2) for line in out.splitlines()]
        assert [(n, o) for n, o, _ in lines] == [("demo02", "ok"), ("demo03", "ok")]
        assert all(m.endswith("; draining when interrupted") for _, _, m in lines), lines
        assert {s for s, _ in states(fleet, "demo0[2-3]").values()} == {"draining"}
    finally:
        assert gpufleet(fleet, "resume", "demo0[2-3]", "--yes").returncode == 0


def on_a_terminal(inventory: Path, typed: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal for its input, ``typed`` ahead."""
    main, side = pty.openpty()
    try:
        os.write(main, typed)
        return subprocess.run(
            [sys.executable, "-m", "console", *args, "--inventory", str(inventory)],
            stdin=side, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        os.close(side)
        os.close(main)


def test_a_terminal_is_asked_only_after_every_check(fleet: Path) -> None:
    """On a terminal the guard refuses before the question: an operator is never asked
    "are you sure?" for an action that is then refused. (A "y" is typed ahead: asked, it
    would be taken.)"""
    done = on_a_terminal(fleet, b"y\n", "drain", "pool=train", "--reason", "r")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pool train: 4 of 4 nodes would be out of service" in done.stderr
    assert "?" not in done.stderr, "asked before refusing"
    assert {s for s, _ in states(fleet, "pool=train").values()} == {"schedulable"}
    no = on_a_terminal(fleet, b"n\n", "drain", "demo01", "--reason", "r")
    assert no.returncode == 2, no.stdout + no.stderr
    assert "Drain 1 node (demo01)? [y/N]: " in no.stderr
    assert "not confirmed; nothing done" in no.stderr
    yes = on_a_terminal(fleet, b"y\n", "resume", "demo01")
    assert yes.returncode == 0, yes.stdout + yes.stderr
    assert "Resume 1 node (demo01)? [y/N]: " in yes.stderr
    assert yes.stdout.split()[:3] == ["demo01", "ok", "already"]
    assert states(fleet, "demo01")["demo01"][0] == "schedulable"
