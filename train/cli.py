"""Command lines of the trainers: YAML files, presets and flags → frozen configs.

This is the only place in ``train/`` that reads YAML or argv. A YAML file has the sections of
the config dataclasses::

    run: {data_path: data/emoji64, out_dir: runs/tok, batch_size: 64, steps: 6000, ...}
    optim: {lr: 3.0e-4, schedule: cosine, ...}
    tokenizer: {preset: emoji64, vocab_size: 2048}     # train.tokenizer
    transformer: {preset: emoji-d8, depth: 6}          # train.hmar
    speed: {compile_blocks: true, autocast_logits: true}  # train.hmar step speed options
    stage: stage1                                      # other top-level fields

Flags override the file: ``--data``, ``--out``, ``--steps``, ``--batch-size``,
``--max-minutes``, ``--precision``, ``--seed``, ``--device``, ``--resume``, ``--overwrite``,
``--preset``, (HMAR) ``--stage``, ``--tokenizer``, ``--init-from``, and any field by dotted
path with ``--set run.ckpt_interval=500 --set optim.lr=2e-4`` (values are type-checked).

:func:`run_entry` runs a trainer from the command line: a configuration, data or file error is
one log line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hmar_core.checkpoint import CheckpointError
from hmar_core.config import TokenizerConfig, TransformerConfig

from .config import HMARTrainConfig, OptimConfig, RunConfig, SpeedConfig, TokenizerTrainConfig
from .distributed import DistContext, setup_logging

__all__ = [
    "build_hmar_config",
    "build_tokenizer_config",
    "load_yaml",
    "parse_hmar_args",
    "parse_tokenizer_args",
    "run_entry",
    "setup_entry_logging",
]

logger = logging.getLogger(__name__)


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_Loader`."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (an empty file gives ``{}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, or not a mapping at the top level (one-line messages).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist"
                                + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = parse_yaml(path.read_text()) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err.reason})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: invalid YAML{where}: {problem}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    return data


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:  # missing, or an empty YAML section
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _section(section: Any, where: str) -> dict[str, Any]:
    """A YAML section as a dict (``None``, an empty section, gives ``{}``)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping of fields, got {section!r}")
    return dict(section)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can be given to a field annotated ``hint`` (simple types only)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or dataclasses.is_dataclass(hint):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _check_types(cls: type, section: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cls)
    for name, value in section.items():
        if name in hints and not _fits(value, hints[name]):
            hint = hints[name]
            expected = (hint.__name__ if isinstance(hint, type)
                        else str(hint).replace("typing.", ""))
            field_name = f"{where}.{name}" if where else name
            raise ValueError(f"{field_name}: {value!r} is not a valid value ({expected})")


def _build(cls: type, section: Any, where: str) -> Any:
    section = _section(section, where)
    _check_types(cls, section, where)
    try:
        return cls(**section)
    except TypeError as err:
        names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        raise ValueError(f"{where or 'config'}: {err} (known fields: {', '.join(names)})") from err


def _model_config(cls: type, section: Any, where: str,
                  from_preset: Callable[[str, dict[str, Any]], Any]) -> Any:
    """A model config from its YAML section: all fields, or a ``preset`` plus overrides."""
    section = _section(section, where)
    preset = section.pop("preset", None)
    if preset is None:
        return _build(cls, section, where)
    _check_types(cls, section, where)
    try:
        return from_preset(preset, section)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def _tokenizer_model(section: Any) -> TokenizerConfig:
    return _model_config(TokenizerConfig, section, "tokenizer", lambda name, fields:
                         dataclasses.replace(TokenizerConfig.from_name(name), **fields))


def _transformer_model(section: Any) -> TransformerConfig:
    # from_name applies the overrides before the derived fields (width = 64 · depth, ...)
    return _model_config(TransformerConfig, section, "transformer",
                         lambda name, fields: TransformerConfig.from_name(name, **fields))


def build_tokenizer_config(data: dict[str, Any]) -> TokenizerTrainConfig:
    """A :class:`TokenizerTrainConfig` from a nested mapping (YAML sections)."""
    data = dict(data)
    run = _build(RunConfig, data.pop("run", None), "run")
    model = _tokenizer_model(data.pop("tokenizer", None))
    kwargs: dict[str, Any] = {"run": run, "tokenizer": model}
    if "optim" in data:
        defaults = dataclasses.asdict(TokenizerTrainConfig(run=run).optim)
        kwargs["optim"] = _build(OptimConfig, {**defaults, **_section(data.pop("optim"), "optim")},
                                 "optim")
    return _build(TokenizerTrainConfig, {**kwargs, **data}, "")


def build_hmar_config(data: dict[str, Any]) -> HMARTrainConfig:
    """A :class:`HMARTrainConfig` from a nested mapping (YAML sections)."""
    data = dict(data)
    run = _build(RunConfig, data.pop("run", None), "run")
    model = _transformer_model(data.pop("transformer", None))
    optim = _build(OptimConfig, data.pop("optim", None), "optim")
    speed = _build(SpeedConfig, data.pop("speed", None), "speed")
    return _build(HMARTrainConfig, {"run": run, "transformer": model, "optim": optim,
                                    "speed": speed, **data}, "")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file with the run's sections")
    parser.add_argument("--data", help="run.data_path")
    parser.add_argument("--out", help="run.out_dir")
    parser.add_argument("--steps", type=int, help="run.steps")
    parser.add_argument("--batch-size", type=int, help="run.batch_size (global)")
    parser.add_argument("--max-minutes", type=float,
                        help="run.max_minutes: stop, checkpoint and export when time is up")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="run.precision")
    parser.add_argument("--seed", type=int, help="run.seed")
    parser.add_argument("--device", help="run.device (cuda / cpu)")
    parser.add_argument("--num-workers", type=int, help="run.num_workers")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output folder that holds an earlier one "
                             "(deletes its checkpoints, samples, TensorBoard events, export)")
    parser.add_argument("--preset", help="model preset name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field by dotted path (YAML value syntax)")
    return parser


_RUN_FLAGS = {"data": "data_path", "out": "out_dir", "steps": "steps",
              "batch_size": "batch_size", "max_minutes": "max_minutes",
              "precision": "precision", "seed": "seed", "device": "device",
              "num_workers": "num_workers"}


def _merge(args: argparse.Namespace, model_section: str, extra: dict[str, str]
           ) -> dict[str, Any]:
    data = load_yaml(args.config) if args.config else {}
    for flag, key in _RUN_FLAGS.items():
        if getattr(args, flag) is not None:
            _set(data, f"run.{key}", getattr(args, flag))
    if args.resume:
        _set(data, "run.resume", True)
    if args.overwrite:
        _set(data, "run.overwrite", True)
    if args.preset is not None:
        _set(data, f"{model_section}.preset", args.preset)
    for flag, key in extra.items():
        if getattr(args, flag, None) is not None:
            _set(data, key, getattr(args, flag))
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = parse_yaml(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item}: the value is not valid YAML") from err
        _set(data, key.strip(), parsed)
    return data


def parse_tokenizer_args(argv: Sequence[str] | None = None) -> TokenizerTrainConfig:
    """Parse ``python -m train.tokenizer`` arguments into a config."""
    parser = _parser("python -m train.tokenizer", "Train a multi-scale VQ tokenizer.")
    args = parser.parse_args(argv)
    return build_tokenizer_config(_merge(args, "tokenizer", {}))


def parse_hmar_args(argv: Sequence[str] | None = None) -> HMARTrainConfig:
    """Parse ``python -m train.hmar`` arguments into a config."""
    parser = _parser("python -m train.hmar", "Train an HMAR transformer (stage 1/2/joint).")
    parser.add_argument("--stage", choices=("stage1", "stage2", "joint"), help="stage")
    parser.add_argument("--tokenizer", help="tokenizer_path (a tokenizer export folder)")
    parser.add_argument("--init-from", help="init_from (model folder or checkpoint)")
    args = parser.parse_args(argv)
    extra = {"stage": "stage", "tokenizer": "tokenizer_path", "init_from": "init_from"}
    return build_hmar_config(_merge(args, "transformer", extra))


def setup_entry_logging(ctx: DistContext, out_dir: str | os.PathLike) -> None:
    """Entry-point logging: rank 0 to stderr and ``<out_dir>/train.log``.

    Raises:
        NotADirectoryError: ``out_dir`` is a file.
    """
    log_file = None
    if ctx.is_main:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"output folder {out} is a file")
        out.mkdir(parents=True, exist_ok=True)
        log_file = out / "train.log"
    setup_logging(ctx, log_file)


#: Errors that mean "bad configuration, data or files": one log line and exit status 2.
USER_ERRORS = (ValueError, OSError, CheckpointError)

Config = TypeVar("Config", TokenizerTrainConfig, HMARTrainConfig)
Result = TypeVar("Result", bound="_Finished")


class _Finished(typing.Protocol):
    step: int


def run_entry(argv: Sequence[str] | None, parse: Callable[[Sequence[str] | None], Config],
              train: Callable[[Config, DistContext], Result], metric: str, summary: str
              ) -> int:
    """Run a trainer from the command line: parse, set up logging, train, summarise.

    A configuration, data or file error (:data:`USER_ERRORS`) is logged as one line, without a
    traceback, and gives exit status 2; ``--help`` and argparse usage errors exit as usual.

    Args:
        argv: the arguments (``None``: ``sys.argv``).
        parse: flags → config.
        train: the trainer's ``main``.
        metric: the result's evaluation history (list of (step, value)).
        summary: how rank 0 logs its first and last value, a ``str.format`` with ``first``
            and ``last``.

    Returns:
        The exit status.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ctx = None
    try:
        cfg = parse(argv)
        ctx = DistContext.from_env(cfg.run.device)
        setup_entry_logging(ctx, cfg.run.out_dir)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            result = train(cfg, ctx)
        history = getattr(result, metric)
        if ctx.is_main and history:
            logger.info("done: %d steps, %s", result.step,
                        summary.format(first=history[0][1], last=history[-1][1]))
        return 0
    except USER_ERRORS as err:
        logger.error("%s", " ".join(str(err).split()) or type(err).__name__)
        return 2
    finally:
        if ctx is not None:
            ctx.close()
