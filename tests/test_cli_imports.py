"""Issue #19: the CLI modules import each other in one direction only (cli → cli_edit →
cli_common), at module and function level, and the dead import guard is gone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hmar_core"


def _imported_modules(name: str) -> set[str]:
    """Every hmar_core module ``name`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from .x import y / from . import x
                found |= {module} if module else {a.name for a in node.names}
            elif module.startswith("hmar_core."):
                found.add(module.removeprefix("hmar_core."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("hmar_core.") for a in node.names
                      if a.name.startswith("hmar_core.")}
    return found


@pytest.mark.parametrize(("module", "forbidden"), [("cli_edit", {"cli"}),
                                                   ("cli_common", {"cli", "cli_edit"}),
                                                   ("cli_outputs", {"cli", "cli_edit"})])
def test_no_import_cycle(module, forbidden):
    assert not _imported_modules(module) & forbidden


def test_cli_has_no_import_guard():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    handlers = [n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)]
    assert not any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in handlers)
    assert "cli_edit" in _imported_modules("cli")


def test_edit_commands_are_registered():
    from hmar_core.cli import build_parser

    parser = build_parser()
    for command in ("inpaint", "outpaint", "edit"):
        assert parser.parse_args([command, "x.png", "y.png"] if command == "inpaint"
                                 else [command, "x.png", "--class", "1"]).command == command
