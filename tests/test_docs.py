"""The README stays a short entry point: at most 150 lines, no paragraph copied from docs/, and
every relative link leads to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 150
# Shorter blocks (headings, one-line commands, table rules) may repeat legitimately.
MIN_PARAGRAPH_CHARS = 80


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, whitespace collapsed."""
    blocks = (" ".join(block.split()) for block in re.split(r"\n\s*\n", text))
    return [block for block in blocks if len(block) >= MIN_PARAGRAPH_CHARS]


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_readme_is_at_most_150_lines():
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_no_readme_paragraph_also_in_docs():
    docs = {path.relative_to(ROOT).as_posix(): _normalised(path.read_text())
            for path in sorted((ROOT / "docs").rglob("*.md"))}
    copied = [(name, paragraph[:60]) for paragraph in _paragraphs(README.read_text())
              for name, text in docs.items() if paragraph in text]
    assert not copied


def test_readme_relative_links_exist():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local
    assert [t for t in local if not (ROOT / t).exists()] == []
