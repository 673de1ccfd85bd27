"""CI lints before it tests, and the slow-tier list of tests/conftest.py names real tests."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _slow_patterns() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "SLOW_TESTS"
                for target in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("tests/conftest.py has no SLOW_TESTS")


def test_ci_runs_ruff_check_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    ruff = next(i for i, line in enumerate(lines) if line.endswith("ruff check ."))
    tests = next(i for i, line in enumerate(lines) if "scripts/test.sh" in line
                 and not line.startswith("#"))
    assert ruff < tests
    assert any(line.startswith("ruff") for line in
               (ROOT / "requirements-dev.txt").read_text().splitlines())


def test_every_slow_entry_names_existing_tests():
    files = [path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")]
    entries = _slow_patterns()
    assert entries
    stale = []
    for entry in entries:
        file_part, _, test = entry.partition("::")
        matching = [name for name in files if fnmatch.fnmatchcase(name, file_part)
                    or fnmatch.fnmatchcase(f"{name}::x", entry)]
        if not matching:
            stale.append(entry)
        elif test and "*" not in test and f"def {test}(" not in (ROOT / matching[0]).read_text():
            stale.append(entry)
    assert not stale, f"SLOW_TESTS entries that name no test: {stale}"
