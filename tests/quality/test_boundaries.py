"""The package boundaries design.md §1 sets, checked on the source and at import time.

- ``agents/`` (what runs on a node) never imports the console, Textual or asyncssh.
- ``console/`` imports nothing from ``agents`` but the shared wire protocol.
- the console's headless core (everything outside its TUI package) never imports Textual.
- each layer folder loads only what its layer may (``LAYERS``): the model and the words loaded
  by a fresh interpreter pull in no screen and no SSH, whoever imports them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.quality

TUI_PARTS = ("tui",)  # console/tui/...: the only place Textual may be imported


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


def test_agents_never_import_the_console_textual_or_asyncssh() -> None:
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {name}"
        for p in _modules("agents")
        for line, name in _imports(p)
        if _top(name) in ("console", "textual", "asyncssh")
    ]
    assert bad == []


#: The one exception: the demo plays the nodes' part too, so it runs the agent's own daemon.
NODE_PLAYERS = ("demo.py",)


def test_console_imports_only_the_protocol_from_agents() -> None:
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {name}"
        for p in _modules("console")
        if p.name not in NODE_PLAYERS
        for line, name in _imports(p)
        if _top(name) == "agents" and name.partition(".protocol")[0] != "agents"
    ]
    assert bad == []


def test_console_core_is_headless() -> None:
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {name}"
        for p in _modules("console")
        if not set(p.relative_to(REPO / "console").parts) & set(TUI_PARTS)
        for line, name in _imports(p)
        if _top(name) == "textual"
    ]
    assert bad == []


def test_importing_every_agent_module_loads_no_ui_or_ssh() -> None:
    modules = [
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in _modules("agents")
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "banned = ('textual', 'asyncssh', 'console')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


#: What importing each layer may not load, module by module, in a fresh interpreter (so what
#: a module drags in through its own imports counts, not only what it names). Textual and Rich
#: draw the screen; asyncssh is the SSH transport; click is the command line.
SCREEN: Final = ("textual", "rich")
LAYERS: Final[dict[str, tuple[str, ...]]] = {
    "agents": ("console", "textual", "rich", "asyncssh"),
    "agents/protocol": ("console", "textual", "rich", "asyncssh", "click", "psutil", "pynvml"),
    "console/model": (*SCREEN, "asyncssh", "click"),
    "console/present": (*SCREEN, "asyncssh", "click"),
    "console/sources": (*SCREEN, "click"),
    "console/sources/prometheus": (*SCREEN, "click", "asyncssh"),
    "console/ops/actions.py": (*SCREEN, "asyncssh", "click"),
    "console/ops": (*SCREEN,),
}


def _layer_modules(place: str) -> list[str]:
    path = REPO / place
    files = [path] if path.suffix == ".py" else _modules(place)
    return [
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in files
        if p.name != "__main__.py"
    ]


@pytest.mark.parametrize("place", sorted(LAYERS))
def test_each_layer_loads_only_what_it_may(place: str) -> None:
    """Modules are imported one at a time; the first one after which a banned package is in
    ``sys.modules`` is the one that brought it in, and is named."""
    code = (
        "import importlib, json, sys\n"
        f"banned = {LAYERS[place]!r}\n"
        "seen, blame = set(), []\n"
        f"for m in {_layer_modules(place)!r}:\n"
        "    importlib.import_module(m)\n"
        "    now = {n.split('.')[0] for n in sys.modules} & set(banned)\n"
        "    blame += [f'{m} loads {b}' for b in sorted(now - seen)]\n"
        "    seen |= now\n"
        "print(json.dumps(blame))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
