"""Milliseconds per HMAR training step (d16, 256 px, B = 32): SDPA reference vs Triton attention.

Shape legend: B = batch, L = tokens of the pyramid (680 at 256 px), V = vocab.

One step is what ``python -m train.hmar`` does in stage 1 (``train.objectives.HMARObjective``):
bf16 autocast (or fp16 + GradScaler), forward with the block-diagonal attention, cross-entropy
with the lognorm weights, backward, unscale, gradient clipping at 2.0 and a fused AdamW step over
the trained parameters (base + ns blocks: 310 M at d16, the size of VAR-d16). Two variants:

* ``network``: teacher-forcing inputs precomputed once, like the official training benchmark
  (which feeds random (B, L − 1, 32) inputs);
* ``trainer``: from token ids, including the float32 pyramid inputs (bicubic, area, phi convs).

The attention backend is chosen per model through ``TransformerConfig.attention_backend``:
``reference`` (dense PyTorch SDPA with a boolean mask) and ``triton`` (our block-sparse kernel;
it autotunes during the warm-up steps). Times are medians over ``--steps`` steps after
``--warmup`` steps, measured with CUDA events; peak memory from ``max_memory_allocated``.
The table sits next to the anchors of ``../shared/spec/perf-targets.md``.

Usage:
    python benchmarks/train_step.py                                   # on a GPU
    python benchmarks/train_step.py --json out.json --markdown BENCHMARKS.md
    python benchmarks/train_step.py --device cpu --preset tiny --batch-size 2 --steps 2 \\
        --warmup 1 --backends reference                               # smoke test anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmar_core.config import TokenizerConfig, TransformerConfig  # noqa: E402
from hmar_core.init import init_transformer_  # noqa: E402
from hmar_core.tokenizer import MultiScaleQuantizer  # noqa: E402
from hmar_core.transformer import HMARTransformer  # noqa: E402
from kernels import available_backends  # noqa: E402
from train.config import OptimConfig  # noqa: E402
from train.loop import autocast, make_scaler, optimizer_step  # noqa: E402
from train.objectives import HMARObjective, scale_loss_weights, set_trainable  # noqa: E402
from train.optim import build_adamw  # noqa: E402

# perf-targets.md, measured on one H200 (d16, 256 px, B = 32, AMP, clip, fused AdamW).
ANCHORS_MS = {
    "VAR (official)": 163.4,
    "HMAR official, SDPA mask": 163.3,
    "HMAR official, Triton autotuned": 154.0,
    "compute floor (6·N·tokens at ~790 TFLOP/s)": 51.0,
}
TARGET_MS = 95.0
VAR_MS = 163.4
HMAR_MS = 154.0
MARK_START = "<!-- train-step-benchmark:start -->"
MARK_END = "<!-- train-step-benchmark:end -->"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_step(preset: str, backend: str, variant: str, batch: int, precision: str,
               device: torch.device, seed: int = 0) -> tuple[Callable[[], float], int]:
    """A closure running one training step, and the number of trained parameters."""
    cfg = dataclasses.replace(TransformerConfig.from_name(preset), attention_backend=backend)
    generator = torch.Generator().manual_seed(seed)
    transformer = init_transformer_(HMARTransformer(cfg), generator)
    set_trainable(transformer, "stage1")
    transformer = transformer.to(device)
    quantizer = MultiScaleQuantizer(TokenizerConfig(
        vocab_size=cfg.vocab_size, latent_channels=cfg.latent_channels, channels=32,
        channel_mult=(1,), patch_nums=cfg.patch_nums)).to(device)
    with torch.no_grad():
        quantizer.embedding.weight.normal_(generator=torch.Generator(device).manual_seed(seed))
    objective = HMARObjective(transformer, quantizer, "stage1",
                              scale_loss_weights(cfg.patch_nums, "lognorm")).to(device)
    optim_cfg = OptimConfig(base_lr=1e-4, grad_clip=2.0)
    optimizer = build_adamw(transformer, optim_cfg, batch, device)
    scaler = make_scaler(precision, device)  # type: ignore[arg-type]
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    tokens = torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=generator)
    tokens = tokens.to(device)
    labels = torch.randint(cfg.num_classes + 1, (batch,), generator=generator).to(device)
    weights = objective.weights_L
    x_ns, _ = objective.inputs(tokens, need_mask_input=False)

    def trainer_step() -> float:
        with autocast(precision, device):  # type: ignore[arg-type]
            loss, _ = objective(tokens, labels)
        return optimizer_step(loss, optimizer, scaler, trainable, optim_cfg.grad_clip)

    def network_step() -> float:
        with autocast(precision, device):  # type: ignore[arg-type]
            logits = transformer(labels, x_ns)  # (B, L, V) float32
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten(),
                                                   reduction="none")
            loss = (ce.view(batch, -1) * weights).sum(1).mean()
        return optimizer_step(loss, optimizer, scaler, trainable, optim_cfg.grad_clip)

    return (trainer_step if variant == "trainer" else network_step), sum(
        p.numel() for p in trainable)


def time_steps(step: Callable[[], float], device: torch.device, warmup: int, steps: int
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


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    usable = available_backends(device, dtype[args.precision])
    rows = []
    for backend in args.backends:
        for variant in args.variants:
            row = {"backend": backend, "variant": variant, "preset": args.preset,
                   "batch": args.batch_size, "precision": args.precision}
            if backend not in usable:
                row["error"] = f"backend {backend} not available on {device} ({usable})"
                log(row["error"])
                rows.append(row)
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            log(f"{backend} / {variant}: building and warming up ({args.warmup} steps)")
            try:
                step, trained = build_step(args.preset, backend, variant, args.batch_size,
                                           args.precision, device)
                times = time_steps(step, device, args.warmup, args.steps)
            except torch.cuda.OutOfMemoryError as err:
                row["error"] = f"OOM: {err}"
                rows.append(row)
                continue
            ordered = sorted(times)
            row.update({
                "trained_params": trained,
                "median_ms": statistics.median(times),
                "p10_ms": ordered[len(ordered) // 10],
                "p90_ms": ordered[(9 * len(ordered)) // 10],
                "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                             if device.type == "cuda" else None),
            })
            log(f"{backend} / {variant}: median {row['median_ms']:.1f} ms")
            rows.append(row)
            del step
    return rows


def table(rows: Sequence[dict], device_name: str) -> str:
    first = rows[0] if rows else {"preset": "?", "batch": "?", "precision": "fp32"}
    length = TransformerConfig.from_name(first["preset"]).seq_len if rows else "?"
    amp = "" if first["precision"] == "fp32" else " autocast"
    fused = "fused " if device_name != "CPU" else ""
    lines = [
        f"Training step, {first['preset']} (L = {length}), B = {first['batch']}, "
        f"{first['precision']}{amp}, clip 2.0, {fused}AdamW — {device_name}",
        "",
        "| attention | step | median ms | p10–p90 ms | peak GiB | vs VAR 163.4 | "
        f"vs HMAR 154.0 | target ≤ {TARGET_MS:.0f} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['variant']} | {row['error']} | | | | | |")
            continue
        median = row["median_ms"]
        peak = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "–"
        lines.append(
            f"| {row['backend']} | {row['variant']} | {median:.1f} | "
            f"{row['p10_ms']:.1f}–{row['p90_ms']:.1f} | {peak} | {VAR_MS / median:.2f}x | "
            f"{HMAR_MS / median:.2f}x | {'yes' if median <= TARGET_MS else 'no'} |")
    lines += ["", "Anchors (perf-targets.md, H200): "
              + "; ".join(f"{name} {ms:.1f} ms" for name, ms in ANCHORS_MS.items())
              + f"; our target ≤ {TARGET_MS:.0f} ms (≥ 1.7x VAR)."]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    section = f"{MARK_START}\n## Training step (benchmarks/train_step.py)\n\n{text}\n{MARK_END}"
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
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="update this file's section")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(f"device {device_name}, torch {torch.__version__}")
    rows = run(args)
    text = table(rows, device_name)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "rows": rows}, indent=2))
    if args.markdown:
        write_markdown(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
