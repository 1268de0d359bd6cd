"""The test suite's own rules: under CI=true a skip fails unless ALLOWED_SKIPS names the test,
and the tar unpacking the compatibility tests use stays safe on every Python we claim.

The hook runs in a pytest of its own (pytester) over tiny test files whose conftest takes the
hooks from tests/conftest.py, so what is checked is the very code the suite runs under.
"""

from __future__ import annotations

import ast
import io
import tarfile
from pathlib import Path

import pytest

import tests.conftest as suite
from tests.conftest import REPO, AllowedSkip, extract_tar

#: Python 3.12+ warns on an extractall without ``filter``: here that is the by-hand path run
#: where a filter exists (data_filter removed), checked by these tests themselves.
pytestmark = pytest.mark.filterwarnings("ignore:Python 3.14 will, by default:DeprecationWarning")

#: The inner pytest without the plugins whose session state is process-wide (the snapshot
#: report's temporary directory would be removed under the outer session) or unneeded.
INNER = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:textual-snapshot",
    "-p",
    "no:syrupy",
    "-p",
    "no:asyncio",
)

HOOKS = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"

TESTS = """
import pytest

def test_runs():
    pass

def test_plain_skip():
    pytest.skip("no IPv6 loopback here")

@pytest.mark.skipif(True, reason="marker says no")
def test_skipif():
    pass

@pytest.fixture
def needs_root():
    pytest.skip("needs root")

def test_fixture_skip(needs_root):
    pass

def test_allowed():
    pytest.skip("this machine has a working NVIDIA driver")

def test_allowed_name_other_reason():
    pytest.skip("something else entirely")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
"""


@pytest.fixture
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(test_tiny=TESTS)
    why = AllowedSkip("this machine has a working NVIDIA driver", "GPU machines cannot run it")
    monkeypatch.setitem(suite.ALLOWED_SKIPS, "test_tiny.py::test_allowed", why)
    monkeypatch.setitem(suite.ALLOWED_SKIPS, "test_tiny.py::test_allowed_name_other_reason", why)
    return pytester


def test_under_ci_every_skip_fails_but_the_allowed_one(
    tiny: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "IN_CI", True)
    result = tiny.runpytest(*INNER, "-rA")
    # a skip in setup (skipif, a fixture) is an error at setup; in the test, a failure
    result.assert_outcomes(passed=1, skipped=1, failed=2, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*skipped under CI=true, where every test must run*no IPv6 loopback here*",
            "SKIPPED [[]1[]] test_tiny.py:*: this machine has a working NVIDIA driver",
            "ERROR test_tiny.py::test_skipif*",
            "ERROR test_tiny.py::test_fixture_skip*",
            "FAILED test_tiny.py::test_plain_skip*",
            "FAILED test_tiny.py::test_allowed_name_other_reason*",
        ],
        consecutive=False,
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_outside_ci_a_skip_is_a_skip(
    tiny: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "IN_CI", False)
    result = tiny.runpytest(*INNER)
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_under_ci_a_module_that_skips_itself_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "IN_CI", True)
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(
        test_gone="import pytest\npytest.skip('no GPU', allow_module_level=True)\n"
        "def test_x():\n    pass\n"
    )
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true*no GPU*"])


def test_every_allowed_skip_names_a_test_that_exists_and_says_why() -> None:
    """A renamed test must not leave its entry behind (nor a new test inherit it)."""
    for test_id, allowed in suite.ALLOWED_SKIPS.items():
        path, _, name = test_id.partition("::")
        tree = ast.parse((REPO / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"ALLOWED_SKIPS: {test_id} is not a test"
        assert allowed.reason in (REPO / path).read_text(), f"{test_id} never skips so"
        assert allowed.why.strip(), test_id


# ---------------------------------------------------------------------------------------------
# extract_tar: filter="data" where Python has it (3.11.4+), the same checks by hand before


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, b"x"


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


@pytest.fixture(params=["by hand", *(["filter"] if hasattr(tarfile, "data_filter") else [])])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case as Python before 3.11.4 runs it (no data_filter), and on this Python's own
    filter where it has one."""
    if request.param == "by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


def test_plain_files_and_directories_unpack(tmp_path: Path, python: str) -> None:
    d = tarfile.TarInfo("pkg")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    extract_tar(_tar((d, b""), _file("pkg/a.py"), _file("pkg/run", 0o4777)), tmp_path)
    assert (tmp_path / "pkg" / "a.py").read_bytes() == b"x"
    assert (tmp_path / "pkg" / "run").stat().st_mode & 0o7777 == 0o755, "setuid, o+w cleared"


@pytest.mark.parametrize(
    "member",
    [
        _file("../escaped"),
        _file("/tmp/absolute-from-a-tar"),
        _file("pkg/../../escaped"),
        _link("pkg/link", "/etc/passwd", tarfile.SYMTYPE),
        _link("pkg/hard", "/etc/passwd", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "hardlink-out"],
)
def test_what_escapes_is_refused_and_nothing_is_written(
    tmp_path: Path, python: str, member: tuple[tarfile.TarInfo, bytes]
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    if python == "filter" and member[0].name.startswith("/"):
        extract_tar(_tar(member), dest)  # the filter strips the leading slash: inside dest
        assert (dest / member[0].name.lstrip("/")).exists()
    else:
        with pytest.raises(tarfile.TarError):
            extract_tar(_tar(member), dest)
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/absolute-from-a-tar").exists()
    if python == "by hand":  # checked before anything is written
        assert list(dest.iterdir()) == []
