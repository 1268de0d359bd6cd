"""Nothing but our own words on an operator's terminal, whatever the dependencies' versions.

cryptography 51 deprecates DSA: every attribute asyncssh reads from its ``dsa`` module (at import,
and again when a DSA key is loaded) warns on stderr. These run the commands as an operator does,
the installed scripts included, against whatever cryptography this environment has (CI also runs
them against the newest one allowed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, installed

pytestmark = pytest.mark.integration


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "console", "--help"],
        [sys.executable, "-m", "agents", "--help"],
        ["gpufleet", "--help"],
        ["gpufleet-agent", "--help"],
        [sys.executable, "-m", "console", "status", "--help"],
        [sys.executable, "-m", "console", "demo", "--help"],
    ],
    ids=lambda argv: " ".join(Path(a).name for a in argv[-3:]),
)
def test_help_writes_nothing_to_stderr(argv: list[str]) -> None:
    out = _run([argv[0] if "/" in argv[0] else installed(argv[0]), *argv[1:]])
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "Usage:" in out.stdout


def test_a_one_line_error_stays_one_line() -> None:
    out = _run([sys.executable, "-m", "console", "status", "--inventory", "/nonexistent.toml"])
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("gpufleet: error: ")


def test_loading_a_dsa_key_after_start_warns_nothing() -> None:
    """asyncssh reads the deprecated names again when it meets a DSA key (an old id_dsa, a
    known_hosts line): the filter holds for the life of the process, not only the import."""
    code = (
        "import console.sources.ssh.link, asyncssh\n"
        "from asyncssh.crypto.dsa import DSAPrivateKey\n"
        "k = DSAPrivateKey.generate(1024)\n"
        "print(type(k).__name__)\n"
    )
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_our_own_and_other_code_warnings_still_show() -> None:
    """The filter is for asyncssh's use of deprecated cryptography only: a warning of ours, and
    cryptography's deprecations raised anywhere else, still reach stderr."""
    code = (
        "import warnings, console.sources.ssh.link\n"
        "warnings.warn('ours, still shown', stacklevel=1)\n"
        "from cryptography.utils import CryptographyDeprecationWarning as C\n"
        "warnings.warn('not asyncssh, still shown', C, stacklevel=1)\n"
    )
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert "UserWarning: ours, still shown" in out.stderr
    assert "CryptographyDeprecationWarning: not asyncssh, still shown" in out.stderr
