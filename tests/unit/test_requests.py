"""Requests: typed args, the role check from peer credentials, and the audit of every action
(refusals for role included); read-only requests leave no audit trail."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agents.config import RolesSection
from agents.ops.requests import Caller, RequestHandler
from agents.ops.state import StateOwner
from agents.ops.store import AuditLog
from agents.protocol import AuditEntry, NodeState, Request, Response
from agents.serve.identity import Peer, role_of

NOW = 1_700_000_123.5
VIEWER = Peer(pid=10, uid=2001, gid=2001, user="vic", groups=("vic", "users"))
OPERATOR = Peer(pid=11, uid=2002, gid=2002, user="olga", groups=("olga", "gpuops"))
INJECT = Request(id=7, op="sim_inject", args={"fault": "lost", "gpu": 1})


class FakeInject:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, fault: str, gpu: int) -> str:
        self.calls.append((fault, gpu))
        if gpu >= 8:
            raise ValueError(f"no GPU {gpu}: this simulated node has GPUs 0-7")
        return f"gpu {gpu}: {fault}"


def handler(state_dir: Path, inject: FakeInject | None) -> tuple[RequestHandler, AuditLog]:
    audit = AuditLog(state_dir)
    h = RequestHandler(
        node="n1",
        audit=audit,
        ops=StateOwner(None, node="n1", state=NodeState(state="draining", reason="r")),
        inject=inject,
        clock=lambda: NOW,
    )
    return h, audit


def audit_entries(audit: AuditLog) -> list[AuditEntry]:
    return list(audit.entries())


async def test_viewer_refused_for_sim_inject_and_audited(tmp_path: Path) -> None:
    inject = FakeInject()
    h, audit = handler(tmp_path, inject)
    response = await h.handle(Caller(VIEWER, "viewer"), INJECT)
    assert response.id == 7
    assert response.ok is False
    assert response.code == "forbidden"
    assert response.error and "vic" in response.error and "operator" in response.error
    assert inject.calls == []  # nothing happened
    [entry] = audit_entries(audit)
    assert entry.who == "vic"
    assert entry.uid == 2001
    assert entry.op == "sim_inject"
    assert entry.result == "refused"
    assert entry.args == {"fault": "lost", "gpu": 1}
    assert entry.request_id == 7
    assert entry.ts == NOW
    assert entry.message == response.error


async def test_operator_accepted_and_audited_ok(tmp_path: Path) -> None:
    inject = FakeInject()
    h, audit = handler(tmp_path, inject)
    response = await h.handle(Caller(OPERATOR, "operator"), INJECT)
    assert response == Response(id=7, ok=True, result={"message": "gpu 1: lost"})
    assert inject.calls == [("lost", 1)]
    [entry] = audit_entries(audit)
    assert entry.who == "olga"
    assert entry.uid == 2002
    assert entry.op == "sim_inject"
    assert entry.result == "ok"
    assert entry.message == "gpu 1: lost"
    assert entry.args == {"fault": "lost", "gpu": 1}
    assert entry.request_id == 7


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_ping_whoami_state_are_not_audited(tmp_path: Path, role: Any) -> None:
    h, audit = handler(tmp_path, FakeInject())
    caller = Caller(VIEWER, role)
    ping = await h.handle(caller, Request(id=1, op="ping"))
    assert ping.ok
    assert ping.result == {"node": "n1", "ts": NOW}
    who = await h.handle(caller, Request(id=2, op="whoami"))
    assert who.ok
    assert who.result == {"uid": 2001, "user": "vic", "groups": ["vic", "users"], "role": role}
    state = await h.handle(caller, Request(id=3, op="state"))
    assert state.ok
    assert state.result is not None and state.result["state"] == "draining"
    assert audit_entries(audit) == []
    assert not audit.path.exists()


async def test_inject_none_is_not_simulated(tmp_path: Path) -> None:
    h, audit = handler(tmp_path, None)
    response = await h.handle(Caller(OPERATOR, "operator"), INJECT)
    assert response.ok is False
    assert response.code == "not_simulated"
    assert response.error and "n1" in response.error
    [entry] = audit_entries(audit)  # an operator's refused action is on record too
    assert entry.result == "refused"
    assert entry.who == "olga"


async def test_injector_value_error_is_bad_args(tmp_path: Path) -> None:
    inject = FakeInject()
    h, audit = handler(tmp_path, inject)
    request = Request(id=9, op="sim_inject", args={"fault": "lost", "gpu": 12})
    response = await h.handle(Caller(OPERATOR, "operator"), request)
    assert response.ok is False
    assert response.code == "bad_args"
    assert response.error and "no GPU 12" in response.error
    assert [e.result for e in audit_entries(audit)] == ["refused"]


@pytest.mark.parametrize(
    ("request_", "code", "audited"),
    [
        (Request(id=4, op="reboot"), "unknown_op", 1),  # an attempt at anything unknown: on record
        (Request(id=4, op="sim_inject", args={"fault": "melt", "gpu": 0}), "bad_args", 1),
        (Request(id=4, op="sim_inject", args={"fault": "lost", "gpu": 0, "x": 1}), "bad_args", 1),
        (Request(id=4, op="ping", args={"x": 1}), "bad_args", 0),  # a read: not audited
    ],
)
async def test_bad_requests_are_refused_before_anything_runs(
    tmp_path: Path, request_: Request, code: str, audited: int
) -> None:
    inject = FakeInject()
    h, audit = handler(tmp_path, inject)
    response = await h.handle(Caller(OPERATOR, "operator"), request_)
    assert response.id == 4
    assert response.ok is False
    assert response.code == code
    assert inject.calls == []
    entries = audit_entries(audit)
    assert [e.result for e in entries] == ["refused"] * audited
    assert all(e.op == request_.op for e in entries)


async def test_a_viewer_is_refused_before_its_arguments_are_read(tmp_path: Path) -> None:
    """The role check comes first, so a viewer's malformed action is a refusal on record."""
    inject = FakeInject()
    h, audit = handler(tmp_path, inject)
    bad = Request(id=5, op="sim_inject", args={"fault": "melt"})
    response = await h.handle(Caller(VIEWER, "viewer"), bad)
    assert response.code == "forbidden"
    assert [(e.who, e.result) for e in audit_entries(audit)] == [(VIEWER.user, "refused")]


async def test_audit_failure_after_the_action_is_reported(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    inject = FakeInject()
    h, _ = handler(not_a_dir, inject)
    response = await h.handle(Caller(OPERATOR, "operator"), INJECT)
    assert inject.calls == [("lost", 1)]
    assert response.ok is False
    assert response.code == "audit_failed"
    assert response.error and "applied" in response.error


@pytest.mark.parametrize(
    ("peer", "role", "inject"),
    [(VIEWER, "viewer", FakeInject()), (OPERATOR, "operator", None)],
    ids=["forbidden", "not_simulated"],
)
async def test_audit_failure_on_a_refusal_still_answers(
    tmp_path: Path, peer: Peer, role: Any, inject: FakeInject | None
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    h, _ = handler(not_a_dir, inject)
    response = await h.handle(Caller(peer, role), INJECT)
    assert response.ok is False


# ---------------------------------------------------------------------------------------------
# role_of

AGENT_UID = 999
ROLES = RolesSection(operators=["olga"], operator_groups=["gpuops"])


def peer(uid: int, user: str, groups: tuple[str, ...] = ()) -> Peer:
    return Peer(pid=1, uid=uid, gid=uid, user=user, groups=groups or (user,))


def test_root_is_operator() -> None:
    assert role_of(peer(0, "root"), RolesSection(), agent_uid=AGENT_UID) == "operator"


def test_agent_own_uid_is_operator() -> None:
    assert role_of(peer(AGENT_UID, "gpufleet"), RolesSection(), agent_uid=AGENT_UID) == "operator"


def test_own_uid_defaults_to_the_effective_uid() -> None:
    me = os.geteuid()
    assert role_of(peer(me, "me"), RolesSection()) == "operator"
    assert role_of(peer(me + 12345, "other"), RolesSection()) == "viewer"


def test_listed_user_is_operator() -> None:
    assert role_of(peer(2002, "olga"), ROLES, agent_uid=AGENT_UID) == "operator"


def test_member_of_listed_group_is_operator() -> None:
    p = peer(2003, "gus", ("gus", "users", "gpuops"))
    assert role_of(p, ROLES, agent_uid=AGENT_UID) == "operator"


def test_others_are_viewers() -> None:
    assert role_of(peer(2001, "vic", ("vic", "users")), ROLES, agent_uid=AGENT_UID) == "viewer"
    assert role_of(peer(2001, "vic"), RolesSection(), agent_uid=AGENT_UID) == "viewer"


def test_names_do_not_cross_between_users_and_groups() -> None:
    # A user named like an operator group, and a group named like an operator user.
    assert role_of(peer(2004, "gpuops", ("x",)), ROLES, agent_uid=AGENT_UID) == "viewer"
    assert role_of(peer(2005, "y", ("olga",)), ROLES, agent_uid=AGENT_UID) == "viewer"


async def test_audit_read_returns_the_newest_entries_and_is_not_audited(tmp_path: Path) -> None:
    h, audit = handler(tmp_path, FakeInject())
    operator = Caller(OPERATOR, "operator")
    for gpu in range(5):
        await h.handle(
            operator, Request(id=gpu, op="sim_inject", args={"fault": "lost", "gpu": gpu})
        )
    read = await h.handle(Caller(VIEWER, "viewer"), Request(id=9, op="audit", args={"limit": 2}))
    assert read.ok
    assert read.result is not None
    assert [e["args"]["gpu"] for e in read.result["entries"]] == [3, 4], "newest, oldest first"
    assert len(audit_entries(audit)) == 5, "reading the log adds nothing to it"
    bad = await h.handle(Caller(VIEWER, "viewer"), Request(id=10, op="audit", args={"limit": 0}))
    assert (bad.ok, bad.code) == (False, "bad_args")
    assert bad.error is not None and "limit must be 1 to 200" in bad.error
