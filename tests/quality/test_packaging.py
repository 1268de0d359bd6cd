"""What an installed gpufleet holds: every file of its packages that is not Python is named in
``[tool.setuptools.package-data]``, or a wheel (``pip install .``, not ``-e``) would leave it
out. The screen's stylesheet was left out so: the fleet screen of an installed console would
not start."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.quality


def test_every_data_file_of_the_packages_is_package_data() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns: dict[str, list[str]] = data["package-data"]
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "agents", "console"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    # setuptools expands each pattern as a glob under its package's folder ("*" stays in one)
    shipped = {
        str(found.relative_to(REPO))
        for package, globs in patterns.items()
        for pattern in globs
        for found in (REPO / package).glob(pattern)
    }
    left_out = [path for path in tracked if not path.endswith(".py") and path not in shipped]
    assert left_out == []
