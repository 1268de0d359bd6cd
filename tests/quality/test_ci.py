"""What CI runs stays what the README says, on the versions and Pythons the project claims."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.quality

CI = REPO / ".ci" / "run"


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", readme, re.S)
    assert block is not None, "README.md opens with its set-up commands"
    return block.group(1).strip().splitlines()


def test_the_readme_opens_with_two_commands_and_ci_runs_the_second() -> None:
    install, tests = _setup_commands()
    assert install.startswith("pip install -e . && ")
    assert "-c constraints.txt" in tests, "the tests run on the known-good versions"
    body = re.search(r"readme_tests\(\) \{\n(.*?)\n\}", CI.read_text(), re.S)
    assert body is not None, ".ci/run has a readme_tests step"
    assert body.group(1).strip() == tests


def test_constraints_pin_every_dependency_the_tests_install() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, f"constraints.txt: {line!r} is not a pin (name==version)"
            pins[_name(line)] = line
    assert wanted - pins.keys() == set(), "pin them in constraints.txt (pip freeze)"
    assert "gpufleet" not in pins, "the project itself is installed from the checkout"


def test_ci_tests_every_python_the_project_claims() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    claimed = sorted(
        c.rpartition(" :: ")[2]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    floor = re.fullmatch(r">=(3\.\d+)", project["requires-python"])
    assert floor is not None and claimed[0] == floor.group(1), "the floor is the oldest tested"
    loop = re.search(r"for minor in ([0-9. ]+); do", CI.read_text())
    assert loop is not None
    # the floor runs as the default interpreter and as the system's own python3
    assert sorted([floor.group(1), *loop.group(1).split()]) == claimed


def test_ci_script_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    out = subprocess.run([bash, "-n", str(CI)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
