"""``gpufleet``: the operator's console.

The fleet commands (status, the TUI, drain/resume/restart/reassign) arrive with the console's
transport and screen; until then this entry point only reports its version and says so.
"""

from __future__ import annotations

import click

from agents.protocol import PROTOCOL_VERSION
from console import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, prog_name="gpufleet", message=f"%(prog)s %(version)s (protocol {PROTOCOL_VERSION})"
)
def main() -> None:
    """Watch a GPU fleet live and act on it. (The fleet commands are not built yet: for now
    run `gpufleet-agent demo` to see what a node's agent streams.)"""
