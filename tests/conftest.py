"""Shared fixtures: the official fixture folder, a tiny random pipeline, launch.py as a module,
a private Gradio cache folder."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(
    os.environ.get("HMAR_OFFICIAL_FIXTURE", ROOT.parent / "shared/fixtures/official-small"))


# The slow tier, kept here so that no test file needs editing. `python -m pytest -m "not slow"`
# is the fast tier for development (under a minute on 2 idle CPU cores); CI (`.ci/run`) runs
# everything. An entry is a node id without its parameters ("file::test" takes every
# parametrization) or an fnmatch pattern ("file::*", a folder). What belongs here: tests that
# start servers, browsers or other processes, train for real or use a fixture that does, and
# tests that took 0.5 s of CPU or more in a `--durations` run of the whole suite (2026-12-07).
# tests/test_ci.py checks that every entry still names a test.
SLOW_TESTS = (
    "tests/reliability/*",                 # fuzzing, load, kill-and-resume: minutes
    "tests/app/test_browser.py::*",        # drives chromium
    "tests/app/test_e2e_client.py::*",     # the served app through gradio_client
    "tests/app/test_launch.py::*",         # `python launch.py` in a subprocess
    "tests/train/test_train_ddp.py::*",    # torchrun with two processes
    "tests/train/test_train_learning.py::*",
    "tests/train/test_train_resume.py::*",
    "tests/test_cli_errors.py::*",         # the CLI in subprocesses
    "tests/train/test_train_cli_errors.py::*",
    "tests/train/test_export_sharded.py::test_hmar_trains_on_a_tokenizer_converted_by_the_cli",
    "tests/test_checkpoint.py::test_fifo_in_model_folder_is_refused_without_blocking",
    # measured (CPU seconds >= 0.5, or ptxas / other processes)
    "tests/kernels/test_hopper_registers.py::*",
    "tests/test_editing_cli.py::*",
    "tests/test_editing_session.py::*",
    "tests/app/test_ui.py::test_model_events_share_one_limited_queue",
    "tests/kernels/test_attention_backends.py::test_backends_agree",
    "tests/kernels/test_attention_backends.py::test_compiled_module_prunes_configs_without_a_gpu",
    "tests/kernels/test_attention_backends.py::test_triton_grad_of_q_only",
    "tests/kernels/test_attention_backends.py::test_triton_matches_float64_reference",
    "tests/kernels/test_attention_backends.py::test_triton_negative_zero_and_large_scales",
    "tests/kernels/test_attention_backends.py::test_triton_odd_batch_and_heads_and_scale",
    "tests/test_checkpoint.py::test_bad_weights_are_named",
    "tests/test_checkpoint.py::test_save_and_load_roundtrip",
    "tests/test_checkpoint.py::test_save_bfloat16_loads_as_float32",
    "tests/test_checkpoint.py::test_sharded_weights_roundtrip_and_incomplete_sets",
    "tests/test_config.py::test_official_vqvae_parameter_count_on_meta",
    "tests/test_editing.py::test_full_mask_strength_zero_equals_generate",
    "tests/test_editing.py::test_kept_tokens_equal_source_and_regenerated_ones_change",
    "tests/test_editing.py::test_odd_sizes",
    "tests/test_editing.py::test_outpaint_sizes_windows_and_exact_original",
    "tests/test_editing.py::test_pixels_outside_mask_and_feather_are_exact",
    "tests/test_editing.py::test_previews_and_confidence",
    "tests/test_editing.py::test_seeds_variants_and_class_edit",
    "tests/test_editing.py::test_var_kept_scales_still_fill_the_kv_cache",
    "tests/test_fast.py::test_bf16_generation_runs_and_is_close",
    "tests/test_fast.py::test_compiled_or_eager_falls_back",
    "tests/test_fast.py::test_compiled_vae_matches_eager",
    "tests/test_fast.py::test_fast_edit_and_resume_identical_tokens",
    "tests/test_fast.py::test_fast_encode_decode_float32",
    "tests/test_fast.py::test_fast_generate_float32_identical_tokens",
    "tests/test_fast.py::test_fast_sample_matches_reference_loop",
    "tests/test_fast.py::test_teacher_forced_logits",
    "tests/test_fast_fused.py::test_runner_fused_logits_equal_unfused",
    "tests/test_pipeline.py::test_encode_decode_roundtrip_shapes",
    "tests/test_pipeline.py::test_generate_end_to_end_fast",
    "tests/test_pipeline.py::test_mismatched_parts_refused",
    "tests/test_pipeline.py::test_random_labels_and_seed_reported",
    "tests/test_pipeline.py::test_same_seed_same_tokens_other_seed_differs",
    "tests/test_pipeline.py::test_var_model_generates_and_refuses_mask_steps",
    "tests/test_quality_tools.py::test_classifier_forward_shapes_and_empty_class_never_predicted",
    "tests/test_quality_tools.py::test_train_classifier_tiny_run_is_deterministic",
    "tests/test_sampler.py::test_sampler_deterministic_and_seed_dependent",
    "tests/test_transformer.py::test_hmar_per_scale_equals_teacher_forcing",
    "tests/train/test_data.py::test_official_preprocess_shapes_range_determinism",
    "tests/train/test_step_speed.py::test_benchmark_compares_option_sets_and_profiles_on_cpu",
    "tests/train/test_step_speed.py::test_compiled_step_equals_eager_step",
    "tests/train/test_step_speed.py::test_stochastic_depth_really_drops_in_the_compiled_blocks",
    "tests/train/test_step_speed.py::test_trainer_runs_with_every_speed_option",
    # these three use the session's trained tokenizer (tokenizer_run: 200 training steps)
    "tests/train/test_train_bad_inputs.py::test_hmar_config_that_does_not_fit",
    "tests/train/test_train_bad_inputs.py::test_missing_tokenizer_and_init",
    "tests/train/test_train_bad_inputs.py::test_resume_with_another_architecture_is_refused",
)


def _is_slow(nodeid: str) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, entry) or fnmatch.fnmatchcase(nodeid, entry + "[*")
               for entry in SLOW_TESTS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier (``SLOW_TESTS``) and skip ``gpu`` tests without a CUDA device."""
    slow = pytest.mark.slow
    for item in items:
        if _is_slow(item.nodeid):
            item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_pil_pixel_limit():
    """launch.py sets PIL's process-wide decoding limit; keep one test's call from leaking."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "reference.pt").is_file():
        pytest.skip(f"official fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture(scope="session")
def reference(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "reference.pt", weights_only=True)


@pytest.fixture(scope="session")
def official_pipe(fixture_dir: Path):
    from hmar_core import load_official

    return load_official(fixture_dir / "vqvae.pth", fixture_dir / "hmar.pth",
                         engine="reference")


@pytest.fixture()
def tiny_pipe():
    from hmar_core import Pipeline

    return Pipeline.random(seed=0)


@pytest.fixture(scope="module")
def launch() -> ModuleType:
    """``app/launcher.py`` (what ``python launch.py`` runs) imported as a module (a fresh copy
    per test module)."""
    spec = importlib.util.spec_from_file_location("hmar_launch", ROOT / "app" / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def gradio_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own Gradio cache folder (``GRADIO_TEMP_DIR``); app and reliability tests use it
    automatically."""
    folder = tmp_path / "gradio"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder
