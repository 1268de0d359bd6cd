"""restart on a node: only what the node's allowlist names, each target under its own rule
(a node only when drained, a GPU only when idle), run as an argv with a deadline, audited.

systemctl and nvidia-smi are recording stand-ins (tests/fakes/tools.py): systemd is not PID 1
here, there is no GPU, and a test must never reboot this machine. They are real executables
the agent runs exactly as it would run the real tools.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agents.config import RestartSection
from agents.ops.store import StateStore
from agents.protocol import REQUEST_SPECS, NodeState
from tests.conftest import until
from tests.fakes.opsnode import TRICKY, VIC, Node
from tests.fakes.tools import calls, recorder


def allowlist(tools: Path, *, code: int = 0, stderr: str = "", **kw: object) -> RestartSection:
    tools.mkdir(exist_ok=True)
    systemctl = recorder(tools, "systemctl", code=code, stderr=stderr)
    smi = recorder(tools, "nvidia-smi", code=code, stderr=stderr)
    return RestartSection(
        systemctl=str(systemctl),
        nvidia_smi=str(smi),
        timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_target_outside_the_allowlist_is_refused_and_audited(tmp_path: Path) -> None:
    r = allowlist(tmp_path / "bin", units=["slurmd.service"])
    node = Node(tmp_path, restart=r)
    for target in ("sshd.service", "gpu7", "node;reboot"):
        answer = await node.ask("restart", target=target, reason="try")
        assert not answer.ok
        assert answer.code in ("unknown_target", "bad_args"), answer
    refused = await node.ask("restart", target="sshd.service", reason="try")
    assert refused.error == (
        "sshd.service is not a restart target on n1 "
        "(allowed: agent, node, gpu0, gpu1, slurmd.service)"
    )
    assert calls(Path(r.systemctl)) == [], "nothing was run"
    assert {e.result for e in node.audit.entries()} == {"refused"}


async def test_an_allowed_unit_is_restarted_by_argv(tmp_path: Path) -> None:
    r = allowlist(tmp_path / "bin", units=["slurmd.service"])
    node = Node(tmp_path, restart=r)
    answer = await node.ask("restart", target="slurmd.service", reason=TRICKY)
    assert answer.ok, answer
    assert calls(Path(r.systemctl)) == [["restart", "slurmd.service"]]
    [entry] = node.audit.entries()
    assert (entry.op, entry.result, entry.args["reason"]) == ("restart", "ok", TRICKY)


async def test_a_failing_unit_restart_is_reported_in_the_tools_words(tmp_path: Path) -> None:
    said = "Job for slurmd.service failed because the control process exited with error code."
    r = allowlist(tmp_path / "bin", code=1, stderr=said + "\n", units=["slurmd.service"])
    node = Node(tmp_path, restart=r)
    answer = await node.ask("restart", target="slurmd.service", reason="r")
    assert (answer.ok, answer.code) == (False, "command_failed")
    assert answer.error == f"systemctl: {said}"
    [entry] = node.audit.entries()
    assert (entry.result, entry.message) == ("failed", answer.error)


async def test_a_hung_restart_is_killed_at_its_deadline(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    hang = tools / "systemctl"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    r = RestartSection(systemctl=str(hang), timeout=0.5, units=["slurmd.service"])
    node = Node(tmp_path, restart=r)
    answer = await node.ask("restart", target="slurmd.service", reason="r")
    assert (answer.ok, answer.code) == (False, "timeout")
    assert answer.error == "systemctl: no answer within 0.5 s; killed"


async def test_a_gpu_reset_only_when_that_gpu_is_idle(tmp_path: Path) -> None:
    r = allowlist(tmp_path / "bin")
    node = Node(tmp_path, busy=True, restart=r)  # gpu0 busy, gpu1 idle
    busy = await node.ask("restart", target="gpu0", reason="xid 79")
    assert (busy.ok, busy.code) == (False, "gpu_busy")
    idle = await node.ask("restart", target="gpu1", reason="xid 79")
    assert idle.ok, idle
    assert calls(Path(r.nvidia_smi)) == [["--gpu-reset", "-i", "1"]]


async def test_a_simulated_gpu_is_reset_by_the_simulator(tmp_path: Path) -> None:
    done: list[tuple[str, int]] = []

    def inject(fault: str, gpu: int) -> str:
        done.append((fault, gpu))
        return f"gpu {gpu}: reset"

    r = allowlist(tmp_path / "bin")
    node = Node(tmp_path, restart=r, inject=inject)
    answer = await node.ask("restart", target="gpu1", reason="r")
    assert answer.ok and answer.result["message"] == "gpu 1: reset"
    assert done == [("clear", 1)] and calls(Path(r.nvidia_smi)) == []


async def test_a_node_reboot_needs_a_drained_node_and_starts_after_the_reply(
    tmp_path: Path,
) -> None:
    r = allowlist(tmp_path / "bin")
    node = Node(tmp_path, restart=r, boot_id=lambda: "boot-1")
    early = await node.ask("restart", target="node", reason="firmware")
    assert (early.ok, early.code) == (False, "not_drained")
    assert early.error == "a node restart needs the node drained first (it is schedulable)"
    await node.ask("drain", reason="firmware")
    answer = await node.ask("restart", target="node", reason="firmware")
    assert answer.ok, answer
    assert answer.result["message"].startswith("rebooting; back in service")
    assert answer.result["after"]["resume_after_boot"] == "boot-1"
    assert StateStore(tmp_path).load().resume_after_boot == "boot-1", "saved before the reply"
    assert calls(Path(r.systemctl)) == [], "not before the reply has left"
    assert [e.result for e in node.audit.entries()][-1] == "ok", "audited before it runs"
    await until(lambda: calls(Path(r.systemctl)), "systemctl reboot", 5)
    assert calls(Path(r.systemctl)) == [["reboot"]]


async def test_after_the_reboot_the_agent_puts_the_node_back_in_service(tmp_path: Path) -> None:
    r = allowlist(tmp_path / "bin")
    before = Node(tmp_path, restart=r, boot_id=lambda: "boot-1")
    await before.ask("drain", reason="firmware")
    await before.ask("restart", target="node", reason="firmware")
    await before.handler.resume_after_reboot()
    assert before.state.state == "drained", "same boot: the reboot has not happened yet"

    after = Node(tmp_path, restart=r, boot_id=lambda: "boot-2")  # the agent, started again
    await after.handler.resume_after_reboot()
    assert (after.state.state, after.state.who) == ("schedulable", "gpufleet-agent")
    assert after.state.resume_after_boot is None
    last = list(after.audit.entries())[-1]
    assert (last.op, last.who, last.result) == ("resume", "gpufleet-agent", "ok")
    assert last.args == {"reason": "back after the reboot asked by olga"}
    await after.handler.resume_after_reboot()
    assert [e.op for e in after.audit.entries()] == ["drain", "restart", "resume"], "once"


async def test_restarting_the_agent_runs_after_the_reply_and_a_failure_is_told(
    tmp_path: Path,
) -> None:
    said = "System has not been booted with systemd as init system (PID 1). Can't operate."
    r = allowlist(tmp_path / "bin", code=1, stderr=said)
    node = Node(tmp_path, restart=r)
    answer = await node.ask("restart", target="agent", reason="upgrade")
    assert answer.ok and answer.result["message"] == "restarting the agent (gpufleet-agent.service)"
    await until(lambda: node.told, "the failure told", 5)
    assert calls(Path(r.systemctl)) == [["restart", "gpufleet-agent.service"]]
    assert node.told == [f"restart gpufleet-agent.service failed: systemctl: {said}"]


async def test_nothing_may_be_restarted_without_an_allowlist(tmp_path: Path) -> None:
    r = allowlist(tmp_path / "bin", agent=False, node=False, gpu_reset=False)
    node = Node(tmp_path, restart=r)
    assert node.handler.restart_targets() == []
    answer = await node.ask("restart", target="agent", reason="r")
    assert answer.error == "agent is not a restart target on n1 (allowed: none)"


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(target=st.text(min_size=1, max_size=40))
@example(target="agent").via("found by hypothesis: allowed by default, once thought refused")
@example(target="node")
@example(target="slurmd.service ")
def test_no_target_outside_the_allowlist_ever_runs_a_command(tmp_path: Path, target: str) -> None:
    """Whatever a request names as its target, nothing is run unless the node's list has it:
    the name is looked up, never passed to a tool. (Sync, one event loop per example:
    hypothesis drives plain functions.)"""
    r = allowlist(tmp_path / "bin", units=["slurmd.service"])
    node = Node(tmp_path, restart=r, boot_id=lambda: "b")
    answer = asyncio.run(node.ask("restart", target=target, reason="fuzz"))
    ran = calls(Path(r.systemctl)) + calls(Path(r.nvidia_smi))
    for log in ("systemctl.log", "nvidia-smi.log"):
        (tmp_path / "bin" / log).unlink(missing_ok=True)
    if target not in ("agent", "node", "slurmd.service", "gpu0", "gpu1"):  # the node's list
        assert not answer.ok and ran == [], (target, answer)
    elif target == "node":  # listed, but a node restart needs the node drained first
        assert answer.code == "not_drained" and ran == [], answer
    else:
        assert answer.ok, answer


async def test_a_viewer_cannot_act_by_any_request(tmp_path: Path) -> None:
    """Every request that needs the operator role, asked by a viewer with valid arguments:
    refused, nothing changed, nothing run, and each refusal audited."""
    r = allowlist(tmp_path / "bin", units=["slurmd.service"])
    node = Node(tmp_path, restart=r, inject=lambda fault, gpu: "injected")
    valid: dict[str, dict[str, Any]] = {
        "drain": {"reason": "r"}, "resume": {}, "reassign": {"pool": "p", "reason": "r"},
        "restart": {"target": "slurmd.service", "reason": "r"},
        "sim_inject": {"fault": "busy", "gpu": 0},
    }  # fmt: skip
    operator_ops = {op for op, spec in REQUEST_SPECS.items() if spec.role == "operator"}
    assert operator_ops == set(valid), "a new operator request needs a line here"
    for op, args in valid.items():
        answer = await node.ask(op, VIC, **args)
        assert (answer.ok, answer.code) == (False, "forbidden"), op
    assert node.state == NodeState() and node.announced == []
    assert calls(Path(r.systemctl)) == []
    assert [(e.op, e.result, e.who) for e in node.audit.entries()] == [
        (op, "refused", "vic") for op in valid
    ]
