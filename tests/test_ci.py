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


def test_every_slow_pattern_names_existing_test_files():
    files = [path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")]
    patterns = _slow_patterns()
    assert patterns
    stale = [pattern for pattern in patterns
             if not any(fnmatch.fnmatchcase(f"{name}::x", pattern.split("::")[0] + "::*")
                        or fnmatch.fnmatchcase(name, pattern.split("::")[0])
                        for name in files)]
    assert not stale, f"SLOW_TESTS patterns that match no test file: {stale}"
