"""Inference benchmark through the public API: what a user's call costs, per engine.

Every timed call is a public :class:`~hmar_core.pipeline.Pipeline` method — ``pipe.generate``
and ``pipe.inpaint(PIL image, PIL mask)`` (the call the app makes) — on a pipeline built with
``engine="fast"`` or ``engine="reference"``; nothing private is timed.

GPU rows (``../shared/spec/perf-targets.md``): random weights N(0, 0.02), built on the meta
device with the fast engine's half-precision blocks from the start and filled on the GPU
(``Pipeline(..., engine="fast", engine_options={"own_weights": True})``, the layout
``from_pretrained(..., engine="fast")`` gives); random labels, cfg 1.5, top_p 0.96, top_k 900,
the official benchmark mask schedules; ms = median of repeated calls after warm-up (CUDA
events); peak memory = ``torch.cuda.max_memory_allocated`` since before the weights were built.
Inpaint rows: one 256 px picture with a centred 96 px square mask, B = 1, the editor's default
steps (2) and ``steps=0``, feather 8, from PIL in to PIL out; each also records where one call
spends its time (``phases``: the engine's encode, sample_tokens and decode, synchronised, and
the rest of the call; :func:`engine_phases`).

CPU rows: the bundled demo model on both engines (the numbers behind ``engine="auto"``).

    python -m benchmarks.inference --out bench-out                # GPU, ~3 min on one H100
    python -m benchmarks.inference --cpu --out bench-out          # bundled model, 2 cores
    python -m benchmarks.inference --dry-run                      # toy sizes, logic check
    python -m benchmarks.inference --render bench-out/inference.json --markdown BENCHMARKS.md

Each row fails soft: an error or OOM is printed and recorded, and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.paths import ROOT
from hmar_core import Pipeline, SamplerConfig, TokenizerConfig, TransformerConfig
from hmar_core.fast import cast_blocks_
from hmar_core.fast.runner import default_dtype
from hmar_core.tokenizer import MultiScaleVQTokenizer
from hmar_core.transformer import HMARTransformer

MARK_START = "<!-- inference-benchmark:start -->"
MARK_END = "<!-- inference-benchmark:end -->"

#: Official benchmark mask schedules (spec §3.3).
SCHEDULES = {
    256: [[1], [1, 3], [1, 3, 5], [16], [25], [36], [64], [100], [169], [256]],
}
#: Targets of issue #15 (ms, GiB), with the official code's figures on the H200 (fp16).
TARGETS = {
    "generate d30 B=64": {"target_ms": 520, "official_ms": 1042, "target_gib": 12.0},
    "generate d16 B=64": {"target_ms": 217, "official_ms": 434},
    "inpaint d16 B=1 steps 2": {"target_ms": 30},
    "inpaint d30 B=1 steps 2": {"target_ms": 60},
}
#: The editor's default refinement steps (app and library).
EDITOR_STEPS = 2


# ------------------------------------------------------------------------------ building
def fill_(module: torch.nn.Module, seed: int) -> None:
    """N(0, 0.02) into every parameter, drawn in float32 so any dtype gets the same values."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            values = torch.empty(param.shape, dtype=torch.float32, device=device)
            param.copy_(values.normal_(0, 0.02, generator=gen))
        for buffer in module.buffers():
            if buffer.is_floating_point():
                buffer.zero_()


def build(depth: int, px: int, engine: str, device: torch.device, toy: bool,
          engine_options: dict[str, object] | None = None) -> Pipeline:
    """A random pipeline on ``device`` through the public constructor; the fast engine's
    blocks are half precision from the start (no float32 copy ever exists), with
    ``engine_options`` (``--engine-option``) on top."""
    tok_cfg = TokenizerConfig.from_name("vae-ch160v4096z32")
    patch_nums = tok_cfg.patch_nums
    if toy:  # same pyramid, toy widths (--dry-run)
        tok_cfg = TokenizerConfig(channels=32, channel_mult=(1, 1, 2), num_res_blocks=1,
                                  patch_nums=patch_nums)
        tcfg = TransformerConfig(depth=2, width=64, heads=2, n_layers_train=1,
                                 patch_nums=patch_nums)
    else:
        tcfg = TransformerConfig(depth=depth, patch_nums=patch_nums)
    with torch.device("meta"):
        tokenizer = MultiScaleVQTokenizer(tok_cfg)
        transformer = HMARTransformer(tcfg)
    options = {}
    if engine == "fast":
        cast_blocks_(transformer, default_dtype(device))
        options = {"own_weights": True, **(engine_options or {})}
    tokenizer.to_empty(device=device)
    transformer.to_empty(device=device)
    fill_(tokenizer, 1)
    fill_(transformer, 2)
    settings = SamplerConfig(cfg=1.5, top_k=900, top_p=0.96, mask_schedule=SCHEDULES[px])
    return Pipeline(tokenizer, transformer, settings, engine=engine, engine_options=options)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def edit_inputs(side: int) -> tuple[Image.Image, Image.Image]:
    """A smooth picture and a centred square mask (3/8 of the side), as PIL images."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy], -1) * 0.5 + 0.5
    image = Image.fromarray((rgb * 255).astype(np.uint8))
    mask = np.zeros((side, side), np.uint8)
    lo, hi = side * 5 // 16, side * 11 // 16
    mask[lo:hi, lo:hi] = 255
    return image, Image.fromarray(mask)


# ------------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[int], object], reps: int, warmup: int, cuda: bool
               ) -> dict[str, float | list[float]]:
    """Median ms of ``fn(i)`` after warm-up: CUDA events on CUDA (the whole call, host work
    included, since the end event waits for it), the host clock elsewhere."""
    for i in range(warmup):
        fn(1000 + i)
    times: list[float] = []
    for i in range(reps):
        if cuda:
            torch.cuda.synchronize()
            start, end = (torch.cuda.Event(enable_timing=True),
                          torch.cuda.Event(enable_timing=True))
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            tick = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - tick) * 1000)
    return {"ms": statistics.median(times), "times": times}


#: The engine calls a public method is made of (:class:`hmar_core.engine.Engine`).
ENGINE_PHASES = ("encode", "sample_tokens", "decode")


def engine_phases(pipe: Pipeline, call: Callable[[int], object], reps: int, cuda: bool
                  ) -> dict[str, dict[str, float]]:
    """Where one public call spends its time: median ms (and calls per run) of each engine
    phase of ``pipe.backend`` inside ``call(i)``, and ``rest`` = the call's own work between
    them (PIL in and out, the edit's spec, compositing). The device is synchronised around each
    phase, so phases do not overlap and ``total`` is a little above the unsynchronised time.
    The engine's methods are shadowed on the instance for the measurement and restored after.
    """
    engine = pipe.backend
    runs: list[dict[str, list[float]]] = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(name: str, method: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            sync()
            tick = time.perf_counter()
            out = method(*args, **kwargs)
            sync()
            runs[-1][name].append((time.perf_counter() - tick) * 1000)
            return out
        return wrapper

    for name in ENGINE_PHASES:
        setattr(engine, name, timed(name, getattr(engine, name)))
    try:
        for i in range(reps):
            runs.append({name: [] for name in (*ENGINE_PHASES, "total")})
            sync()
            tick = time.perf_counter()
            call(i)
            sync()
            runs[-1]["total"].append((time.perf_counter() - tick) * 1000)
    finally:
        for name in ENGINE_PHASES:
            delattr(engine, name)
    phases = {name: {"ms": statistics.median(sum(run[name]) for run in runs),
                     "calls": statistics.median(len(run[name]) for run in runs)}
              for name in ENGINE_PHASES}
    rests = [run["total"][0] - sum(sum(run[name]) for name in ENGINE_PHASES) for run in runs]
    phases["rest"] = {"ms": statistics.median(rests), "calls": 1}
    phases["total"] = {"ms": statistics.median(run["total"][0] for run in runs), "calls": 1}
    return phases


def _row(name: str, measure: Callable[[], dict], report: dict) -> None:
    print(f"--- {name}", flush=True)
    try:
        result = measure()
    except Exception as err:  # noqa: BLE001 - fail soft, record, go on
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}"[:300]}
    result.update(TARGETS.get(name, {}))
    report["rows"][name] = result
    print(f"    {json.dumps({k: v for k, v in result.items() if k != 'times'})}", flush=True)
    free()


# --------------------------------------------------------------------------------- GPU
def run_gpu(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.dry_run else "cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
                    "torch": torch.__version__, "rows": {}}
    reps, edit_reps = (2, 2) if args.dry_run else (args.reps, args.edit_reps)
    batch = 2 if args.dry_run else 64
    image, mask = edit_inputs(256)
    for depth in args.depths:
        for engine in args.engines:
            if cuda:
                free()
                torch.cuda.reset_peak_memory_stats()
            pipe = build(depth, 256, engine, device, args.dry_run, args.engine_option)
            tag = "" if engine == "fast" else f" {engine}"

            def generate(i: int, pipe: Pipeline = pipe) -> None:
                pipe.generate(None, seed=i, batch_size=batch)

            def measure_generate(generate: Callable = generate, peak: bool = True,
                                 pipe: Pipeline = pipe) -> dict:
                out = time_calls(generate, reps, 2, cuda)
                if cuda and peak:
                    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                out["images_per_s"] = batch / out["ms"] * 1000  # type: ignore[operator]
                out["phases"] = engine_phases(pipe, generate, max(2, reps // 2), cuda)
                return out

            _row(f"generate d{depth} B={batch}{tag}", measure_generate, report)
            for options in args.compare if engine == "fast" else []:  # no peak: 2 engines
                other = pipe.with_engine("fast", **options)
                _row(f"generate d{depth} B={batch}{tag} [{_options_text(options)}]",
                     lambda other=other: measure_generate(
                         lambda i: other.generate(None, seed=i, batch_size=batch), False,
                         other),
                     report)
                del other
            for steps in (EDITOR_STEPS, 0):
                def inpaint(i: int, pipe: Pipeline = pipe, steps: int = steps) -> None:
                    result = pipe.inpaint(image, mask, seed=i, steps=steps)
                    assert result.size == image.size

                def measure_inpaint(pipe: Pipeline = pipe, fn: Callable = inpaint) -> dict:
                    out = time_calls(fn, edit_reps, 3, cuda)
                    out["phases"] = engine_phases(pipe, fn, max(3, edit_reps // 3), cuda)
                    return out

                _row(f"inpaint d{depth} B=1 steps {steps}{tag}", measure_inpaint, report)
                for options in args.compare if engine == "fast" else []:  # on other options
                    other = pipe.with_engine("fast", **options)
                    _row(f"inpaint d{depth} B=1 steps {steps}{tag} [{_options_text(options)}]",
                         lambda other=other, steps=steps: measure_inpaint(
                             other, lambda i: inpaint(i, other, steps)), report)
                    del other
            del pipe
            free()
    return report


def engine_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--compare``: the value as JSON (numbers, true/false), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _options_text(options: dict[str, object]) -> str:
    return ", ".join(f"{key}={value}" for key, value in options.items())


# --------------------------------------------------------------------------------- CPU
def run_cpu(args: argparse.Namespace) -> dict:
    """Both engines on the bundled model, calls interleaved (engine A, engine B, A, B, ...)
    so that a busy machine slows both alike."""
    torch.set_num_threads(args.threads)
    folder = ROOT / "assets" / "hmar-emoji64"
    report: dict = {"device": f"cpu, {args.threads} threads", "torch": torch.__version__,
                    "rows": {}}
    pipes = {engine: Pipeline.from_pretrained(folder, engine=engine) for engine in args.engines}
    image, mask = edit_inputs(next(iter(pipes.values())).image_size)
    calls = {
        "generate": lambda pipe, i: pipe.generate(0, seed=i + 1),
        "inpaint": lambda pipe, i: pipe.inpaint(image, mask, seed=i + 1),
    }
    for what, call in calls.items():
        times: dict[str, list[float]] = {engine: [] for engine in pipes}
        for i in range(-1, args.cpu_reps):  # one warm-up round
            for engine, pipe in pipes.items():
                tick = time.perf_counter()
                call(pipe, i)
                if i >= 0:
                    times[engine].append((time.perf_counter() - tick) * 1000)
        for engine, values in times.items():
            report["rows"][f"cpu {what} B=1 {engine}"] = {
                "ms": statistics.median(values), "times": values}
    for name, row in report["rows"].items():
        print(f"{name}: {row['ms']:.0f} ms", flush=True)
    return report


# ---------------------------------------------------------------------------- reporting
def _fmt(value: object, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def markdown(report: dict) -> str:
    """The table of one report, with its device and command (GPU columns only with a GPU)."""
    rows = report["rows"].values()
    gpu = any("peak_gib" in row or "official_ms" in row for row in rows)
    lines = [f"Device: **{report['device']}**, torch {report['torch']}. Command: "
             f"`{report.get('command', 'python -m benchmarks.inference')}`.", ""]
    lines += (["| call (public API) | median ms | peak GiB | official code, fp16, H200 (ms) "
               "| target (issue 15) |", "| --- | --- | --- | --- | --- |"] if gpu else
              ["| call (public API) | median ms |", "| --- | --- |"])
    for name, row in report["rows"].items():
        value = row.get("error") or _fmt(row.get("ms"))
        extra = (f" {_fmt(row.get('peak_gib'), 2)} | {_fmt(row.get('official_ms'), 0)} | "
                 f"{_target(row)} |" if gpu else "")
        lines.append(f"| `{name}` | {value} |{extra}")
    phased = [(name, row["phases"]) for name, row in report["rows"].items() if "phases" in row]
    if phased:
        lines += ["", "Where one call goes (median ms; the device synchronised around each engine "
                  "phase, so the total is a little above the row's):", ""]
        lines += [f"- `{name}`: " + " · ".join(f"{phase} {_fmt(value['ms'])}"
                                                for phase, value in phases.items())
                  for name, phases in phased]
    return "\n".join(lines)


def _target(row: dict) -> str:
    """``≤ 30 ms ✓`` (and ``≤ 12 GiB``) where the row has a target, met or not (✗)."""
    if "target_ms" not in row:
        return ""
    parts = [(row.get("ms"), row["target_ms"], "ms")]
    if "target_gib" in row:
        parts.append((row.get("peak_gib"), row["target_gib"], "GiB"))
    return ", ".join(f"≤ {_fmt(limit, 0)} {unit} "
                     f"{'✓' if isinstance(value, (int, float)) and value <= limit else '✗'}"
                     for value, limit, unit in parts)


def command_line(argv: list[str]) -> str:
    """The command that made a report, without where it was written."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--markdown"):
            skip = True
        elif not arg.startswith(("--out=", "--markdown=")):
            kept.append(shlex.quote(arg))
    return " ".join(["python -m benchmarks.inference", *kept])


def write_markdown(path: Path, report: dict) -> None:
    """Replace the text between the inference markers of ``path`` (append them if absent)."""
    block = f"{MARK_START}\n{markdown(report)}\n{MARK_END}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + block + "\n")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="JSON folder")
    parser.add_argument("--cpu", action="store_true", help="the bundled model on the CPU")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--depths", type=int, nargs="+", default=[30, 16])
    parser.add_argument("--engines", nargs="+", default=None,
                        help="GPU default: fast; CPU default: reference fast")
    parser.add_argument("--reps", type=int, default=8, help="timed generations per row")
    parser.add_argument("--edit-reps", type=int, default=20, help="timed inpaints per row")
    parser.add_argument("--cpu-reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", type=engine_option, nargs="+", action="append",
                        default=[], metavar="KEY=VALUE",
                        help="GPU rows: also time each generation and inpaint on the fast "
                             "engine with these options (e.g. fp8=true), in the "
                             "same run; repeat the flag for more option sets")
    parser.add_argument("--engine-option", type=engine_option, nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="GPU rows: build the fast engine with these options (e.g. "
                             "fp8=true: its peak memory), --compare on top of them")
    parser.add_argument("--render", type=Path, default=None, help="only render this JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="file to update")
    args = parser.parse_args()
    args.compare = [dict(options) for options in args.compare]
    args.engine_option = dict(args.engine_option)
    if args.render is not None:
        report = json.loads(args.render.read_text())
    else:
        if args.engines is None:
            args.engines = ["reference", "fast"] if args.cpu else ["fast"]
        report = run_cpu(args) if args.cpu else run_gpu(args)
        report["command"] = command_line(sys.argv[1:])
        args.out.mkdir(parents=True, exist_ok=True)
        name = "inference_cpu.json" if args.cpu else "inference.json"
        (args.out / name).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    if args.markdown is not None:
        write_markdown(args.markdown, report)


if __name__ == "__main__":
    main()
