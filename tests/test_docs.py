"""The documentation stays true: the generated recipe reference is current, every relative link in README.md and
docs/*.md leads somewhere that exists, and README.md stays a front door."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from tflite_pipeline.config.reference import COMMAND, recipe_reference

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
README_MAX_LINES = 220

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|!\[[^\]]*\]\(\s*([^)\s]+)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (links in code are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def _links(path: Path) -> list[str]:
    found = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in _LINK.finditer(line):
            found.append(match.group(1) or match.group(2))
    return found


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)          # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            base = _anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def _relative_links() -> list[tuple[Path, str, Path, str]]:
    """(document, link as written, the file it points to, its #fragment) for every relative link."""
    out = []
    for doc in DOCS:
        for link in _links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.IGNORECASE):   # http:, https:, mailto:
                continue
            target, _, fragment = link.partition("#")
            path = doc if not target else (doc.parent / unquote(target)).resolve()
            out.append((doc, link, path, unquote(fragment)))
    return out


@pytest.mark.fast
def test_recipe_reference_is_current():
    written = (REPO / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert written == recipe_reference(), (
        f"docs/recipe-reference.md is not what tflite_pipeline/config/reference.py generates from "
        f"tflite_pipeline/config/sections.py; regenerate it with `{COMMAND}`")


@pytest.mark.fast
def test_recipe_reference_covers_every_field_and_imports_no_tensorflow():
    code = ("import sys; from tflite_pipeline.config.reference import recipe_reference; recipe_reference(); "
            "print('tensorflow' in sys.modules or 'tf_keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False", "tflite_pipeline.config.reference must not import TensorFlow"

    import dataclasses

    from tflite_pipeline.config.recipe import SECTIONS

    text = recipe_reference()
    for name, cls in SECTIONS.items():
        assert f"## [{name}]" in text
        for f in dataclasses.fields(cls):
            assert f"| `{name}.{f.name}` |" in text, f"{name}.{f.name} is missing from the recipe reference"


@pytest.mark.fast
def test_every_relative_link_points_to_an_existing_file():
    links = _relative_links()
    assert links, "found no relative links at all: the link pattern is broken"
    missing = [f"{doc.relative_to(REPO)}: ({link})" for doc, link, path, _ in links if not path.exists()]
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


@pytest.mark.fast
def test_every_link_to_a_heading_finds_it():
    broken = []
    for doc, link, path, fragment in _relative_links():
        if fragment and path.suffix == ".md" and path.exists() and fragment not in _anchors(path):
            broken.append(f"{doc.relative_to(REPO)}: ({link}); headings there: {sorted(_anchors(path))}")
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


@pytest.mark.fast
def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference material into docs/")
