#!/usr/bin/env bash
# bench/gpu_check.sh: the one prepared check that a session lent a GPU machine runs there
# through the device tool. It measures the agent on real NVML (bench/agent_cost.py --backend
# nvml) and captures what the agent says on a real card, for fixtures. See bench/README.md,
# "On a lent GPU machine".
#
# Preparation, here, in the repo root. The machine there has Python 3.12 with psutil and
# nvidia-ml-py, but not msgspec (nor, maybe, click), and it can fetch nothing; so both travel as
# wheels in .whl/, which git must ignore (it must never be committed). The versions are what
# `pip show msgspec click` says here; change them together with that:
#
#   grep -qsx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform manylinux1_x86_64 -d .whl msgspec==0.22.0 click==8.4.0
#
#   (saves msgspec-0.22.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.
#   manylinux_2_28_x86_64.whl and click-8.4.0-py3-none-any.whl, about 350 kB; neither needs
#   another package on Linux)
#
# The device call, one, from this session's tool (about 3 minutes of run time, plus the start):
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
#
# then give_back (unless rerunning at once), keep what bench/README.md says from files_at, and
# `rm -rf .whl`.
#
# What comes back under $OUT (8 files, plain names; the tool brings back no more than 8):
#   gpu_check.log         everything this script printed (the reply's output_tail is its end),
#                         the tables of `once` and agent_cost.py and the serving agent's log too
#   env.txt               versions (driver, nvidia-smi, python, pynvml, msgspec, click, psutil),
#                         nvidia-smi's table and nvidia-smi -q
#   once.json             `python3 -m agents once --json --backend nvml`, the GPU idle
#   once_load.json        the same while a bf16 matrix-product loop keeps the GPU busy
#   agent_cost_nvml.json  bench/agent_cost.py --backend nvml --seconds 60 --warmup 5 --polls 10
#   stream.jsonl          the raw lines a `serve --backend nvml` agent sent one streaming client
#                         (history off) for 60 s: hello, inventory, samples, any events; the GPU
#                         idle, then busy for 30 s (from about 10 s in), then idle again
#   metrics_idle.txt      that agent's /metrics (Prometheus text) with the GPU idle
#   metrics_load.txt      the same, the GPU busy
#
# The load is PyTorch (python3 there has it): bf16 8192x8192 products on the GPU for 30 s, no
# setting of the card changed. Where torch is missing the load step says so and the rest runs.
#
# Every step runs on its own, under its own time limit: one failing does not skip the rest. The
# exit status is 0 when every step passed, else 1. Rehearse it here (no GPU: every step but the
# first fails cleanly, the agent's own with one line each, and the next step still runs):
#
#   OUT=/tmp/gpucheck GPU_CHECK_SKIP_WHEELS=1 bash bench/gpu_check.sh
#
# Knobs (environment): GPU_CHECK_SKIP_WHEELS=1 (use the python3 packages already there),
# GPU_CHECK_BENCH_S (agent_cost window, 60), GPU_CHECK_STREAM_S (stream capture, 60).

set -u
export PYTHONUNBUFFERED=1

if [ -z "${OUT:-}" ]; then
    echo "gpu_check: OUT must name a folder for the results (the device tool sets it)" >&2
    exit 2
fi
cd "$(dirname "$0")/.." || exit 2 # the repo root
mkdir -p "$OUT" || exit 2

# Everything this script prints also goes to $OUT/gpu_check.log (it comes back even if the call
# is cut off at its limit).
if [ -z "${GPU_CHECK_LOGGING:-}" ]; then
    export GPU_CHECK_LOGGING=1
    set -o pipefail
    bash "$0" "$@" 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi

export OUT
export PY=python3
export PYTHONPATH="/tmp/site:$PWD"
export BENCH_S="${GPU_CHECK_BENCH_S:-60}"
export STREAM_S="${GPU_CHECK_STREAM_S:-60}"
export BACKEND="${GPU_CHECK_BACKEND:-nvml}"
export LOAD_S="${GPU_CHECK_LOAD_S:-30}"
export METRICS_ADDR=127.0.0.1:9401
WORK="$(mktemp -d /tmp/gfcheck.XXXXXX)" # short: unix socket paths are at most 108 bytes
export WORK
: >"$WORK/agent.toml" # an empty config: no /etc/gpufleet/agent.toml leaks in
printf '[metrics]\nlisten = "%s"\n' "$METRICS_ADDR" >"$WORK/serve.toml" # /metrics on loopback

RESULTS=()
FAILED=0

# step NAME LIMIT_S FUNCTION: runs FUNCTION in its own bash under `timeout` (which signals its
# whole process group, so an agent it started goes too), notes the outcome, never stops here.
step() {
    local name=$1 limit=$2 fn=$3 t0 rc verdict
    echo
    echo "=== $name (at most ${limit} s)"
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c "$fn"
    rc=$?
    case $rc in
    0) verdict=ok ;;
    124 | 137) verdict="FAILED: timed out after ${limit} s" ;;
    *) verdict="FAILED (exit $rc)" ;;
    esac
    echo "=== $name: $verdict, $(($(date +%s) - t0)) s"
    RESULTS+=("$name: $verdict")
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    return 0
}

wheels() {
    if [ "${GPU_CHECK_SKIP_WHEELS:-}" = 1 ]; then
        echo "skipped (GPU_CHECK_SKIP_WHEELS=1): using the packages python3 has"
        return 0
    fi
    if ! compgen -G '.whl/*.whl' >/dev/null; then
        echo "gpu_check: no wheels in .whl/ (prepare them, and carry [\".whl\"])" >&2
        return 1
    fi
    ls -l .whl/
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
}

environment() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "kernel: $(uname -srm)"
        echo "cpus: $(nproc)"
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo
        echo "\$ nvidia-smi --version"
        timeout 5 nvidia-smi --version 2>&1
        echo
        echo "\$ nvidia-smi"
        timeout 10 nvidia-smi 2>&1
        echo
        timeout 15 "$PY" - <<'PY' 2>&1
import importlib.metadata as md
import sys

print("python", sys.version.split()[0], "at", sys.executable)
for dist in ("nvidia-ml-py", "msgspec", "click", "psutil"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist} NOT INSTALLED")
for mod in ("pynvml", "msgspec", "click", "psutil", "agents"):
    try:
        print(f"import {mod}: {getattr(__import__(mod), '__file__', '(no file)')}")
    except Exception as exc:
        print(f"import {mod}: FAILED: {type(exc).__name__}: {exc}")
try:
    import pynvml as n

    n.nvmlInit()
    print("NVML driver", n.nvmlSystemGetDriverVersion(), "NVML", n.nvmlSystemGetNVMLVersion())
    for i in range(n.nvmlDeviceGetCount()):
        print(f"GPU {i}: {n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(i))}")
    n.nvmlShutdown()
except Exception as exc:
    print(f"NVML: FAILED: {type(exc).__name__}: {exc}")
PY
    } | tee "$OUT/env.txt"
    {
        echo
        echo "\$ nvidia-smi -q"
        timeout 15 nvidia-smi -q 2>&1
    } >>"$OUT/env.txt"
    # The step passes when the driver answers and the agent's packages import.
    command -v nvidia-smi >/dev/null &&
        "$PY" -c 'import pynvml, msgspec, click, psutil, agents' &&
        timeout 5 nvidia-smi -L
}

once_json() {
    "$PY" -m agents once --json --backend "$BACKEND" >"$OUT/once.json" &&
        "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print(len(d["inventory"]["gpus"]), "GPU(s):", [g["name"] for g in d["inventory"]["gpus"]])' \
            "$OUT/once.json"
}

once_table() {
    "$PY" -m agents once --backend "$BACKEND"
}

agent_cost() {
    set -o pipefail
    "$PY" bench/agent_cost.py --backend "$BACKEND" --seconds "$BENCH_S" --warmup 5 --polls 10 \
        --out "$OUT/agent_cost_nvml.json"
}

# load_gpu SECONDS: bf16 matrix products on GPU 0 until SECONDS have passed (PyTorch).
load_gpu() {
    "$PY" - "$1" <<'PY'
import sys
import time

try:
    import torch
except ImportError as exc:
    raise SystemExit(f"load: no PyTorch here ({exc}): the capture stays idle")
seconds = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    n += 20
print(f"load: {n} bf16 8192^3 products in {seconds:.0f} s on {torch.cuda.get_device_name(0)}")
PY
}

# scrape FILE: the serving agent's /metrics into $OUT/FILE.
scrape() {
    "$PY" - "http://$METRICS_ADDR/metrics" "$OUT/$1" <<'PY'
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
    text = reply.read().decode()
open(sys.argv[2], "w").write(text)
families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
print(f"scrape {sys.argv[2]}: {len(text)} bytes, {len(families)} families")
PY
}

# The busy spell during the capture, on the side: an idle scrape, then the load, and while it
# runs a scrape and a one-shot read.
busy_spell() {
    sleep 5
    scrape metrics_idle.txt
    sleep 5
    load_gpu "$LOAD_S" &
    local load=$!
    sleep $((LOAD_S / 2))
    scrape metrics_load.txt
    "$PY" -m agents once --json --backend "$BACKEND" >"$OUT/once_load.json" &&
        echo "once_load.json: $(wc -c <"$OUT/once_load.json") bytes"
    wait "$load"
}

stream() {
    "$PY" -m agents serve --config "$WORK/serve.toml" --backend "$BACKEND" --interval 1 \
        --socket "$WORK/agent.sock" --state-dir "$WORK/state" >"$WORK/serve.log" 2>&1 &
    local pid=$! rc
    for _ in $(seq 150); do # up to 15 s for "serving" in its log
        grep -q serving "$WORK/serve.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q serving "$WORK/serve.log"; then
        echo "gpu_check: the agent did not start serving; its log:" >&2
        cat "$WORK/serve.log" >&2
        kill "$pid" 2>/dev/null
        wait "$pid"
        return 1
    fi
    busy_spell >"$WORK/busy.log" 2>&1 &
    local busy=$!
    # Raw lines as the agent sent them (not re-encoded), for fixtures: our Hello is sent by
    # hand, so that nothing is read before the capture starts.
    "$PY" - "$WORK/agent.sock" "$STREAM_S" 200 "$OUT/stream.jsonl" <<'PY'
import collections
import socket
import sys
import time

from agents.protocol import (
    PROTOCOL_VERSION, Event, FrameSplitter, Hello, Inventory, Sample, check_version, decode,
    encode,
)

path, seconds, max_frames, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5.0)
sock.connect(path)
splitter = FrameSplitter()
kinds: collections.Counter[str] = collections.Counter()
seqs, gaps, last, inventory, sample = [], [], None, None, None
deadline = time.monotonic() + seconds
with open(out, "wb") as f:
    while time.monotonic() < deadline and sum(kinds.values()) < max_frames:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            print("the agent closed the connection", file=sys.stderr)
            break
        for line in splitter.feed(data):
            if line is None:
                raise SystemExit("a frame over the size limit")
            f.write(line + b"\n")
            frame = decode(line)
            kinds[type(frame).__name__] += 1
            if isinstance(frame, Hello) and kinds["Hello"] == 1:
                check_version(frame)
                sock.sendall(encode(Hello(
                    proto=PROTOCOL_VERSION, software="gpufleet bench/gpu_check.sh", peer="tool",
                    history=False, stream=True,
                )))
            elif isinstance(frame, Inventory) and inventory is None:
                inventory = frame
            elif isinstance(frame, Sample):
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last, sample = now, frame
                seqs.append(frame.seq)
            elif isinstance(frame, Event):
                print("event:", frame)
sock.close()
print("frames:", dict(kinds))
if inventory is None or sample is None:
    raise SystemExit("no inventory or no sample received")
print(f"inventory: backend {inventory.backend}, driver {inventory.driver_version}, "
      f"CUDA {inventory.cuda_version}, NVML {inventory.nvml_version}, {len(inventory.gpus)} GPU(s)")
holes = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
print(f"samples: {len(seqs)}, seq {seqs[0]}..{seqs[-1]}, missing {holes or 'none'}, "
      f"gap max {max(gaps, default=0):.3f} s")
for g in sample.gpus:
    none = [k for k in g.__struct_fields__ if getattr(g, k) is None]
    print(f"GPU {g.index}: util {g.util_gpu}% mem {g.mem_used}/{g.mem_total} B temp {g.temp_c} C "
          f"power {g.power_mw} mW sm {g.sm_clock_mhz} MHz reasons {g.clock_reasons}; "
          f"None in the last sample: {', '.join(none) or 'nothing'}")
PY
    rc=$?
    wait "$busy" || rc=1
    echo "--- the busy spell"
    cat "$WORK/busy.log"
    echo "--- watch --count 3 (the human view of the same agent)"
    timeout 15 "$PY" -m agents watch --config "$WORK/agent.toml" --socket "$WORK/agent.sock" \
        --no-history --count 3 || rc=1
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    local agent_rc=$?
    echo "agent stopped by SIGTERM: exit $agent_rc"
    echo "--- the agent's log"
    cat "$WORK/serve.log"
    [ "$agent_rc" -eq 0 ] || rc=1
    return "$rc"
}

export -f wheels environment once_json once_table agent_cost load_gpu scrape busy_spell stream

echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), results in $OUT"
step "install the carried wheels" 30 wheels
step "versions and nvidia-smi (env.txt)" 50 environment
step "once --json (once.json)" 30 once_json
step "once, the table" 30 once_table
step "agent_cost --backend $BACKEND (agent_cost_nvml.json)" 160 agent_cost
step "serve --backend $BACKEND, ${STREAM_S} s of stream, busy ${LOAD_S} s (stream.jsonl, metrics_*.txt, once_load.json)" 110 stream

rm -rf "$WORK"
echo
echo "=== summary"
printf '  %s\n' "${RESULTS[@]}"
ls -l "$OUT"
[ "$FAILED" -eq 0 ]
