"""The README and docs/ point only at files a clone of the repository has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_paths_stay_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "../" not in text, "a path outside the repository, which a clone does not have"
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (doc.parent / target).exists(), target


def test_the_readme_links_the_architecture_notes() -> None:
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
