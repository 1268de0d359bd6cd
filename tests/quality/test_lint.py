"""ruff (lint and format) and mypy --strict over the tree, as part of the test command, so a
change that breaks them cannot land green."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, skip_or_fail

pytestmark = pytest.mark.quality


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=REPO, timeout=600)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not installed (pip install -e '.[test]')")
        raise AssertionError("unreachable")
    return path


def test_ruff_lint() -> None:
    out = _run(_tool("ruff"), "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = _run(_tool("ruff"), "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict() -> None:
    _tool("mypy")
    out = _run(sys.executable, "-m", "mypy")
    assert out.returncode == 0, out.stdout + out.stderr
