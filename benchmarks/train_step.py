"""Milliseconds per HMAR training step (d16, 256 px, B = 32): attention backends and the
speed options of the step (``train.config.SpeedConfig``) side by side, with an optional profile.

Shape legend: B = batch, L = tokens of the pyramid (680 at 256 px), V = vocab.

One step is what ``python -m train.hmar`` does in stage 1 (``train.objectives.HMARObjective``):
bf16 autocast (or fp16 + GradScaler), forward with the block-diagonal attention, cross-entropy
with the lognorm weights, backward, unscale, gradient clipping at 2.0 and a fused AdamW step over
the trained parameters (base + ns blocks: 310 M at d16, the size of VAR-d16). Two variants:

* ``network``: teacher-forcing inputs precomputed once, like the official training benchmark
  (which feeds random (B, L − 1, 32) inputs): ``HMARObjective.loss_from_inputs``;
* ``trainer``: from token ids, including the float32 pyramid inputs (bicubic, area, phi convs).

The attention backend is chosen per model through ``TransformerConfig.attention_backend``:
``reference`` (dense PyTorch SDPA with a boolean mask) and ``triton`` (our block-sparse kernel;
it autotunes during the warm-up steps). ``--options`` names sets of speed options
(:data:`OPTION_SETS`: ``default`` = all off, one per option, ``all``, ``all-autotune``); one model
per backend is built and shared by the option sets (compiled graphs are reset between them).

Times are medians over ``--steps`` steps after ``--warmup`` steps, each step synchronised and
measured with CUDA events (``median_ms``), plus the mean of the same number of steps run back to
back without synchronisation (``pipelined_ms``, what a training loop without host syncs sees);
peak memory from ``max_memory_allocated``; the host synchronisations of one step are counted
with ``torch.cuda.set_sync_debug_mode`` (``host_syncs``, ``host_sync_sites``). ``--profile``
then runs ``--profile-steps`` steps under ``torch.profiler`` and prints the top CUDA kernels by
total time per step (CPU ops on a CPU), with a breakdown into GEMMs, attention, optimizer and
the rest; the rows also go into the JSON, which is rewritten after every row (a run cut short
keeps what it measured). The table sits next to the anchors of ``../shared/spec/perf-targets.md``.

Usage:
    python -m benchmarks.train_step                                   # on a GPU
    python -m benchmarks.train_step --json out.json --markdown BENCHMARKS.md
    python -m benchmarks.train_step --backends triton --options default all --profile
    python -m benchmarks.train_step --device cpu --preset tiny --batch-size 2 --steps 2 \\
        --warmup 1 --backends reference                               # smoke test anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from hmar_core.config import TokenizerConfig, TransformerConfig
from hmar_core.init import init_transformer_
from hmar_core.tokenizer import MultiScaleQuantizer
from hmar_core.transformer import AdaLNBlock, HMARTransformer
from kernels import available_backends
from train.config import OptimConfig, SpeedConfig
from train.loop import autocast, make_scaler, optimizer_step
from train.objectives import HMARObjective, scale_loss_weights, set_trainable
from train.optim import build_adamw

#: Named sets of speed options compared side by side (``--options``).
OPTION_SETS: dict[str, SpeedConfig] = {
    "default": SpeedConfig().resolved("cpu"),  # every switch off: the eager step
    "autocast-logits": SpeedConfig(autocast_logits=True),
    "async-labels": SpeedConfig(async_label_check=True),
    "compile-blocks": SpeedConfig(compile_blocks=True),
    "compile-inputs": SpeedConfig(compile_inputs=True),
    "compile-loss": SpeedConfig(compile_loss=True),
    "all": SpeedConfig.fastest(),
    "all-autotune": dataclasses.replace(SpeedConfig.fastest(),
                                        compile_mode="max-autotune-no-cudagraphs"),
}
#: Option sets that change nothing in the ``network`` variant (it has no input building).
_TRAINER_ONLY = {"compile-inputs"}

# perf-targets.md, measured on one H200 (d16, 256 px, B = 32, AMP, clip, fused AdamW).
ANCHORS_MS = {
    "VAR (official)": 163.4,
    "HMAR official, SDPA mask": 163.3,
    "HMAR official, Triton autotuned": 154.0,
    "compute floor (6·N·tokens at ~790 TFLOP/s)": 51.0,
}
VAR_MS = 163.4
HMAR_MS = 154.0
#: What the BENCHMARKS.md table ran when its JSON does not say (files written before "command").
DEFAULT_COMMAND = ("python -m benchmarks.train_step --backends reference triton --variants "
                   "trainer network --options default all --steps 10 --warmup 3")
LEGEND = ('"network" = forward + backward + optimizer step of the model alone; "trainer" = the '
          "real stage-1 step of `train/` (objective from token ids, label drop, clipping). "
          'Options (`train.config.SpeedConfig`): "default" = every switch off (the eager step); '
          '"all" = every switch on, what `python -m train.hmar` does on CUDA unless a switch is '
          "set: `torch.compile` of each block around our attention kernel, of the "
          "teacher-forcing inputs and of the loss, the vocabulary projection under autocast, "
          "and no host sync in the step.")
MARK_START = "<!-- train-step-benchmark:start -->"
MARK_END = "<!-- train-step-benchmark:end -->"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench(NamedTuple):
    """One model, its optimiser and a fixed batch, shared by the option sets of a backend."""

    transformer: HMARTransformer
    quantizer: MultiScaleQuantizer
    loss_weights: torch.Tensor  # (L,)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    trainable: list[torch.nn.Parameter]
    tokens: torch.Tensor
    labels: torch.Tensor
    grad_clip: float


def build_bench(preset: str, backend: str, batch: int, precision: str, device: torch.device,
                seed: int = 0) -> Bench:
    """The model (stage-1 trainable), quantiser, fused AdamW and a random batch."""
    cfg = dataclasses.replace(TransformerConfig.from_name(preset), attention_backend=backend)
    generator = torch.Generator().manual_seed(seed)
    transformer = init_transformer_(HMARTransformer(cfg), generator)
    set_trainable(transformer, "stage1")
    transformer = transformer.to(device)
    quantizer = MultiScaleQuantizer(TokenizerConfig(
        vocab_size=cfg.vocab_size, latent_channels=cfg.latent_channels, channels=32,
        channel_mult=(1,), patch_nums=cfg.patch_nums)).to(device).requires_grad_(False)
    with torch.no_grad():
        quantizer.embedding.weight.normal_(generator=torch.Generator(device).manual_seed(seed))
    optim_cfg = OptimConfig(base_lr=1e-4, grad_clip=2.0)
    tokens = torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=generator)
    labels = torch.randint(cfg.num_classes + 1, (batch,), generator=generator)
    return Bench(transformer, quantizer, scale_loss_weights(cfg.patch_nums, "lognorm"),
                 build_adamw(transformer, optim_cfg, batch, device),
                 make_scaler(precision, device),  # type: ignore[arg-type]
                 [p for p in transformer.parameters() if p.requires_grad],
                 tokens.to(device), labels.to(device), optim_cfg.grad_clip)


def build_step(bench: Bench, variant: str, speed: SpeedConfig, precision: str,
               device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure running one training step with these speed options."""
    torch._dynamo.reset()  # a fresh compile cache per option set (no recompile limits hit)
    for module in bench.transformer.modules():
        if isinstance(module, AdaLNBlock):
            module.compiled_parts = None  # HMARObjective sets them again if asked
    objective = HMARObjective(bench.transformer, bench.quantizer, "stage1", bench.loss_weights,
                              speed=speed).to(device)
    tokens, labels = bench.tokens, bench.labels
    x_ns, _ = objective.inputs(tokens, need_mask_input=False)

    def step() -> torch.Tensor:
        with autocast(precision, device):  # type: ignore[arg-type]
            if variant == "trainer":
                loss, _ = objective(tokens, labels)
            else:
                loss, _ = objective.loss_from_inputs(tokens, labels, x_ns)
        return optimizer_step(loss, bench.optimizer, bench.scaler, bench.trainable,
                              bench.grad_clip)

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], device: torch.device, warmup: int, steps: int
               ) -> list[float]:
    """Milliseconds of each timed step (CUDA events on a GPU, wall clock on CPU)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def time_pipelined(step: Callable[[], object], device: torch.device, steps: int) -> float:
    """Mean milliseconds per step of ``steps`` steps run back to back, one sync at the end."""
    _synchronize(device)
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - begin) * 1e3 / steps


def host_syncs(step: Callable[[], object], device: torch.device) -> list[str]:
    """Where one step synchronises with the host (``torch.cuda.set_sync_debug_mode``)."""
    if device.type != "cuda":
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message)]


_CATEGORIES = (  # first match wins; lower-case substrings of kernel (or op) names
    ("attention", ("_attn_fwd", "_attn_bwd", "flash", "fmha", "attention")),
    ("gemm", ("triton_tem", "gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "aten::mm",
              "aten::addmm", "aten::bmm")),
    ("inductor fused", ("triton_poi", "triton_red", "triton_per", "compiledfxgraph")),
    ("optimizer+clip", ("adam", "multi_tensor", "foreach", "lpnorm", "optimizer")),
    ("layer norm", ("layer_norm", "layernorm", "gammabeta")),
    ("softmax/ce", ("softmax", "nll", "cross_entropy")),
    ("pyramid inputs", ("upsample", "bicubic", "adaptive", "avg_pool", "conv", "cudnn")),
    ("reductions", ("reduce_kernel", "aten::sum", "aten::norm")),
    ("elementwise/copy", ("elementwise", "copy", "fill", "cat", "index", "aten::")),
)


def _category(name: str) -> str:
    lower = name.lower()
    for category, needles in _CATEGORIES:
        if any(needle in lower for needle in needles):
            return category
    return "other"


def profile_steps(step: Callable[[], object], device: torch.device, steps: int, top: int
                  ) -> dict:
    """Top kernels (CUDA) or ops (CPU, by self time) per step under ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    _synchronize(device)
    begin = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _synchronize(device)
    wall_ms = (time.perf_counter() - begin) * 1e3 / steps
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            duration = event.time_range.elapsed_us()
        else:
            if event.device_type != torch.autograd.DeviceType.CPU:
                continue
            duration = event.self_cpu_time_total
        totals[event.name][0] += duration / 1e3
        totals[event.name][1] += 1
    busy = sum(ms for ms, _ in totals.values()) / steps
    categories: dict[str, float] = defaultdict(float)
    for name, (ms, _) in totals.items():
        categories[_category(name)] += ms / steps
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])[:top]
    return {
        "kind": "cuda kernels" if device.type == "cuda" else "cpu ops (self time)",
        "steps": steps, "wall_ms_per_step": wall_ms, "busy_ms_per_step": busy,
        "categories_ms_per_step": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name, "ms_per_step": ms / steps, "calls_per_step": count / steps,
                 "percent": 100 * ms / steps / max(busy, 1e-9)}
                for name, (ms, count) in ranked],
    }


def profile_table(label: str, result: dict) -> str:
    """A short text table of :func:`profile_steps`."""
    lines = [f"profile {label}: {result['kind']}, {result['busy_ms_per_step']:.1f} ms busy of "
             f"{result['wall_ms_per_step']:.1f} ms wall per step (profiler overhead included)",
             "  by category: " + ", ".join(
                 f"{name} {ms:.1f}" for name, ms in result["categories_ms_per_step"].items()),
             f"  {'ms/step':>8} {'%':>5} {'calls':>6}  kernel"]
    for row in result["top"]:
        name = row["name"] if len(row["name"]) <= 110 else row["name"][:107] + "..."
        lines.append(f"  {row['ms_per_step']:8.2f} {row['percent']:5.1f} "
                     f"{row['calls_per_step']:6.0f}  {name}")
    return "\n".join(lines)


def run(args: argparse.Namespace, on_row: Callable[[list[dict]], None] | None = None
        ) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    usable = available_backends(device, dtype[args.precision])
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(rows)

    for backend in args.backends:
        bench = None
        for options in args.options:
            for variant in args.variants:
                row = {"backend": backend, "variant": variant, "options": options,
                       "speed": dataclasses.asdict(OPTION_SETS[options]), "preset": args.preset,
                       "batch": args.batch_size, "precision": args.precision}
                label = f"{backend} / {variant} / {options}"
                if backend not in usable:
                    row["error"] = f"backend {backend} not available on {device} ({usable})"
                    log(row["error"])
                    add(row)
                    continue
                if variant == "network" and options in _TRAINER_ONLY:
                    continue  # identical to the network's default row
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                log(f"{label}: building and warming up ({args.warmup} steps)")
                try:
                    if bench is None:
                        bench = build_bench(args.preset, backend, args.batch_size,
                                            args.precision, device)
                    step = build_step(bench, variant, OPTION_SETS[options], args.precision,
                                      device)
                    begin = time.perf_counter()
                    step()  # compilation and autotuning happen here
                    row["first_step_s"] = time.perf_counter() - begin
                    times = time_steps(step, device, args.warmup, args.steps)
                    pipelined = time_pipelined(step, device, args.steps)
                    syncs = host_syncs(step, device)
                    profiled = (profile_steps(step, device, args.profile_steps, args.profile_rows)
                                if args.profile else None)
                except torch.cuda.OutOfMemoryError as err:
                    row["error"] = f"OOM: {err}"
                    add(row)
                    continue
                ordered = sorted(times)
                row.update({
                    "trained_params": sum(p.numel() for p in bench.trainable),
                    "median_ms": statistics.median(times),
                    "p10_ms": ordered[len(ordered) // 10],
                    "p90_ms": ordered[(9 * len(ordered)) // 10],
                    "pipelined_ms": pipelined,
                    "host_syncs": len(syncs),
                    "host_sync_sites": sorted(set(syncs)),
                    "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                 if device.type == "cuda" else None),
                })
                log(f"{label}: median {row['median_ms']:.1f} ms, pipelined {pipelined:.1f} ms "
                    f"(first step {row['first_step_s']:.1f} s), {len(syncs)} host syncs "
                    f"{sorted(set(syncs))}")
                if profiled is not None:
                    row["profile"] = profiled
                    print(profile_table(label, profiled), flush=True)
                add(row)
                del step
        del bench
    return rows


def table(rows: Sequence[dict], device_name: str, command: str = DEFAULT_COMMAND) -> str:
    """The Markdown table of ``rows``, with the anchors, a legend and the command that ran."""
    first = rows[0] if rows else {"preset": "?", "batch": "?", "precision": "fp32"}
    length = TransformerConfig.from_name(first["preset"]).seq_len if rows else "?"
    amp = "" if first["precision"] == "fp32" else " autocast"
    fused = "fused " if device_name != "CPU" else ""
    lines = [
        f"Training step, {first['preset']} (L = {length}), B = {first['batch']}, "
        f"{first['precision']}{amp}, clip 2.0, {fused}AdamW — {device_name}",
        "",
        "| attention | step | options | median ms | p10–p90 ms | pipelined ms | peak GiB | "
        f"vs VAR {VAR_MS} | vs HMAR {HMAR_MS} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        options = row.get("options", "default")
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['variant']} | {options} | {row['error']} "
                         "| | | | | |")
            continue
        median = row["median_ms"]
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "–"
        lines.append(
            f"| {row['backend']} | {row['variant']} | {options} | {median:.1f} | "
            f"{row['p10_ms']:.1f}–{row['p90_ms']:.1f} | {row['pipelined_ms']:.1f} | {peak} | "
            f"{VAR_MS / median:.2f}x | {HMAR_MS / median:.2f}x |")
    lines += ["", "Anchors, the official implementations on one H200: "
              + "; ".join(f"{name} {ms:.1f} ms" for name, ms in ANCHORS_MS.items()) + ".",
              "", LEGEND, "", f"Command: `{command}`"]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    section = (f"{MARK_START}\n## Training step (`benchmarks/train_step.py`)\n\n{text}\n"
               f"{MARK_END}")
    old = path.read_text() if path.is_file() else ""
    if MARK_START in old and MARK_END in old:
        head, rest = old.split(MARK_START, 1)
        new = head + section + rest.split(MARK_END, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + section + "\n"
    path.write_text(new)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="hmar-d16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--backends", nargs="+", default=["reference", "triton"],
                        choices=("reference", "flex", "triton"))
    parser.add_argument("--variants", nargs="+", default=["network", "trainer"],
                        choices=("network", "trainer"))
    parser.add_argument("--options", nargs="+", default=["default"], choices=tuple(OPTION_SETS),
                        help="speed option sets to compare (train.config.SpeedConfig)")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--profile", action="store_true",
                        help="profile every row after timing it and print its top kernels")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", type=Path, help="write the rows as JSON (after every row)")
    parser.add_argument("--markdown", type=Path, help="update this file's section")
    parser.add_argument("--render", type=Path, nargs="+",
                        help="only print (and --markdown) the table of these --json files")
    args = parser.parse_args(argv)
    if args.render:
        reports = [json.loads(path.read_text()) for path in args.render]
        text = table([row for report in reports for row in report["rows"]],
                     f"{reports[0]['device']} (torch {reports[0]['torch']})",
                     reports[0].get("command", DEFAULT_COMMAND))
        print(text)
        if args.markdown:
            write_markdown(args.markdown, text)
        return 0
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks.train_step", *map(shlex.quote, given)])
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(f"device {device_name}, torch {torch.__version__}")

    def save(rows: list[dict]) -> None:
        if args.json:
            args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                             "command": command, "rows": rows}, indent=2))

    rows = run(args, save)
    save(rows)
    text = table(rows, device_name, command)
    print(text)
    if args.markdown:
        write_markdown(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
