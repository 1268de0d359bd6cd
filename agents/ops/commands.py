"""Running the node's own tools (scontrol, kubectl, systemctl, nvidia-smi) for an action.

Always an argv list, never a shell: a reason like ``$(reboot)`` is one argument to scontrol,
not a command. Always with a deadline: a hung slurmctld must not hang the request, so past it
the process is killed and the action is reported as timed out. What the tool printed on error
is passed back verbatim (one line, clipped): the operator needs Slurm's words, not ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.protocol import GpufleetError, RefusalCode, clip

log = logging.getLogger(f"gpufleet.{__name__}")

#: How much of a tool's output is kept; an error message is a line or two.
MAX_OUTPUT = 1 << 20


class CommandFailed(GpufleetError):
    """The tool could not be run, ran past its deadline, or exited non-zero. ``code`` says
    which, for scripts; the message carries the tool's own words."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Finished:
    argv: tuple[str, ...]
    stdout: str
    stderr: str


def _said(stdout: str, stderr: str) -> str:
    """The tool's own words: its stderr, else its stdout, as one line."""
    text = (stderr.strip() or stdout.strip()).replace("\n", "; ")
    return clip(text, 800)


async def run_argv(
    argv: Sequence[str], *, limit: float, env: Mapping[str, str] | None = None
) -> Finished:
    """Run ``argv`` (no shell) to completion within ``limit`` seconds.

    ``env`` is added to the agent's environment (SLURM_CONF, KUBECONFIG). Raises CommandFailed:
    ``not_found`` (no such program), ``timeout`` (killed at the deadline), ``command_failed``
    (non-zero exit; the message is what the tool said)."""
    path = shutil.which(argv[0])
    program = os.path.basename(argv[0])  # messages say "scontrol: ...", as the tool would
    if path is None:
        raise CommandFailed("not_found", f"{program}: not found on this node")
    full_env = {**os.environ, **env} if env else None
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            *argv[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,  # our signals (a console's Ctrl-C) are not the tool's
        )
    except OSError as exc:
        raise CommandFailed("not_found", f"{program}: cannot run: {exc.strerror}") from None
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        raise CommandFailed("timeout", f"{program}: no answer within {limit:g} s; killed") from None
    finally:
        if proc.returncode is None:  # past the deadline, or the request was cancelled
            proc.kill()
            await asyncio.shield(proc.wait())
    stdout = out[:MAX_OUTPUT].decode(errors="replace")
    stderr = err[:MAX_OUTPUT].decode(errors="replace")
    if proc.returncode != 0:
        words = _said(stdout, stderr) or "(it printed nothing)"
        log.warning("%s exited %s: %s", program, proc.returncode, words)
        raise CommandFailed("command_failed", f"{program}: {words}")
    return Finished(tuple(argv), stdout, stderr)
