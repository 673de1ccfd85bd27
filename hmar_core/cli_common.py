"""What every ``python -m hmar_core`` subcommand shares: model and sampling options, loading the
model and class names (outputs: :mod:`hmar_core.cli_outputs`).

:mod:`hmar_core.cli` (``generate``, ``convert``, the entry point) and :mod:`hmar_core.cli_edit`
(``inpaint``, ``outpaint``, ``edit``) both import this module and never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .engine import ENGINE_CHOICES, engine_with_fp8
from .official import OFFICIAL_KINDS, load_official
from .pipeline import Pipeline

__all__ = ["DEFAULT_MODEL", "add_model_args", "add_sampling_args", "class_index",
           "load_pipeline"]

#: The bundled demo model (see assets/MODEL_CARD.md).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "hmar-emoji64"


def load_pipeline(
    checkpoint: str | Path | None,
    vae: str | Path | None = None,
    hmar: str | Path | None = None,
    device: str = "cpu",
    engine: str = "auto",
    kind: str | None = None,
    fp8: bool = False,
) -> Pipeline:
    """Our folder (default: the bundled model), or an official ``--vae``/``--hmar`` pair,
    on the given engine (``auto``: the fast engine; see :func:`hmar_core.engine.resolve_engine`),
    with FP8 GEMMs when ``fp8`` (see :func:`hmar_core.engine.engine_with_fp8`).
    """
    engine, options = engine_with_fp8(engine, fp8)
    if vae is not None or hmar is not None:
        if vae is None or hmar is None:
            raise ValueError("official checkpoints need both --vae and --hmar")
        return load_official(vae, hmar, kind=kind, device=device, engine=engine,
                             engine_options=options)
    folder = Path(checkpoint) if checkpoint is not None else DEFAULT_MODEL
    return Pipeline.from_pretrained(folder, device=device, engine=engine, **options)


def class_index(pipe: Pipeline, value: str) -> int:
    """A class given as an id (``"12"``) or a name of ``pipe.class_names``."""
    if value.lstrip("-").isdigit():
        return int(value)
    if value in pipe.class_names:
        return pipe.class_names.index(value)
    raise ValueError(f"unknown class {value!r}; use an id or one of {pipe.class_names[:10]}...")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` or ``--vae``/``--hmar`` (and ``--kind``), ``--device`` and
    ``--engine``."""
    parser.add_argument("--checkpoint", help="model folder (default: the bundled demo model)")
    parser.add_argument("--vae", help="official VQVAE .pth (with --hmar)")
    parser.add_argument("--hmar", help="official HMAR / VAR .pth (with --vae)")
    parser.add_argument("--kind", choices=OFFICIAL_KINDS,
                        help="what a blocks.* --hmar file holds: hmar-stage1 or var")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="fast (half precision on GPUs), reference (float32 modules) or "
                             "auto (fast; default)")
    parser.add_argument("--fp8", action="store_true",
                        help="fast engine with FP8 GEMMs for large batches (Hopper/Ada GPUs; "
                             "lossy, ~15%% faster at d30 B=64 on an H100)")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Seed, guidance and sampling options."""
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None,
                        help="masked refinement steps per coarse scale (0 = fastest)")
