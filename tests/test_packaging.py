"""The package metadata of pyproject.toml: console scripts, dependencies, package data and no
``sys.path`` edits outside the tests."""

from __future__ import annotations

import fnmatch
import importlib
import re
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hmar_core", "kernels", "train", "app")

#: Console scripts whose target module is not in the tree yet (none).
PENDING_SCRIPTS: dict[str, str] = {}

#: Files allowed to edit sys.path outside tests (none).
SYS_PATH_EXEMPT: set[str] = set()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower()


def _resolve(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_console_scripts_resolve_to_callables():
    scripts = _pyproject()["project"]["scripts"]
    assert {"hmar", "hmar-studio"} <= set(scripts)
    for name, target in scripts.items():
        if PENDING_SCRIPTS.get(name) == target.partition(":")[0]:
            if (ROOT / (target.partition(":")[0].replace(".", "/") + ".py")).exists():
                pytest.fail(f"{target} exists now: remove {name!r} from PENDING_SCRIPTS")
            continue
        assert callable(_resolve(target)), name


def test_hmar_help_lists_the_commands(capsys: pytest.CaptureFixture[str]):
    main = _resolve(_pyproject()["project"]["scripts"]["hmar"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "convert", "inpaint", "outpaint", "edit"):
        assert command in out


def test_runtime_dependencies_mirror_requirements_txt():
    project = _pyproject()["project"]
    declared = {_requirement_name(dep) for dep in project["dependencies"]}
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = {_requirement_name(line) for line in lines if line.strip() and line[0] != "#"}
    assert declared == pinned
    dev_lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    dev = {_requirement_name(line) for line in dev_lines
           if line.strip() and line[0] not in "#-"}
    assert {_requirement_name(dep) for dep in project["optional-dependencies"]["dev"]} == dev


def test_torch_is_a_range_in_pyproject_and_pinned_in_requirements():
    torch_dep = next(d for d in _pyproject()["project"]["dependencies"]
                     if _requirement_name(d) == "torch")
    assert "==" not in torch_dep and ">=" in torch_dep
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().split()


def test_package_data_covers_every_file_the_packages_read():
    config = _pyproject()["tool"]["setuptools"]
    include = config["packages"]["find"]["include"]
    assert set(PACKAGES) <= set(include)
    globs = config.get("package-data", {})
    missing = []
    for top in PACKAGES:
        for path in _tracked(top):
            rel = path.relative_to(ROOT)
            if path.suffix in {".py", ".md"}:
                continue
            owner = next(
                ".".join(rel.parts[:i]) for i in range(len(rel.parts) - 1, 0, -1)
                if (ROOT.joinpath(*rel.parts[:i]) / "__init__.py").exists())
            inside = rel.relative_to(*owner.split(".")).as_posix()
            if not any(fnmatch.fnmatch(inside, g) for g in globs.get(owner, [])):
                missing.append(rel.as_posix())
    assert not missing, f"not package data: {missing}"


def _tracked(top: str) -> list[Path]:
    """The files of ``top`` that git tracks (generated files such as Gradio's ``.pyi`` stubs
    and caches are not part of the package); every file when this is not a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", top], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in (ROOT / top).rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return sorted(ROOT / name for name in listed)


def test_no_sys_path_edits_outside_tests():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", "build", ".venv", "data", "runs"}:
            continue
        if rel.as_posix() in SYS_PATH_EXEMPT:
            continue
        if re.search(r"sys\.path\.(insert|append)", path.read_text()):
            offenders.append(rel.as_posix())
    assert not offenders
