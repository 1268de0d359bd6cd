"""Every op's answer reads as the result type its spec names, losing nothing the wire
carried, and every refusal code an agent answers with is one of the closed set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from agents.config import RestartSection
from agents.protocol import (
    REQUEST_SPECS,
    AuditResult,
    NodeState,
    ProtocolError,
    RefusalCode,
    Response,
    Said,
    StateChange,
    result_as,
    to_builtins,
)
from tests.conftest import until
from tests.fakes.opsnode import VIC, Node
from tests.fakes.tools import calls, recorder


def typed(op: str, answer: Response) -> Any:
    """The answer as its op's result type, checked to say all the answer said."""
    assert answer.ok, answer
    result = result_as(answer, REQUEST_SPECS[op].result)
    assert to_builtins(result) == answer.result, f"{op}: the typed result lost something"
    return result


def refusal(answer: Response) -> str:
    assert not answer.ok and answer.code is not None, answer
    assert answer.code in get_args(RefusalCode), f"{answer.code} is not a RefusalCode"
    return answer.code


async def test_every_op_answers_with_its_spec_result(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    r = RestartSection(
        systemctl=str(recorder(tools, "systemctl")),
        nvidia_smi=str(recorder(tools, "nvidia-smi")),
        timeout=5.0,
        units=["slurmd.service"],
    )
    (tmp_path / "real").mkdir()
    node = Node(tmp_path / "real", restart=r, boot_id=lambda: "boot-1")
    seen = set()

    async def ask(op: str, **args: Any) -> Any:
        seen.add(op)
        return typed(op, await node.ask(op, **args))

    assert (await ask("ping")).node == "n1"
    assert (await ask("whoami")).user == "olga"
    assert await ask("state") == NodeState()
    drained = await ask("drain", reason="fans")
    assert isinstance(drained, StateChange) and drained.after.state == "drained"
    again = await ask("drain", reason="twice")
    assert again.before == again.after, "nothing to do still says the state"
    assert (await ask("reassign", pool="train", reason="move")).after.pool == "train"
    assert (await ask("restart", target="gpu1", reason="r")).message == "gpu1 reset"
    unit = await ask("restart", target="slurmd.service", reason="r")
    assert unit.state is not None and unit.state.state == "drained"
    assert (await node.ask("restart", target="gpu1", reason="r")).result == {
        "message": "gpu1 reset"
    }, "what a result does not use is left out, as before it had a type"
    reboot = await ask("restart", target="node", reason="firmware")
    assert reboot.after.resume_after_boot == "boot-1"
    await until(lambda: ["reboot"] in calls(Path(r.systemctl)), "the reboot", 5)
    assert (await ask("resume", reason="")).after.state == "schedulable"
    audit = await ask("audit")
    assert isinstance(audit, AuditResult) and [e.op for e in audit.entries][:2] == [
        "drain",
        "drain",
    ]

    (tmp_path / "sim").mkdir()
    simulated = Node(tmp_path / "sim", inject=lambda fault, gpu: f"gpu {gpu}: {fault}")
    seen.add("sim_inject")
    injected = typed("sim_inject", await simulated.ask("sim_inject", fault="lost", gpu=1))
    assert isinstance(injected, Said) and injected.message == "gpu 1: lost"

    assert seen == set(REQUEST_SPECS), "every op's answer was read as its type"


async def test_refusals_answer_with_codes_of_the_closed_set(tmp_path: Path) -> None:
    node = Node(tmp_path, busy=True, restart=RestartSection(), pools=["train"])
    codes = {
        refusal(await node.ask("format_disk")),
        refusal(await node.ask("drain", caller=VIC, reason="r")),
        refusal(await node.ask("drain")),
        refusal(await node.ask("reassign", pool="nope", reason="r")),
        refusal(await node.ask("restart", target="nothing", reason="r")),
        refusal(await node.ask("restart", target="node", reason="r")),
        refusal(await node.ask("sim_inject", fault="lost", gpu=0)),
    }
    assert codes == {
        "unknown_op",
        "forbidden",
        "bad_args",
        "unknown_pool",
        "unknown_target",
        "not_drained",
        "not_simulated",
    }


def test_a_result_that_does_not_fit_is_a_protocol_error() -> None:
    answer = Response(id=1, ok=True, result={"before": "yesterday"})
    with pytest.raises(ProtocolError) as raised:
        result_as(answer, StateChange)
    assert raised.value.code == "invalid"
