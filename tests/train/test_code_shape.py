"""The trainers share one skeleton and stay readable (issue 19): no function in ``train/``
longer than 100 lines, and the loop lives only in ``train/skeleton.py``."""

from __future__ import annotations

import ast

from train_helpers import REPO


def _functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_train_is_longer_than_100_lines():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((REPO / "train").rglob("*.py"))
            for node in _functions(path) if node.end_lineno - node.lineno + 1 > 100]
    assert not long, long


def test_the_training_loop_is_written_once():
    """Only the skeleton iterates ``while step < total`` and writes checkpoints."""
    owners = sorted(path.name for path in (REPO / "train").glob("*.py")
                    if "while step < " in path.read_text()
                    or "CheckpointManager(" in path.read_text())
    assert owners == ["skeleton.py"], owners
