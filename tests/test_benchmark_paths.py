"""``benchmarks/paths.py``: how reports name files."""

from __future__ import annotations


def test_reports_name_files_relative_to_the_repository_never_by_this_machines_path() -> None:
    from benchmarks.paths import ROOT, shown

    assert shown(ROOT / "benchmarks" / "models" / "emoji-classifier") == \
        "benchmarks/models/emoji-classifier"
    assert shown("/somewhere/else/weights.safetensors") == "weights.safetensors"
