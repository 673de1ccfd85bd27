"""Benchmarks and measurement tools, run from the repository root as ``python -m
benchmarks.NAME`` (attention, inference, train_step, quality, cfg_sweep, classifier,
editing_quality); results and the commands that regenerate them are in BENCHMARKS.md."""
