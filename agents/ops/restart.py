"""What ``restart`` may touch on this node: a closed list the node's own config allows.

Targets are the agent itself (``agent``), the whole node (``node``), one GPU (``gpu0``...), and
the systemd units the config names (``slurmd.service``...). Nothing else: the target is looked
up in the list, never passed to a tool as given, so a request cannot name a unit the site did
not allow. Each target maps to one argv (no shell):

    agent          systemctl restart gpufleet-agent.service   (after the reply: it ends us)
    node           systemctl reboot                           (after the reply; drained only)
                   or Slurm's ``scontrol reboot ASAP nextstate=RESUME`` where Slurm runs it
    gpuN           nvidia-smi --gpu-reset -i N                (only when that GPU is idle)
    UNIT.service   systemctl restart UNIT.service
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

AGENT: Final = "agent"
NODE: Final = "node"
_GPU = re.compile(r"gpu(\d{1,2})")
#: A systemd unit name as a site would write one; never starting with "-" (not an option).
UNIT_NAME: Final = re.compile(
    r"[A-Za-z0-9_@:.\\][A-Za-z0-9_@:.\\-]*\.(service|socket|target|mount|timer|path)"
)


def gpu_index(target: str) -> int | None:
    m = _GPU.fullmatch(target)
    return int(m.group(1)) if m else None


def allowed_targets(
    *, agent: bool, node: bool, gpu_reset: bool, units: Sequence[str], gpus: Sequence[int]
) -> list[str]:
    """The targets this node accepts, in the order an operator is offered them."""
    out = ([AGENT] if agent else []) + ([NODE] if node else [])
    out += [f"gpu{i}" for i in gpus] if gpu_reset else []
    return out + list(units)


def unit_argv(systemctl: str, unit: str) -> list[str]:
    return [systemctl, "restart", unit]


def reboot_argv(systemctl: str) -> list[str]:
    return [systemctl, "reboot"]


def gpu_reset_argv(nvidia_smi: str, index: int) -> list[str]:
    return [nvidia_smi, "--gpu-reset", "-i", str(index)]
