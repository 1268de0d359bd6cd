"""A real ``gpufleet-agent serve`` process (simulated GPUs) on a real unix socket."""

from __future__ import annotations

import contextlib
import grp
import itertools
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from agents.ops.store import AuditLog, StateStore
from agents.protocol import (
    PROTOCOL_VERSION,
    AuditEntry,
    Error,
    Event,
    Hello,
    Inventory,
    NodeState,
    Request,
    Response,
    Sample,
    decode,
    encode,
)
from agents.serve.client import AgentClient, AgentUnreachable, ConnectionClosed
from tests.conftest import AgentProc, agent_command, skip_or_fail, wait_for

pytestmark = pytest.mark.integration

FAST = ("--backend", "sim", "--gpus", "4", "--interval", "0.05")
FAST_8 = ("--backend", "sim", "--gpus", "8", "--interval", "0.05")  # samples of ~4 kB


def _client_hello(**kw: Any) -> bytes:
    return encode(Hello(proto=PROTOCOL_VERSION, software="test", peer="tool", **kw))


class RawClient:
    """A hand-driven socket, for what AgentClient would never send."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def frame(self) -> Any:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionClosed("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return decode(line)

    def read_until(self, match: Callable[[Any], bool], what: str, limit: int = 10_000) -> Any:
        """Read frames (each within the socket's timeout) up to the first that matches."""
        for _ in range(limit):
            f = self.frame()
            if match(f):
                return f
        raise AssertionError(f"no {what} in {limit} frames")

    def closed(self) -> bool:
        """True once the agent has closed its end (drains what is left)."""
        try:
            while data := self.sock.recv(65536):
                self.buf += data
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True


def _live_samples(client: AgentClient, n: int) -> list[Sample]:
    out: list[Sample] = []
    for frame in client.frames():
        if isinstance(frame, Sample) and not frame.replay:
            out.append(frame)
            if len(out) == n:
                break
    return out


def test_new_client_gets_hello_inventory_history_then_live(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*FAST).start()
    with AgentClient(agent.socket, history=False) as warmup:
        _live_samples(warmup, 10)  # let the ring fill a little

    with AgentClient(agent.socket) as client:
        assert client.hello.node and client.hello.proto == PROTOCOL_VERSION
        assert client.hello.interval_s == pytest.approx(0.05)
        frames = []
        for frame in client.frames():
            frames.append(frame)
            if isinstance(frame, Sample) and not frame.replay and len(frames) > 20:
                break
    assert isinstance(frames[0], Inventory)
    assert len(frames[0].gpus) == 4 and frames[0].backend == "sim"
    samples = [f for f in frames if isinstance(f, Sample)]
    replayed = [s for s in samples if s.replay]
    assert len(replayed) >= 10, "history should arrive first"
    first_live = next(i for i, s in enumerate(samples) if not s.replay)
    assert all(s.replay for s in samples[:first_live]), "history comes before live"
    seqs = [s.seq for s in samples]
    assert seqs == sorted(set(seqs)), "no duplicate or reordered sample at the seam"


def test_slow_reader_never_delays_the_others(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(
        *FAST_8,
        config="[clients]\nmax_queued_samples = 5\nmax_behind = 2.0\n",
    ).start()
    with AgentClient(agent.socket, history=False) as warm:
        _live_samples(warm, 80)  # ~4 s of 8-GPU samples: more history than a socket buffers

    stuck = RawClient(agent.socket)
    stuck.frame()  # the agent's hello
    stuck.sock.sendall(_client_hello())  # asks for history, then never reads again

    readers = [AgentClient(agent.socket, history=False) for _ in range(3)]
    try:
        arrivals: list[list[tuple[float, int]]] = [[] for _ in readers]

        def read(i: int) -> None:
            for frame in readers[i].frames():
                if isinstance(frame, Sample) and not frame.replay:
                    arrivals[i].append((time.monotonic(), frame.seq))
                    if len(arrivals[i]) == 40:  # 2 s at 20 Hz
                        return

        threads = [threading.Thread(target=read, args=(i,)) for i in range(len(readers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for got in arrivals:
            assert len(got) == 40
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(got)]
            # 10 intervals: far above scheduling noise, far below a reader held up by the
            # stuck one (which would wait for its max_behind, 2 s).
            assert max(gaps) < 0.5, f"a reader waited {max(gaps):.2f} s for a sample"
        # Where their windows overlap, every reader saw the same samples: none was dropped
        # for the readers that keep up.
        seqs = [[seq for _, seq in got] for got in arrivals]
        lo, hi = max(s[0] for s in seqs), min(s[-1] for s in seqs)
        assert hi - lo >= 20
        overlap = [[q for q in s if lo <= q <= hi] for s in seqs]
        assert overlap[0] == overlap[1] == overlap[2]
        assert all(s == sorted(s) for s in seqs)
        wait_for(lambda: "too far behind" in agent.log(), "the stuck client to be cut off", 15)
        assert stuck.closed()
        # The others are still served after the stuck one is gone.
        assert len(_live_samples(readers[0], 5)) == 5
    finally:
        for r in readers:
            r.close()
        stuck.sock.close()


def test_version_mismatch_ends_with_a_clear_error(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST).start()
    raw = RawClient(agent.socket)
    assert isinstance(raw.frame(), Hello)
    raw.sock.sendall(encode(Hello(proto="2.0", software="future-console 9", peer="console")))
    err = raw.frame()
    assert isinstance(err, Error) and err.fatal and err.code == "version"
    assert "2.0" in err.message and "1." in err.message
    assert raw.closed()


def test_bad_frames_are_answered_and_a_run_of_them_closes(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*FAST).start()
    raw = RawClient(agent.socket)
    raw.frame()
    raw.sock.sendall(_client_hello(stream=False))
    raw.sock.sendall(b"{not json\n")
    err = raw.frame()
    assert isinstance(err, Error) and not err.fatal and err.code == "malformed"
    raw.sock.sendall(b'{"t":"request","id":"one","op":"ping"}\n')  # wrong type
    err = raw.frame()
    assert isinstance(err, Error) and err.code == "invalid" and "id" in err.message
    # Over the size limit: swallowed up to its newline, answered, connection survives.
    raw.sock.sendall(
        b'{"t":"request","id":1,"op":"ping","args":{"x":"' + b"a" * (2 << 20) + b'"}}\n'
    )
    err = raw.frame()
    assert isinstance(err, Error) and err.code == "too_large" and not err.fatal
    raw.sock.sendall(b'{"t":"request","id":7,"op":"ping","args":{}}\n')
    pong = raw.frame()
    assert isinstance(pong, Response) and pong.id == 7 and pong.ok
    for _ in range(5):
        raw.sock.sendall(b"garbage\n")
    last = raw.read_until(lambda f: isinstance(f, Error) and f.fatal, "fatal error")
    assert last.code == "malformed"
    assert raw.closed()


def test_requests_before_the_handshake_are_refused(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST).start()
    raw = RawClient(agent.socket)
    raw.frame()
    raw.sock.sendall(b'{"t":"request","id":1,"op":"sim_inject","args":{"fault":"lost","gpu":0}}\n')
    err = raw.frame()
    assert isinstance(err, Error) and err.fatal and err.code == "handshake"
    assert raw.closed()
    assert list(AuditLog(agent.state_dir).entries()) == []


def test_unknown_op_and_bad_args_are_refused_by_name(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*FAST).start()
    with AgentClient(agent.socket, stream=False) as c:
        r = c.request("format_disk")
        assert not r.ok and r.code == "unknown_op" and "format_disk" in (r.error or "")
        r = c.request("sim_inject", fault="meltdown", gpu=0)
        assert not r.ok and r.code == "bad_args" and "fault" in (r.error or "")
        r = c.request("sim_inject", fault="lost", gpu=99)
        assert not r.ok and r.code == "bad_args" and "99" in (r.error or "")


def test_each_injected_fault_reaches_the_stream_as_its_event(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*FAST).start()
    events: list[Event] = []

    def seen(kind: str, gpu: int) -> Event | None:
        return next((e for e in events if e.kind == kind and e.gpu == gpu), None)

    with (
        AgentClient(agent.socket, history=False) as watcher,
        AgentClient(agent.socket, stream=False) as actor,
    ):
        for fault, gpu in (("overheat", 0), ("xid79", 1), ("ecc", 2), ("lost", 3)):
            assert actor.request("sim_inject", fault=fault, gpu=gpu).ok

        def collect(kind: str, gpu: int) -> Event:
            def step() -> Event | None:
                frame = watcher.recv()
                if isinstance(frame, Event):
                    events.append(frame)
                return seen(kind, gpu)

            return wait_for(step, f"{kind} event on GPU {gpu}", 20)

        assert collect("xid", 1).xid == 79
        collect("gpu_lost", 1)
        assert (collect("ecc", 2).count or 0) >= 1
        collect("remap_pending", 2)
        collect("gpu_lost", 3)
        assert "thermal" in collect("slowdown", 0).message
        assert actor.request("sim_inject", fault="clear", gpu=3).ok
        collect("gpu_back", 3)
        assert not any(e.kind == "gpu_lost" and e.gpu in (0, 2) for e in events)
    audited = [e.args for e in AuditLog(agent.state_dir).entries()]
    assert {"fault": "xid79", "gpu": 1} in audited and len(audited) == 5


def test_state_and_audit_survive_restarts(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST)
    agent.state_dir.mkdir(parents=True)
    drained = NodeState(state="drained", pool="train", reason="bad HBM", who="alice", since=1.0)
    StateStore(agent.state_dir).save(drained)
    for round_ in range(2):
        agent.start()
        with AgentClient(agent.socket, history=False) as c:
            inv = c.recv()
            assert isinstance(inv, Inventory) and inv.state == drained
            assert c.request("sim_inject", fault="busy", gpu=0).ok
        assert agent.stop() == 0
        assert not Path(agent.socket).exists(), "a clean stop removes its socket"
        assert StateStore(agent.state_dir).load() == drained
        assert len(list(AuditLog(agent.state_dir).entries())) == round_ + 1


def test_a_crashed_agents_socket_is_replaced_a_live_one_is_not(
    agent_factory: Callable[..., AgentProc],
) -> None:
    first = agent_factory(*FAST, name="one").start()
    first.stop(9)  # SIGKILL leaves the socket file behind
    assert Path(first.socket).exists()
    first.start()  # replaces the stale socket
    with AgentClient(first.socket, stream=False) as c:
        assert c.request("ping").ok
    second = agent_factory(*FAST, name="one")
    second.proc = subprocess.Popen(
        [
            *agent_command(),
            "serve",
            "--socket",
            first.socket,
            "--state-dir",
            str(second.root / "s2"),
            *FAST,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    _, err = second.proc.communicate(timeout=20)
    assert second.proc.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        f"gpufleet-agent: error: another agent is already serving on {first.socket}"
    )


def test_socket_is_group_only(agent_factory: Callable[..., AgentProc]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    agent = agent_factory(*FAST, config=f'[agent]\nsocket_group = "{group}"\n').start()
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert not st.st_mode & stat.S_IWOTH


def test_world_writable_socket_mode_is_refused(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST)
    (agent.root / "agent.toml").write_text('[agent]\nsocket_mode = "0666"\n')
    out = subprocess.run(
        [*agent_command(), "serve", "--config", str(agent.root / "agent.toml"), *FAST],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 78
    assert out.stderr.strip() == (
        f"gpufleet-agent: error: {agent.root / 'agent.toml'}: agent.socket_mode: "
        "0666 is world-writable; use 0660"
    )


# -- identity from peer credentials ---------------------------------------------------------


def _as_user(uid: int, gid: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child with another uid/gid (no exec: the interpreter under
    /root is not readable by other users) and return what it returned, or its error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result: Any = {"ok": fn()}
        except BaseException as exc:  # report anything to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _require_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("peer-credential tests need root to act as other users")


def _agent_for_nobody(
    agent_factory: Callable[..., AgentProc], *args: str, config: str = ""
) -> tuple[AgentProc, pwd.struct_passwd]:
    """A started agent whose socket group is nobody's, so that a forked child running as
    nobody can connect (as a viewer, unless ``config`` says otherwise)."""
    _require_root()
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    agent = agent_factory(*args, config=f'[agent]\nsocket_group = "{group}"\n' + config)
    return agent.start(), nobody


def test_identity_comes_from_peer_credentials(agent_factory: Callable[..., AgentProc]) -> None:
    agent, nobody = _agent_for_nobody(agent_factory, *FAST)

    def whoami_and_inject() -> dict[str, Any]:
        with AgentClient(agent.socket, stream=False) as c:
            who = c.request("whoami")
            act = c.request("sim_inject", fault="lost", gpu=0)
            return {"who": who.result, "act_ok": act.ok, "code": act.code}

    got = _as_user(nobody.pw_uid, nobody.pw_gid, whoami_and_inject)["ok"]
    assert got["who"]["uid"] == nobody.pw_uid and got["who"]["user"] == "nobody"
    assert got["who"]["role"] == "viewer"
    assert got["act_ok"] is False and got["code"] == "forbidden"
    refused = [e for e in AuditLog(agent.state_dir).entries() if e.result == "refused"]
    assert len(refused) == 1 and refused[0].who == "nobody" and refused[0].op == "sim_inject"

    with AgentClient(agent.socket, stream=False) as c:  # root is an operator
        who = c.request("whoami").result or {}
        assert who["uid"] == 0 and who["role"] == "operator"


def test_operator_role_from_config(agent_factory: Callable[..., AgentProc]) -> None:
    agent, nobody = _agent_for_nobody(
        agent_factory, *FAST, config='[roles]\noperators = ["nobody"]\n'
    )

    def inject() -> bool:
        with AgentClient(agent.socket, stream=False) as c:
            return c.request("sim_inject", fault="busy", gpu=1).ok

    assert _as_user(nobody.pw_uid, nobody.pw_gid, inject) == {"ok": True}
    entry: AuditEntry = next(iter(AuditLog(agent.state_dir).entries()))
    assert entry.who == "nobody" and entry.uid == nobody.pw_uid and entry.result == "ok"


def test_users_outside_the_socket_group_cannot_connect(
    agent_factory: Callable[..., AgentProc],
) -> None:
    _require_root()
    daemon = pwd.getpwnam("daemon")
    agent = agent_factory(*FAST).start()  # socket group: root's

    def connect() -> str:
        try:
            AgentClient(agent.socket, stream=False).close()
        except AgentUnreachable as exc:
            return str(exc)
        return "connected"

    result = _as_user(daemon.pw_uid, daemon.pw_gid, connect)["ok"]
    assert result.startswith(f"permission denied on {agent.socket}")


# -- the other commands ------------------------------------------------------------------------


def test_attach_bridges_stdin_and_stdout(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST).start()
    proc = subprocess.Popen(
        [*agent_command(), "attach", "--socket", agent.socket],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout
    assert isinstance(decode(proc.stdout.readline()), Hello)
    proc.stdin.write(_client_hello(stream=False))
    proc.stdin.write(b'{"t":"request","id":3,"op":"whoami","args":{}}\n')
    proc.stdin.flush()
    reply = decode(proc.stdout.readline())
    assert isinstance(reply, Response) and reply.id == 3
    assert (reply.result or {})["uid"] == os.geteuid()
    proc.stdin.close()  # EOF toward the agent: it hangs up, attach exits
    assert proc.wait(15) == 0


def test_sd_notify_ready_watchdog_stopping(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST)
    notify_path = str(agent.root / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [
            *agent_command(),
            "serve",
            "--socket",
            agent.socket,
            "--state-dir",
            str(agent.state_dir),
            *FAST,
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[str] = []

        def got_watchdog() -> bool:
            messages.append(listener.recv(4096).decode())
            return any("WATCHDOG=1" in m for m in messages)

        wait_for(
            got_watchdog,
            "READY and a WATCHDOG ping",
            15,
        )
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert "STATUS=" in messages[ready] and "4 GPUs via sim" in messages[ready]
        assert Path(agent.socket).exists(), "READY only once the socket is bound"
        proc.terminate()
        wait_for(lambda: "STOPPING=1" in listener.recv(4096).decode(), "STOPPING", 15)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        listener.close()


def test_a_client_that_never_says_hello_is_cut_off(agent_factory: Callable[..., AgentProc]) -> None:
    agent = agent_factory(*FAST, config="[clients]\nhello_timeout = 0.5\n").start()
    raw = RawClient(agent.socket)
    assert isinstance(raw.frame(), Hello)
    err = raw.frame()  # nothing sent: the agent gives up after hello_timeout
    assert isinstance(err, Error)
    assert err.fatal
    assert err.code == "handshake"
    assert raw.closed()


def test_connection_limits_spare_root(agent_factory: Callable[..., AgentProc]) -> None:
    """One socket-group member cannot take every place: a per-user and a global limit, and
    root always gets in to fix things."""
    agent, nobody = _agent_for_nobody(
        agent_factory, *FAST, config="[clients]\nmax_clients = 3\nmax_clients_per_user = 2\n"
    )

    def fill() -> list[str]:
        held = [AgentClient(agent.socket, stream=False) for _ in range(2)]
        assert all(c.request("ping").ok for c in held)  # both registered
        try:
            AgentClient(agent.socket, stream=False).request("ping")
        except ConnectionClosed as exc:
            return [exc.error.code if exc.error else "", str(exc)]
        return ["admitted", ""]

    code, message = _as_user(nobody.pw_uid, nobody.pw_gid, fill)["ok"]
    assert code == "busy"
    assert "too many connections from nobody (2)" in message

    def one() -> list[str]:
        try:
            AgentClient(agent.socket, stream=False).request("ping")
        except ConnectionClosed as exc:
            return [exc.error.code if exc.error else "", str(exc)]
        return ["admitted", ""]

    holders = [AgentClient(agent.socket, stream=False) for _ in range(4)]  # root: past the limit
    try:
        assert all(c.request("ping").ok for c in holders)
        code, message = _as_user(nobody.pw_uid, nobody.pw_gid, one)["ok"]
        assert code == "busy"
        assert "too many clients (3)" in message
    finally:
        for c in holders:
            c.close()


def test_a_flood_of_refused_connections_logs_a_bounded_summary(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """One user opening hundreds of connections past their limit: the log gets their first
    refusal and a count, not a line each, and the count misses none of them."""
    agent, nobody = _agent_for_nobody(
        agent_factory, *FAST, config="[clients]\nmax_clients_per_user = 2\n"
    )
    flood = 300

    def refused() -> int:
        held = [AgentClient(agent.socket, stream=False) for _ in range(2)]
        assert all(c.request("ping").ok for c in held)  # both places taken
        n = 0
        for _ in range(flood):
            raw = RawClient(agent.socket)
            raw.frame()  # the agent's hello
            err = raw.frame()
            n += isinstance(err, Error) and err.code == "busy"
            raw.sock.close()
        return n

    assert _as_user(nobody.pw_uid, nobody.pw_gid, refused) == {"ok": flood}
    assert agent.stop() == 0  # stopping says what is still counted
    reason = "too many connections from nobody (2)"
    lines = [line for line in agent.log().splitlines() if "refused" in line]
    assert len(lines) <= 3, lines  # the first, and a summary per 10 s at most
    assert f"refused: {reason}" in lines[0]
    summary = re.compile(
        rf"refused (\d+) more connections from uid {nobody.pw_uid} \(nobody\) "
        rf"in the last [\d.]+ s: {re.escape(reason)}$"
    )
    counted = [summary.search(line) for line in lines[1:]]
    assert all(counted), lines
    assert 1 + sum(int(m[1]) for m in counted if m) == flood


def test_dead_streaming_clients_free_their_places(agent_factory: Callable[..., AgentProc]) -> None:
    """Clients that die mid-history (write errors on the agent's side) must not leak places."""
    agent, nobody = _agent_for_nobody(
        agent_factory, *FAST_8, config="[clients]\nmax_clients = 4\nmax_clients_per_user = 4\n"
    )
    with AgentClient(agent.socket, history=False) as warm:
        _live_samples(warm, 60)  # enough history that a client dies in the middle of it

    def die_mid_history() -> bool:
        for _ in range(12):  # three times the limit
            raw = RawClient(agent.socket)
            raw.frame()
            raw.sock.sendall(_client_hello())
            raw.frame()  # the inventory: the agent is writing history now
            raw.sock.shutdown(socket.SHUT_RD)
            raw.sock.close()
        return True

    assert _as_user(nobody.pw_uid, nobody.pw_gid, die_mid_history) == {"ok": True}

    def four_places() -> bool:
        def attempt() -> bool:
            held = []
            try:
                for _ in range(4):
                    held.append(AgentClient(agent.socket, stream=False))
                    assert held[-1].request("ping").ok
            except ConnectionClosed:
                return False
            finally:
                for c in held:
                    c.close()
            return True

        return wait_for(attempt, "all four places to be free again", 10)

    assert _as_user(nobody.pw_uid, nobody.pw_gid, four_places) == {"ok": True}


def _agent_rss(agent: AgentProc) -> int:
    assert agent.proc is not None
    return int(psutil.Process(agent.proc.pid).memory_info().rss)


def test_a_request_flood_that_never_reads_costs_the_agent_nothing(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """Huge requests, pipelined by a client that reads nothing back: the agent stops reading
    from it (its socket fills, not our memory) and keeps sampling for the others."""
    agent = agent_factory(*FAST).start()
    with AgentClient(agent.socket, history=False) as watcher:
        _live_samples(watcher, 5)
        before = _agent_rss(agent)
        flood = RawClient(agent.socket, timeout=2.0)
        flood.frame()
        flood.sock.sendall(_client_hello(stream=False))
        big = b'{"t":"request","id":1,"op":"ping","args":{"' + b"x" * 10_000 + b'":1}}\n'
        sent = 0
        try:
            while sent < 5000:  # 50 MB if it were all taken in
                flood.sock.sendall(big)
                sent += 1
        except TimeoutError:
            pass  # the agent stopped reading from it: that is the point
        # The watcher still gets samples at the normal cadence while the flood sits there.
        got = _live_samples(watcher, 20)
        assert len(got) == 20
        assert max(b.ts - a.ts for a, b in itertools.pairwise(got)) < 0.5
        grown = _agent_rss(agent) - before
        assert grown < 40 << 20, f"the agent grew by {grown >> 20} MB for one flooding client"
        # It reads until half its reply queue (500) is waiting, then stops: the rest sits in
        # the two socket buffers (about 920 requests sent here; their size is the kernel's, so the
        # bound leaves room: test_agent_memory's pacing test holds the exact one).
        assert sent < 2500, f"the agent kept reading ({sent} requests of 10 kB)"
        # Replies echo a clipped name, never the 10 kB one.
        flood.sock.settimeout(10)
        reply = flood.frame()
        assert isinstance(reply, Response)
        assert reply.code == "bad_args"
        assert len(reply.error or "") < 500
        flood.sock.close()


def test_a_client_that_reads_may_pipeline_thousands_of_requests(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = agent_factory(*FAST).start()
    with AgentClient(agent.socket, stream=False) as c:
        n = 3000
        got: list[int] = []

        def reader() -> None:
            while len(got) < n:
                frame = c.recv()
                if isinstance(frame, Response):
                    got.append(frame.id)

        t = threading.Thread(target=reader)
        t.start()
        c.sock.sendall(b"".join(encode(Request(id=i, op="ping")) for i in range(n)))
        t.join(60)
        assert got == list(range(n)), "every request answered, in order, none cut off"


def test_a_viewer_hammering_an_action_is_cut_off_and_audited_boundedly(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent, nobody = _agent_for_nobody(agent_factory, *FAST, config="[clients]\nmax_refusals = 5\n")

    def hammer() -> list[Any]:
        c = AgentClient(agent.socket, stream=False)
        codes = []
        with contextlib.suppress(ConnectionClosed):  # the agent may hang up mid-send
            for i in range(1000):
                c.send(Request(id=i, op="sim_inject", args={"fault": "lost", "gpu": 0}))
        try:
            while True:
                frame = c.recv()
                if isinstance(frame, Response):
                    codes.append(frame.code)
        except ConnectionClosed as exc:
            return [codes, exc.error.code if exc.error else str(exc)]

    codes, last = _as_user(nobody.pw_uid, nobody.pw_gid, hammer)["ok"]
    assert codes == ["forbidden"] * 5
    assert last == "forbidden", "the goodbye says why"
    refused = [e for e in AuditLog(agent.state_dir).entries() if e.who == "nobody"]
    assert len(refused) == 5
    with AgentClient(agent.socket, stream=False) as c:  # the agent is fine
        assert c.request("ping").ok


def test_a_state_change_is_retold_to_a_later_client_and_leaves_no_gap_in_the_samples(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """A console that connects after a change still hears of it, as it hears of an XID; and
    the samples around the event are numbered on without a gap, so a reader counting gaps as
    lost samples counts none (both failed when state events took the samples' counter and
    skipped the retold buffer)."""
    agent = agent_factory(*FAST).start()
    live: list[Sample] = []
    with (
        AgentClient(agent.socket, history=False) as watcher,
        AgentClient(agent.socket, stream=False) as actor,
    ):
        first = watcher.recv()
        assert isinstance(first, Inventory)
        assert actor.request("reassign", pool="infer", reason="capacity moves").ok
        told: list[Event] = []

        def step() -> bool:
            frame = watcher.recv()
            if isinstance(frame, Sample) and not frame.replay:
                live.append(frame)
            elif isinstance(frame, Event) and frame.kind == "state":
                told.append(frame)
            return bool(told and live) and live[-1].seq > told[0].seq + 3  # samples after it

        wait_for(step, "the state event with samples after it", 20)
    seqs = [s.seq for s in live]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap where the event was"

    with AgentClient(agent.socket) as later:
        frames = []
        for frame in later.frames():
            frames.append(frame)
            if isinstance(frame, Sample) and not frame.replay:
                break
    retold = [f for f in frames if isinstance(f, Event)]
    assert [(e.kind, e.replay) for e in retold] == [("state", True)]
    assert retold[0].state is not None and retold[0].state.pool == "infer"
    assert (retold[0].seq, retold[0].ts) == (told[0].seq, told[0].ts)
