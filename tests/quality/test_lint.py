"""ruff (lint and format) and mypy --strict over the tree, as part of the test command, so a
change that breaks them cannot land green."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, installed

pytestmark = pytest.mark.quality


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=REPO, timeout=600)


def test_ruff_lint() -> None:
    out = _run(installed("ruff"), "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = _run(installed("ruff"), "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict() -> None:
    installed("mypy")
    out = _run(sys.executable, "-m", "mypy")
    assert out.returncode == 0, out.stdout + out.stderr
