"""Stand-ins for node tools that cannot run here: ``systemctl`` (systemd is not PID 1 on this
machine, and a real reboot must never happen in a test), ``nvidia-smi`` (no GPU) and
``kubectl`` (no Kubernetes API). Each is a real executable the agent runs as an argv, exactly
as it runs the real tool; each records the argv it was given, one JSON list per line.

The kubectl stand-in keeps one node's object in a JSON file and answers the handful of
commands the adapter uses, its messages modelled on kubectl's own for the cases the tests
exercise (a node not found, an eviction a PodDisruptionBudget blocks). It is not Kubernetes:
what it proves is the argv the adapter runs and how the agent reads the answers. So it
takes exactly the argv the adapter is meant to run (``KUBECTL_FORMS``), every word and flag:
anything else (a flag dropped, added or spelt another way) it refuses loudly, exiting 2 with
the argv on stderr and in ``kubectl.refused`` (``refused``), so a change to the adapter's
commands fails the tests instead of passing unread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_RECORDER = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.stderr.write({stderr!r})
sys.exit({code})
"""


def recorder(where: Path, name: str, *, code: int = 0, stderr: str = "") -> Path:
    """An executable ``where/name`` that records its argv to ``where/name.log`` and exits
    ``code`` after printing ``stderr``."""
    path = where / name
    log = where / f"{name}.log"
    path.write_text(_RECORDER.format(python=sys.executable, log=str(log), stderr=stderr, code=code))
    path.chmod(0o755)
    return path


def calls(tool: Path) -> list[list[str]]:
    """What the recorder at ``tool`` was run with, oldest first."""
    log = tool.parent / f"{tool.name}.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"

#: The argv the stand-in takes, a regular expression a word (``_NAME``: a node's name): the
#: commands ``agents/schedulers/kube.py`` runs, and nothing else (a label: ``KEY=VALUE``).
KUBECTL_FORMS: tuple[tuple[str, ...], ...] = (
    ("get", "node", _NAME, "--output=json"),
    ("cordon", _NAME),
    ("uncordon", _NAME),
    ("drain", _NAME, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=[1-9][0-9]*s"),
    ("label", "node", _NAME, r"[-A-Za-z0-9_./]+=[-A-Za-z0-9_.]*", "--overwrite"),
)

_KUBECTL = """#!{python}
import json, re, sys, time
STATE = {state!r}
LOG = {log!r}
FORMS = {forms!r}
args = sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps(args) + "\\n")
if not any(
    len(form) == len(args) and all(re.fullmatch(w, a) for w, a in zip(form, args))
    for form in FORMS
):
    with open({refused!r}, "a") as f:
        f.write(json.dumps(args) + "\\n")
    sys.stderr.write(
        "kubectl stand-in (tests/fakes/tools.py): refused argv %s, not one the adapter is"
        " meant to run (KUBECTL_FORMS)\\n" % json.dumps(args)
    )
    sys.exit(2)
with open(STATE) as f:
    world = json.load(f)
node = world["node"]

def save():
    with open(STATE, "w") as f:
        json.dump(world, f)

def missing(name):
    sys.stderr.write('Error from server (NotFound): nodes "%s" not found\\n' % name)
    sys.exit(1)

verb = args[0]
if verb == "get":
    if args[2] != node["metadata"]["name"]:
        missing(args[2])
    print(json.dumps(node))
elif verb in ("cordon", "uncordon"):
    if args[1] != node["metadata"]["name"]:
        missing(args[1])
    node["spec"]["unschedulable"] = verb == "cordon"
    save()
    print("node/%s %s" % (args[1], "cordoned" if verb == "cordon" else "uncordoned"))
elif verb == "drain":
    if args[1] != node["metadata"]["name"]:
        missing(args[1])
    node["spec"]["unschedulable"] = True
    save()
    time.sleep(world.get("evict_seconds", 0))
    if world.get("pdb"):
        sys.stderr.write(
            "error when evicting pods/\\"train-0\\" -n \\"default\\" (will retry after 5s): "
            "Cannot evict pod as it would violate the pod's disruption budget.\\n"
            "There are pending pods in node \\"%s\\" when an error occurred: "
            "error when evicting pods/\\"train-0\\" -n \\"default\\": global timeout reached: "
            "%s\\n" % (args[1], [a for a in args if a.startswith("--timeout=")][0][10:])
        )
        sys.exit(1)
    print("node/%s drained" % args[1])
elif verb == "label":
    if args[2] != node["metadata"]["name"]:
        missing(args[2])
    key, _, value = args[3].partition("=")
    node["metadata"]["labels"][key] = value
    save()
    print("node/%s labeled" % args[2])
"""


def fake_kubectl(
    where: Path, node: str, *, pool: str | None = None, evict_seconds: float = 0, pdb: bool = False
) -> Path:
    """A kubectl stand-in holding one node; ``pdb`` makes eviction fail as a disruption
    budget would, ``evict_seconds`` makes it take that long."""
    state = where / "kube-node.json"
    labels = {"gpufleet.io/pool": pool} if pool else {}
    world = {
        "node": {"metadata": {"name": node, "labels": labels}, "spec": {}},
        "evict_seconds": evict_seconds,
        "pdb": pdb,
    }
    state.write_text(json.dumps(world))
    path = where / "kubectl"
    log = where / "kubectl.log"
    refused = where / "kubectl.refused"
    path.write_text(
        _KUBECTL.format(
            python=sys.executable, state=str(state), log=str(log), refused=str(refused),
            forms=KUBECTL_FORMS,
        )
    )  # fmt: skip
    path.chmod(0o755)
    return path


def kube_node(kubectl: Path) -> dict[str, object]:
    """The stand-in's node object now."""
    world = json.loads((kubectl.parent / "kube-node.json").read_text())
    node: dict[str, object] = world["node"]
    return node


def refused(kubectl: Path) -> list[list[str]]:
    """The argv the kubectl stand-in at ``kubectl`` refused, oldest first."""
    log = kubectl.parent / "kubectl.refused"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
