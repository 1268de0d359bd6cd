"""The docs a user's clone has: nothing they point at may lie outside the repository, and
every ``design.md §N`` the code cites must be a section of docs/design.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.quality

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: A markdown link's target: [text](target).
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: A path a reader is sent to outside the clone: ../something, however it is quoted.
OUTSIDE = re.compile(r"(?<![\w.])\.\./[\w./-]*")
CITED = re.compile(r"design\.md §(\d+)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_point_at_nothing_outside_the_repository(doc: Path) -> None:
    text = _text(doc)
    assert OUTSIDE.findall(text) == [], f"{doc.name} sends the reader outside the repository"
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        where = (doc.parent / target.split("#")[0]).resolve()
        assert where.is_relative_to(REPO), f"{doc.name} links {target}, outside the repository"
        assert where.exists(), f"{doc.name} links {target}, which is not in the repository"


def test_the_design_is_in_the_repository_and_every_cited_section_exists() -> None:
    design = REPO / "docs" / "design.md"
    assert "docs/design.md" in _text(REPO / "README.md")
    sections = set(re.findall(r"^## (\d+)\. ", _text(design), flags=re.MULTILINE))
    cited: dict[str, set[str]] = {}
    for path in [*REPO.glob("*.md"), *REPO.glob("docs/*.md")] + [
        p for top in ("agents", "console", "tests", "bench") for p in (REPO / top).rglob("*.py")
    ]:
        for number in CITED.findall(_text(path)):
            cited.setdefault(number, set()).add(str(path.relative_to(REPO)))
    missing = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert cited and not missing, f"cited sections docs/design.md lacks: {missing}"
