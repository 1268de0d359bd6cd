"""The wire contract: every frame survives encode/decode, and nothing a peer sends can make the
decoder raise anything but ProtocolError or make the splitter hold more than one frame."""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_MAJOR,
    PROTOCOL_VERSION,
    REQUEST_SPECS,
    UNKNOWN_KIND,
    AuditEntry,
    Error,
    Event,
    Frame,
    FrameSplitter,
    GpuInfo,
    GpuProcess,
    GpuReading,
    Hello,
    HostInfo,
    HostReading,
    Inventory,
    NoArgs,
    NodeState,
    ProtocolError,
    Request,
    Response,
    Sample,
    SimInjectArgs,
    check_version,
    decode,
    decode_args,
    encode,
    parse_since,
    parse_version,
    to_builtins,
)

# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def hang_guard(seconds: float = 5.0) -> Iterator[None]:
    """Fail (instead of hanging the run) if the body takes longer than ``seconds``."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise AssertionError(f"took longer than {seconds:g} s: the decoder hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def host_reading(**kw: Any) -> HostReading:
    base: dict[str, Any] = {
        "cpu_percent": 12.5,
        "cpu_per_core": [10.0, 15.0],
        "load": (0.5, 0.25, 0.125),
        "mem_total": 64 << 30,
        "mem_used": 8 << 30,
        "mem_available": 56 << 30,
        "swap_total": 0,
        "swap_used": 0,
        "disk_read_bps": 1000.0,
        "disk_write_bps": 0.0,
        "net_rx_bps": 5.0,
        "net_tx_bps": 6.0,
        "uptime_s": 3600.0,
        "boot_id": "b00t",
    }
    base.update(kw)
    return HostReading(**base)


def full_gpu_reading(index: int = 0) -> GpuReading:
    return GpuReading(
        index=index,
        util_gpu=0,
        util_mem=0,
        mem_used=0,
        mem_total=85_520_809_984,
        mem_reserved=503_316_480,
        temp_c=33,
        temp_mem_c=35,
        power_mw=75_000,
        energy_mj=8_845_614,
        sm_clock_mhz=345,
        mem_clock_mhz=2619,
        clock_reasons=["sw_power_cap"],
        pstate=0,
        ecc_uncorrected_volatile=0,
        remapped_correctable=0,
        remapped_uncorrectable=0,
        remap_pending=False,
        remap_failure=False,
        pcie_tx_kbs=1100,
        pcie_rx_kbs=350,
        pcie_width=16,
        processes=[GpuProcess(pid=4_000_001, used_memory=1 << 30, user="alice", command="x")],
    )


STATE = NodeState(state="draining", pool="a", reason="maintenance", who="root", since=1.5)

ALL_FRAMES: list[Frame] = [
    Hello(proto=PROTOCOL_VERSION, software="gpufleet-agent 0.1.0", peer="agent", node="n1"),
    Hello(proto="1.3", software="console", peer="console", history=False, stream=False),
    Inventory(
        node="n1",
        backend="sim",
        driver_version="580.159.04",
        host=HostInfo(
            hostname="n1", kernel="6.8", cpu_count=16, memory_total=1 << 36, boot_id=None
        ),
        gpus=[
            GpuInfo(index=0, uuid="GPU-1", name="NVIDIA H100 80GB HBM3", mig_enabled=False),
            GpuInfo(index=1, uuid=None, name=None),
        ],
        state=STATE,
    ),
    Inventory(
        node="n2",
        backend="none",
        backend_note="no driver",
        host=HostInfo(hostname="n2", kernel="6.8", cpu_count=1, memory_total=1, boot_id="b"),
        gpus=[],
        state=None,  # a one-shot reader that could not read the state directory
    ),
    Sample(
        seq=7,
        ts=1_700_000_000.25,
        host=host_reading(),
        gpus=[full_gpu_reading(0), GpuReading(index=1, lost=True), GpuReading(index=2)],
    ),
    Sample(seq=8, ts=0.0, host=host_reading(cpu_percent=None, load=None), gpus=[], replay=True),
    Event(seq=9, ts=2.0, kind="xid", gpu=3, xid=79, message="GPU 3: XID 79"),
    Event(seq=10, ts=2.0, kind="ecc", gpu=0, count=2, message="ecc"),
    Event(seq=11, ts=3.0, kind="state", message="drained", state=STATE),
    Event(seq=12, ts=3.0, kind="notice", message="hello"),
    Request(id=1, op="ping"),
    Request(id=2, op="sim_inject", args={"fault": "lost", "gpu": 3}),
    Response(id=1, ok=True, result={"node": "n1", "ts": 1.0}),
    Response(id=2, ok=False, code="forbidden", error="viewer"),
    Error(code="too_large", message="too big", fatal=True),
    Error(code="unexpected", message="ignored"),
]


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_type_round_trips(frame: Frame) -> None:
    line = encode(frame)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    back = decode(line)
    assert type(back) is type(frame)
    assert back == frame
    # Without its newline too.
    assert decode(line[:-1]) == frame


def test_all_frame_types_are_covered() -> None:
    covered = {type(f) for f in ALL_FRAMES}
    assert covered == {Hello, Inventory, Sample, Event, Request, Response, Error}


def test_none_readings_stay_none_never_zero() -> None:
    sample = Sample(seq=1, ts=1.0, host=host_reading(net_rx_bps=None), gpus=[GpuReading(index=0)])
    wire = json.loads(encode(sample))
    gpu = wire["gpus"][0]
    assert gpu["util_gpu"] is None
    assert gpu["power_mw"] is None
    assert wire["host"]["net_rx_bps"] is None
    back = decode(encode(sample))
    assert isinstance(back, Sample)
    r = back.gpus[0]
    for field in GpuReading.__struct_fields__:
        if field in ("index", "lost"):
            continue
        assert getattr(r, field) is None, field
    assert back.host.net_rx_bps is None


def test_zero_readings_stay_zero_not_none() -> None:
    r = GpuReading(index=0, util_gpu=0, power_mw=0, temp_c=0, clock_reasons=[], processes=[])
    back = decode(encode(Sample(seq=1, ts=1.0, host=host_reading(), gpus=[r])))
    assert isinstance(back, Sample)
    got = back.gpus[0]
    assert got.util_gpu == 0
    assert got.power_mw == 0
    assert got.temp_c == 0
    assert got.clock_reasons == []
    assert got.processes == []


def test_audit_entry_round_trips() -> None:
    entry = AuditEntry(
        ts=1.0,
        who="alice",
        uid=1000,
        op="sim_inject",
        args={"fault": "lost", "gpu": 1},
        result="ok",
        before=NodeState(),
        after=STATE,
        request_id=4,
    )
    assert msgspec.json.decode(msgspec.json.encode(entry), type=AuditEntry) == entry


# ---------------------------------------------------------------------------------------------
# Property-based round trips

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
opt_int = st.none() | ints
opt_bool = st.none() | st.booleans()
finite = st.floats(allow_nan=False, allow_infinity=False)
opt_float = st.none() | finite

processes = st.builds(
    GpuProcess,
    pid=ints,
    used_memory=opt_int,
    kind=st.sampled_from(["compute", "graphics"]),
    user=st.none() | st.text(),
    command=st.none() | st.text(),
)

gpu_readings = st.builds(
    GpuReading,
    index=ints,
    lost=st.booleans(),
    util_gpu=opt_int,
    util_mem=opt_int,
    mem_used=opt_int,
    mem_total=opt_int,
    mem_reserved=opt_int,
    temp_c=opt_int,
    temp_mem_c=opt_int,
    power_mw=opt_int,
    energy_mj=opt_int,
    sm_clock_mhz=opt_int,
    mem_clock_mhz=opt_int,
    clock_reasons=st.none() | st.lists(st.text(), max_size=4),
    pstate=opt_int,
    ecc_uncorrected_volatile=opt_int,
    remapped_correctable=opt_int,
    remapped_uncorrectable=opt_int,
    remap_pending=opt_bool,
    remap_failure=opt_bool,
    pcie_tx_kbs=opt_int,
    pcie_rx_kbs=opt_int,
    pcie_width=opt_int,
    processes=st.none() | st.lists(processes, max_size=3),
)

host_readings = st.builds(
    HostReading,
    cpu_percent=opt_float,
    cpu_per_core=st.none() | st.lists(finite, max_size=8),
    load=st.none() | st.tuples(finite, finite, finite),
    mem_total=ints,
    mem_used=ints,
    mem_available=ints,
    swap_total=ints,
    swap_used=ints,
    disk_read_bps=opt_float,
    disk_write_bps=opt_float,
    net_rx_bps=opt_float,
    net_tx_bps=opt_float,
    uptime_s=finite,
    boot_id=st.none() | st.text(),
)

samples = st.builds(
    Sample,
    seq=ints,
    ts=finite,
    host=host_readings,
    gpus=st.lists(gpu_readings, max_size=4),
    replay=st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(gpu_readings)
def test_gpu_reading_round_trips(reading: GpuReading) -> None:
    back = msgspec.json.decode(msgspec.json.encode(reading), type=GpuReading)
    assert back == reading
    # None stays None (a missing reading is never turned into 0 or False).
    for field in GpuReading.__struct_fields__:
        if getattr(reading, field) is None:
            assert getattr(back, field) is None, field


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(samples)
def test_sample_round_trips(sample: Sample) -> None:
    back = decode(encode(sample))
    assert back == sample


# ---------------------------------------------------------------------------------------------
# The decoder against hostile input


def _decode_or_protocol_error(data: bytes) -> Frame | None:
    error: ProtocolError | None = None
    with hang_guard():
        try:
            frame = decode(data)
        except ProtocolError as exc:
            error = exc
    if error is not None:
        assert error.code in {"malformed", "invalid", "too_large", UNKNOWN_KIND}
        assert error.message
        return None
    assert isinstance(frame, Hello | Inventory | Sample | Event | Request | Response | Error)
    return frame


@settings(max_examples=500)
@given(st.binary(max_size=2048))
def test_decode_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


json_values = st.recursive(
    st.none() | st.booleans() | ints | finite | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def near_miss_frames(draw: st.DrawFn) -> bytes:
    """Valid JSON shaped like a real frame with one or more things wrong."""
    frame = draw(st.sampled_from(ALL_FRAMES))
    obj: dict[str, Any] = to_builtins(frame)
    mutations = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    for m in mutations:
        keys = sorted(obj)
        if m == 0 and keys:  # wrong type for a field (the tag included)
            obj[draw(st.sampled_from(keys))] = draw(json_values)
        elif m == 1 and keys:  # drop a field
            del obj[draw(st.sampled_from(keys))]
        elif m == 2:  # unknown or missing tag
            tag = draw(st.none() | st.text(max_size=10) | json_values)
            if tag is None:
                obj.pop("t", None)
            else:
                obj["t"] = tag
        elif m == 3:  # an extra field
            obj[draw(st.text(max_size=8))] = draw(json_values)
        else:  # not an object at all
            return json.dumps(draw(json_values)).encode()
    return json.dumps(obj).encode()


@settings(max_examples=500)
@given(near_miss_frames())
def test_decode_near_miss_json_raises_only_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "malformed"),
        (b"not json", "malformed"),
        (b'{"t": "hello", "proto": "1.0"', "malformed"),
        (b"\xff\xfe\x00", "malformed"),
        (b"[]", "invalid"),
        (b"42", "invalid"),
        (b"{}", "invalid"),  # no tag
        (b'{"t": "bogus"}', UNKNOWN_KIND),  # unknown tag: maybe a later minor's frame
        (b'{"t": 1}', "invalid"),
        (b'{"t": "hello", "software": "x", "peer": "agent"}', "invalid"),  # missing proto
        (b'{"t": "hello", "proto": 1, "software": "x", "peer": "agent"}', "invalid"),
        (b'{"t": "hello", "proto": "1.0", "software": "x", "peer": "martian"}', UNKNOWN_KIND),
        (b'{"t": "request", "id": "1", "op": "ping"}', "invalid"),
        (b'{"t": "request", "id": 1, "op": "ping", "args": []}', "invalid"),
        (b'{"t": "response", "id": 1, "ok": "yes"}', "invalid"),
    ],
)
def test_decode_names_the_problem(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code == code


def test_decode_ignores_unknown_fields_from_newer_minor_versions() -> None:
    frame = decode(b'{"t": "error", "code": "x", "message": "m", "added_in_1_9": [1, 2]}')
    assert frame == Error(code="x", message="m")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"t": "forecast", "horizon_s": 60}', UNKNOWN_KIND),  # a frame type from later
        (b'{"t": "event", "seq": 1, "ts": 1.0, "kind": "fan", "message": "m"}', UNKNOWN_KIND),
        (
            b'{"t": "inventory", "node": "n", "backend": "sim", "state": {"state": "m"}}',
            UNKNOWN_KIND,
        ),
        (b'{"t": "event", "seq": "1", "ts": 1.0, "kind": "xid", "message": "m"}', "invalid"),
        (b'{"t": 7}', "invalid"),
    ],
)
def test_a_type_or_value_from_a_newer_minor_is_told_apart(data: bytes, code: str) -> None:
    """Only what a later minor may add (a frame type, a named value) is ``UNKNOWN_KIND``, which a
    console skips when its agent is newer; a wrong type is a broken frame whoever sent it."""
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.code == code


#: Deeper than any Python's bound on nesting: 1,000 frames up to 3.12, about 10,000 from 3.13
#: (whose C recursion limit msgspec meets), yet a small frame (200 and 600 kB).
DEEP = 100_000


@pytest.mark.parametrize(
    "data",
    [
        b'{"t": "request", "id": 1, "op": "ping", "args": {"a": '
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}}",
        b'{"a": ' * DEEP,
    ],
    ids=["nested-args", "nested-unknown-field"],
)
def test_decode_deeply_nested_json_is_a_protocol_error(data: bytes) -> None:
    assert len(data) < MAX_FRAME_BYTES  # a small frame, well within the size limit
    with pytest.raises(ProtocolError):
        decode(data)


def test_decode_refuses_over_long_line() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b" " * (MAX_FRAME_BYTES + 1))
    assert info.value.code == "too_large"


# ---------------------------------------------------------------------------------------------
# encode's size limit


def _request_of_size(total: int) -> Request:
    """A request whose encoded line, newline included, is exactly ``total`` bytes."""
    overhead = len(encode(Request(id=1, op="ping", args={"x": ""})))
    return Request(id=1, op="ping", args={"x": "a" * (total - overhead)})


def test_encode_accepts_a_frame_of_exactly_the_limit_and_decode_reads_it() -> None:
    line = encode(_request_of_size(MAX_FRAME_BYTES))
    assert len(line) == MAX_FRAME_BYTES
    assert isinstance(decode(line), Request)


def test_encode_refuses_a_frame_over_the_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        encode(_request_of_size(MAX_FRAME_BYTES + 1))
    assert info.value.code == "too_large"
    assert str(MAX_FRAME_BYTES) in info.value.message


# ---------------------------------------------------------------------------------------------
# FrameSplitter

LIMIT = 64

lines_st = st.one_of(
    st.binary(max_size=16),
    st.binary(min_size=LIMIT - 3, max_size=LIMIT + 3),  # around the limit
    st.binary(max_size=3 * LIMIT),
).map(lambda b: b.replace(b"\n", b"x"))


def _expected(lines: list[bytes], limit: int) -> list[bytes | None]:
    out: list[bytes | None] = []
    for line in lines:
        if len(line) + 1 > limit:
            out.append(None)
        elif line.strip():
            out.append(line)
    return out


def _feed_in_pieces(
    splitter: FrameSplitter, stream: bytes, cuts: list[int], limit: int
) -> list[bytes | None]:
    got: list[bytes | None] = []
    points = sorted({c % (len(stream) + 1) for c in cuts})
    prev = 0
    for p in [*points, len(stream)]:
        got.extend(splitter.feed(stream[prev:p]))
        assert splitter.pending <= limit
        prev = p
    return got


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from(ALL_FRAMES), max_size=8),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_splitter_yields_exactly_the_frames_whatever_the_chunking(
    frames: list[Frame], cuts: list[int]
) -> None:
    stream = b"".join(encode(f) for f in frames)
    splitter = FrameSplitter()
    got = _feed_in_pieces(splitter, stream, cuts, MAX_FRAME_BYTES)
    assert [decode(line) for line in got if line is not None] == frames
    assert None not in got
    assert splitter.pending == 0


@settings(max_examples=500)
@given(st.lists(lines_st, max_size=12), st.lists(st.integers(min_value=0), max_size=40))
def test_splitter_property_with_over_long_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    splitter = FrameSplitter(limit=LIMIT)
    got = _feed_in_pieces(splitter, stream, cuts, LIMIT)
    assert got == _expected(lines, LIMIT)
    assert splitter.pending == 0


@settings(max_examples=200)
@given(st.lists(lines_st, max_size=12))
def test_splitter_byte_by_byte(lines: list[bytes]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    splitter = FrameSplitter(limit=LIMIT)
    got: list[bytes | None] = []
    for i in range(len(stream)):
        got.extend(splitter.feed(stream[i : i + 1]))
        assert splitter.pending <= LIMIT
    assert got == _expected(lines, LIMIT)


def test_over_long_line_gives_one_none_and_following_frames_come_through() -> None:
    splitter = FrameSplitter(limit=LIMIT)
    good = encode(Error(code="a", message="b"))
    assert len(good) < LIMIT
    out: list[bytes | None] = []
    out += splitter.feed(b"x" * (LIMIT * 3))  # no newline yet: reported once, discarded
    assert out == [None]
    assert splitter.pending == 0
    out += splitter.feed(b"y" * (LIMIT * 5))  # still the same line: nothing more
    assert splitter.pending == 0
    out += splitter.feed(b"zz\n" + good + good)
    assert out == [None, good.rstrip(b"\n"), good.rstrip(b"\n")]
    assert decode(out[1] or b"") == Error(code="a", message="b")


def test_splitter_boundary_line_of_limit_minus_one_passes() -> None:
    splitter = FrameSplitter(limit=LIMIT)
    ok = b"a" * (LIMIT - 1)
    too_long = b"b" * LIMIT
    assert splitter.feed(ok + b"\n" + too_long + b"\n" + ok + b"\n") == [ok, None, ok]


def test_splitter_reports_a_partial_line_as_soon_as_it_fills_the_limit() -> None:
    splitter = FrameSplitter(limit=LIMIT)
    assert splitter.feed(b"a" * (LIMIT - 1)) == []  # may still end in a newline: a whole frame
    assert splitter.pending == LIMIT - 1
    assert splitter.feed(b"a") == [None]  # can no longer fit: reported now, buffer freed
    assert splitter.pending == 0
    assert splitter.feed(b"aaaa\nok\n") == [b"ok"]


def test_splitter_skips_blank_lines() -> None:
    splitter = FrameSplitter(limit=LIMIT)
    assert splitter.feed(b"\n  \n\t\nabc\n\n") == [b"abc"]


def test_splitter_keeps_partial_frame_pending() -> None:
    splitter = FrameSplitter(limit=LIMIT)
    assert splitter.feed(b"abc") == []
    assert splitter.pending == 3
    assert splitter.feed(b"def\ng") == [b"abcdef"]
    assert splitter.pending == 1


# ---------------------------------------------------------------------------------------------
# Versions


def _hello(proto: str) -> Hello:
    return Hello(proto=proto, software="peer-sw 9.9", peer="console")


@pytest.mark.parametrize("proto", [f"{PROTOCOL_MAJOR}.0", f"{PROTOCOL_MAJOR}.7", "1.0", "1.7"])
def test_check_version_accepts_same_major_any_minor(proto: str) -> None:
    check_version(_hello(proto))


@pytest.mark.parametrize("proto", ["2.0", "0.9", "10.0", "2.7"])
def test_check_version_refuses_other_majors_naming_both(proto: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_version(_hello(proto))
    assert info.value.code == "version"
    assert proto in info.value.message
    assert PROTOCOL_VERSION in info.value.message
    assert "peer-sw 9.9" in info.value.message


@pytest.mark.parametrize(
    "proto",
    [
        "",
        "1",
        "1.",
        ".1",
        ".",
        "a.b",
        "1.x",
        "x.1",
        "1.0.0",
        "v1.0",
        " 1.0",
        "1.0 ",
        "-1.0",
        "1.-0",
    ],
)
def test_garbage_versions_are_refused(proto: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_version(proto)
    assert info.value.code == "version"
    assert repr(proto) in info.value.message
    with pytest.raises(ProtocolError):
        check_version(_hello(proto))


def test_parse_version_reads_numbers() -> None:
    assert parse_version("1.0") == (1, 0)
    assert parse_version("12.345") == (12, 345)


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
def test_parse_version_ascii_text_gives_ints_or_protocol_error(proto: str) -> None:
    well_formed = re.fullmatch(r"([0-9]+)\.([0-9]+)", proto)
    try:
        got = parse_version(proto)
    except ProtocolError as exc:
        code = exc.code
        got = None
    if got is None:
        assert code == "version"
        assert well_formed is None
        return
    assert well_formed is not None
    assert got == (int(well_formed.group(1)), int(well_formed.group(2)))


@pytest.mark.parametrize("proto", ["\u00b2.0", "1.\u00b9", "\u0661.\u0660"])
def test_parse_version_non_ascii_digits_are_protocol_errors(proto: str) -> None:
    with pytest.raises(ProtocolError):
        check_version(_hello(proto))


# ---------------------------------------------------------------------------------------------
# Request arguments


def test_decode_args_unknown_op() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_args(Request(id=1, op="format_disk"))
    assert info.value.code == "unknown_op"
    assert "format_disk" in info.value.message


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"fault": "lost"},
        {"gpu": 0},
        {"fault": "melt", "gpu": 0},
        {"fault": "lost", "gpu": "0"},
        {"fault": "lost", "gpu": 1.0},
        {"fault": "lost", "gpu": True},
        {"fault": "lost", "gpu": None},
        {"fault": 1, "gpu": 0},
        {"fault": "lost", "gpu": 0, "force": True},  # extra field refused
    ],
)
def test_decode_args_bad_sim_inject_args(args: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_args(Request(id=1, op="sim_inject", args=args))
    assert info.value.code == "bad_args"
    assert info.value.message.startswith("sim_inject: ")


@pytest.mark.parametrize("op", ["ping", "whoami", "state"])
def test_decode_args_no_arg_ops_refuse_extra_fields(op: str) -> None:
    assert decode_args(Request(id=1, op=op)) == NoArgs()
    with pytest.raises(ProtocolError) as info:
        decode_args(Request(id=1, op=op, args={"verbose": True}))
    assert info.value.code == "bad_args"
    assert "verbose" in info.value.message


def test_decode_args_good_args_are_typed() -> None:
    line = encode(Request(id=5, op="sim_inject", args={"fault": "overheat", "gpu": 3}))
    request = decode(line)
    assert isinstance(request, Request)
    args = decode_args(request)
    assert isinstance(args, SimInjectArgs)
    assert args == SimInjectArgs(fault="overheat", gpu=3)
    assert args.gpu == 3


def test_every_request_spec_has_a_forbidding_args_struct() -> None:
    for op, spec in REQUEST_SPECS.items():
        assert spec.args.__struct_config__.forbid_unknown_fields, op


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 1000.0 - 90),
        ("30m", 1000.0 - 1800),
        ("1.5h", 1000.0 - 5400),
        ("7d", 1000.0 - 7 * 86400),
        ("1970-01-01T00:10:00", 600.0),
        ("1970-01-01T01:10:00+01:00", 600.0),
    ],
)
def test_since_is_a_duration_or_a_date(text: str, expected: float) -> None:
    assert parse_since(text, now=1000.0) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "-5m", ""])
def test_since_that_is_neither_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since(text, now=1000.0)
