"""Inference benchmark: our HMAR (float32 reference and fast path) and our VAR mode, side by side.

Measures what ``../shared/spec/perf-targets.md`` specifies, the way it specifies: random weights
N(0, 0.02) (built on the meta device, allocated and filled on the GPU), random labels, cfg 1.5,
top_p 0.96, top_k 900, the benchmark mask schedules (HMAR) or none (VAR), VQ-VAE decode
included; ms per batch = median of repeated ``generate`` calls after warm-up (CUDA events),
images/s, peak memory (``torch.cuda.max_memory_allocated`` after a reset, weights included).
The reference rows run float32 with TF32 matmuls (as the official anchors); the fast rows run
``pipe.to_fast()`` (fp16 blocks, float32 heads/quantiser, CUDA graphs, sync-free sampling).

Also: the fast path's teacher-forced logits vs float32 (TF32 off) on d16 random weights, sample
images of both paths for the same seed (PNG), and the latency of one 256 px inpaint at d16,
B = 1, end to end (encode, sample with the edit constraint, decode, composite).

    python benchmarks/inference.py --out bench-out                 # GPU, ≤ 4 min on one H200
    python benchmarks/inference.py --quick --out bench-out         # GPU smoke run, ~1 min
    python benchmarks/inference.py --cpu                           # the 64 px demo model, 2 cores
    python benchmarks/inference.py --render bench-out/inference.json --markdown BENCHMARKS.md

Every configuration fails soft: an error or OOM is printed and recorded, and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hmar_core import Pipeline, SamplerConfig, TokenizerConfig, TransformerConfig  # noqa: E402
from hmar_core.fast import cast_blocks_  # noqa: E402
from hmar_core.tokenizer import MultiScaleVQTokenizer  # noqa: E402
from hmar_core.transformer import HMARTransformer  # noqa: E402

MARK_START = "<!-- inference-benchmark:start -->"
MARK_END = "<!-- inference-benchmark:end -->"
CPU_START = "<!-- inference-cpu:start -->"
CPU_END = "<!-- inference-cpu:end -->"

#: Benchmark mask schedules (spec §3.3, the official benchmark/inference.py).
SCHEDULES = {
    256: [[1], [1, 3], [1, 3, 5], [16], [25], [36], [64], [100], [169], [256]],
    512: [[1], [1, 3], [1, 1, 2, 5], [5, 11], [36], [81], [169], [324], [576], [1024]],
    1024: [[1], [1, 3], [1, 1, 2, 5], [3, 5, 8], [25], [49], [81], [144], [256], [441],
           [729], [1296], [2304], [4096]],
}
TOKENIZERS = {256: "vae-ch160v4096z32", 512: "vae-ch160v4096z32-512",
              1024: "vae-ch160v4096z32-1024"}

#: Anchors (official code, H200) and our targets from perf-targets.md, per (depth, px, B).
ANCHORS: dict[tuple[int, int, int], dict[str, float]] = {
    (30, 256, 64): {"VAR fp16": 1130, "HMAR fp16": 1171, "HMAR fp32": 1398, "VAR fp32": 1591,
                    "floor": 455, "target": 600, "HMAR GiB": 25.7, "VAR GiB": 48.3,
                    "target GiB": 12.0},
    (16, 256, 64): {"VAR fp16": 492, "HMAR fp16": 518, "target": 260},
    (30, 1024, 4): {"VAR fp32": 4171, "HMAR fp32": 2534, "HMAR GiB": 26.2, "target": 1300},
    (16, 256, 1): {"VAR fp32": 119.5, "HMAR fp32": 142.3},
    (30, 256, 1): {"VAR fp16": 438.3, "HMAR fp16": 511.5},
}
EDIT_TARGET_MS = 50.0
#: Edit schedules timed: the editor's steps knob at the library default (4) and at 2 (the
#: bundled model's default), and the plain generation schedule (None).
EDIT_STEPS = (4, 2, None)
CPU_TARGET_S = 1.0
DRY_RUN = [False]  # --dry-run: the GPU plan with toy models on CPU (checks the plumbing)


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    depth: int
    px: int
    batch: int
    family: str  # "hmar" | "var"
    path: str  # "reference" | "fast" | "fast-bf16" (bf16 blocks) | "fast-unfused" (no Triton
    #            residual/LayerNorm kernels: torch ops)

    @property
    def name(self) -> str:
        return f"{self.family.upper()} d{self.depth} {self.px}px B={self.batch} {self.path}"


def plan(quick: bool, skip_var: bool, extras: bool) -> list[Row]:
    """Rows in priority order (the budget cuts from the end)."""
    rows: list[Row] = []

    def both(depth: int, px: int, batch: int, family: str = "hmar") -> None:
        rows.extend(Row(depth, px, batch, family, p) for p in ("reference", "fast"))

    if quick:
        both(16, 256, 64)
        both(16, 256, 1)
        if not skip_var:
            both(16, 256, 64, "var")
        return rows
    both(30, 256, 64)
    both(16, 256, 64)
    rows.append(Row(16, 256, 64, "hmar", "fast-bf16"))
    rows.append(Row(16, 256, 64, "hmar", "fast-unfused"))
    both(30, 1024, 4)
    both(16, 256, 1)
    if not skip_var:
        both(30, 256, 64, "var")
        both(16, 256, 64, "var")
        both(30, 1024, 4, "var")
        both(16, 256, 1, "var")
    both(30, 256, 1)
    if extras:
        both(16, 512, 16)
        both(30, 512, 16)
        both(30, 256, 16)
    return rows


# ------------------------------------------------------------------------------ building
def fill_(module: torch.nn.Module, seed: int) -> None:
    """N(0, 0.02) into every parameter, drawn in float32 so any dtype gets the same values."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for _, param in module.named_parameters():
            values = torch.empty(param.shape, dtype=torch.float32, device=device)
            param.copy_(values.normal_(0, 0.02, generator=gen))
        for _, buffer in module.named_buffers():
            if buffer.is_floating_point():
                buffer.zero_()


def build(depth: int, px: int, family: str, fast_dtype: torch.dtype | None,
          device: torch.device) -> Pipeline:
    """A random pipeline on ``device``; for the fast path the blocks are in ``fast_dtype``
    from the start."""
    tok_cfg = TokenizerConfig.from_name(TOKENIZERS[px])
    patch_nums = tok_cfg.patch_nums
    if DRY_RUN[0]:  # toy sizes, same pyramid
        tok_cfg = TokenizerConfig(channels=32, channel_mult=(1, 1, 2), num_res_blocks=1,
                                  patch_nums=patch_nums)
        tcfg = TransformerConfig(depth=2, width=64, heads=2, n_layers_train=1, kind=family,
                                 patch_nums=patch_nums)
    elif family == "var":
        tcfg = TransformerConfig.from_name(f"var-d{depth}", patch_nums=patch_nums)
    else:
        tcfg = TransformerConfig(depth=depth, patch_nums=patch_nums)
    with torch.device("meta"):
        tokenizer = MultiScaleVQTokenizer(tok_cfg)
        transformer = HMARTransformer(tcfg)
    if fast_dtype is not None:
        cast_blocks_(transformer, fast_dtype)
    tokenizer.to_empty(device=device)
    transformer.to_empty(device=device)
    fill_(tokenizer, 1)
    fill_(transformer, 2)
    schedule = SCHEDULES[px] if family == "hmar" else None
    settings = SamplerConfig(cfg=1.5, top_k=900, top_p=0.96, mask_schedule=schedule)
    return Pipeline(tokenizer, transformer, settings)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def full_float32():
    """TF32 off (a true float32 reference) inside the block."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# ------------------------------------------------------------------------------- timing
def time_gpu(fn: Callable[[int], object], reps: int, warmup: int, budget_s: float
             ) -> tuple[float, list[float], float, float]:
    """Median ms of ``fn(i)`` after warm-up (CUDA events; host clock off CUDA, for
    ``--dry-run``), all times, and the peak GiB allocated and reserved during the timed runs
    (0 off CUDA). Reserved includes CUDA-graph pools, whose blocks count as allocated only
    while a captured tensor holds them."""
    cuda = torch.cuda.is_available() and not DRY_RUN[0]
    for i in range(warmup):
        fn(1000 + i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    started = time.perf_counter()
    for i in range(reps):
        if cuda:
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
        if time.perf_counter() - started > budget_s and len(times) >= 2:
            break
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0
    return statistics.median(times), times, peak, reserved


def time_cpu(fn: Callable[[int], object], reps: int, warmup: int
             ) -> tuple[float, list[float], float]:
    """Median wall ms, all wall ms, and median process CPU ms (all threads) per run."""
    for i in range(warmup):
        fn(1000 + i)
    times, cpu = [], []
    for i in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(times), times, statistics.median(cpu)


# ------------------------------------------------------------------------------ editing
class _BoxConstraint:
    """Fallback edit constraint (when hmar_core.editing is absent): keep tokens outside a mask."""

    def __init__(self, source: list[torch.Tensor], regenerate: list[torch.Tensor]) -> None:
        self.source_tokens, self.regenerate = source, regenerate

    def keep(self, scale: int) -> torch.Tensor:
        return ~self.regenerate[scale]

    def source(self, scale: int) -> torch.Tensor:
        return self.source_tokens[scale]


def _regenerate_masks(pixel_mask: torch.Tensor, patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
    try:
        from hmar_core.masks import token_masks

        return token_masks(pixel_mask, patch_nums, grow=1)
    except ImportError:
        out = []
        for pn in patch_nums:
            cover = torch.nn.functional.interpolate(pixel_mask[:, None].float(), size=(pn, pn),
                                                    mode="area")
            out.append((cover > 0.5 if pn < patch_nums[-1] else cover > 0).flatten(1))
        return out


def make_edit(pipe: Pipeline, engine: object, source: torch.Tensor, edit_steps: int | None
              ) -> tuple[Callable, str]:
    """One inpaint as a function of the seed: encode, constrained sampling, decode, composite.

    ``engine`` has ``encode``, ``sample_tokens`` and ``decode_fhat`` (the fast pipeline, or the
    reference tokenizer + pipeline); ``source`` is (1, 3, S, S) in [-1, 1]; ``edit_steps``
    refinement steps of the partly kept scales (the editor's knob), ``None`` = the plain
    generation schedule. Returns the function and a description of the schedule.
    """
    side = pipe.image_size
    device = pipe.device
    pixel_mask = torch.zeros(1, side, side, dtype=torch.bool, device=device)
    pixel_mask[:, side // 4: side // 4 + 3 * side // 8, side // 4: side // 4 + 3 * side // 8] = 1
    weight = pixel_mask[:, None].float()
    labels = torch.full((1,), pipe.transformer.cfg.null_class, dtype=torch.int64, device=device)
    settings = pipe.sampler_settings()
    base = pipe.resolve_schedule()
    try:
        from hmar_core.editing import EditSpec, edit_schedule
        have_editing = True
    except ImportError:
        have_editing = False

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            tokens = engine.encode(source)
            regenerate = _regenerate_masks(pixel_mask, pipe.patch_nums)
            if have_editing:
                spec = EditSpec(tuple(tokens), tuple(regenerate), labels)
                schedule = (edit_schedule(base, spec, edit_steps) if edit_steps is not None
                            else base)
            else:
                spec, schedule = _BoxConstraint(tokens, regenerate), base
            gen = torch.Generator(device=device).manual_seed(seed)
            out = engine.sample_tokens(labels, settings, schedule, gen, constraint=spec)
            images = engine.decode_fhat(out.f_hat)
            return source * (1 - weight) + images * weight

    how = ("hmar_core.editing EditSpec, " if have_editing else "fallback box constraint, ") + (
        f"edit_schedule(steps={edit_steps})" if have_editing and edit_steps is not None
        else "benchmark generation schedule")
    return run, how


class _Reference:
    """The reference path with the fast engine's editing interface."""

    def __init__(self, pipe: Pipeline) -> None:
        self.encode = pipe.tokenizer.encode
        self.sample_tokens = pipe.sample_tokens
        self.decode_fhat = pipe.tokenizer.decode_fhat


# ------------------------------------------------------------------------------ checks
def teacher_forced_check(pipe: Pipeline, batch: int = 8) -> dict:
    """Fast (bf16) vs float32 (TF32 off) teacher-forced logits on the same weights and inputs."""
    from hmar_core.fast import FastRunner

    with torch.no_grad():
        out = pipe.generate(seed=7, batch_size=batch)
        tokens, labels = out.tokens, out.labels
        gen = torch.Generator(device=pipe.device).manual_seed(3)
        masked = [torch.rand(t.shape, generator=gen, device=pipe.device) < 0.5 for t in tokens]
        masked[0] = torch.zeros_like(masked[0])
        result = {}
        for branch, mask_arg in (("ns", None), ("mask", masked)):
            x_ns, x_mask, masked_BL = pipe.model.inputs(tokens, mask_arg)
            with full_float32():
                ref = pipe.transformer(labels, x_ns, x_mask, masked_BL)
            matmul = torch.backends.cuda.matmul
            cases = [("bf16", torch.bfloat16, True), ("fp16", torch.float16, True),
                     ("fp32", torch.float32, True)]
            if pipe.device.type == "cuda":  # does cuBLAS's bf16 split-K reduction cost accuracy?
                cases.append(("bf16 (fp32 GEMM reductions)", torch.bfloat16, False))
            for name, dtype, reduced in cases:
                runner = FastRunner(pipe.transformer, dtype, cuda_graphs=False)
                previous = matmul.allow_bf16_reduced_precision_reduction
                matmul.allow_bf16_reduced_precision_reduction = reduced
                try:
                    with full_float32():
                        fast = runner.teacher_forced(labels, x_ns, x_mask, masked_BL)
                finally:
                    matmul.allow_bf16_reduced_precision_reduction = previous
                rel = float((fast - ref).norm() / ref.norm())
                top1 = float((fast.argmax(-1) == ref.argmax(-1)).float().mean())
                result[f"{branch} {name}"] = {"rel_err": rel, "top1": top1,
                                              "tokens": int(ref.shape[0] * ref.shape[1])}
                del runner
            # The activations' share of the bf16 error: the same comparison on weights that
            # bf16 represents exactly (a bf16 checkpoint; the reference then runs the very
            # weights the fast path runs, so only bf16 activations/attention differ).
            exact = copy.deepcopy(pipe.transformer)
            with torch.no_grad():
                for module in _block_lists(exact):
                    for param in module.parameters():
                        param.copy_(param.to(torch.bfloat16).float())
            with full_float32():
                ref = exact(labels, x_ns, x_mask, masked_BL)
                fast = FastRunner(exact, torch.bfloat16, cuda_graphs=False).teacher_forced(
                    labels, x_ns, x_mask, masked_BL)
            result[f"{branch} bf16 (bf16-exact weights)"] = {
                "rel_err": float((fast - ref).norm() / ref.norm()),
                "top1": float((fast.argmax(-1) == ref.argmax(-1)).float().mean()),
                "tokens": int(ref.shape[0] * ref.shape[1])}
            del exact
    return result


def _block_lists(transformer: HMARTransformer) -> list[torch.nn.Module]:
    """The block stacks the fast path casts (heads and embeddings stay float32 there)."""
    names = ("base_blocks", "ns_blocks", "mask_blocks")
    return [getattr(transformer, n) for n in names if hasattr(transformer, n)]


def save_images(path: Path, rows: list[torch.Tensor]) -> None:
    """A PNG grid: one row of images per tensor (B, 3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    grid = torch.cat([torch.cat(list(r.clamp(0, 1).cpu()), dim=2) for r in rows], dim=1)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------ GPU run
def run_gpu(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if DRY_RUN[0] else "cuda")
    torch.set_float32_matmul_precision("high")  # the anchors' fp32 rows ran with TF32
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    gpu = "dry run on CPU (toy models)" if DRY_RUN[0] else torch.cuda.get_device_name()
    report: dict = {"gpu": gpu, "torch": torch.__version__,
                    "rows": [], "checks": {}, "edit": [], "notes": [], "errors": []}
    started = time.perf_counter()
    out_dir = Path(args.out)
    rows = plan(args.quick, args.no_var, args.extras)
    if args.only:
        rows = [row for row in rows if re.search(args.only, row.name)]
    reps = args.reps or (2 if args.quick else 5)
    args.edit_reps = args.edit_reps or (5 if args.quick else 10)
    groups: dict[tuple, list[Row]] = {}
    for row in rows:  # one model build per (family, depth, px, path), in priority order
        groups.setdefault((row.family, row.depth, row.px, row.path), []).append(row)
    print(f"# {report['gpu']}, torch {torch.__version__}: {len(rows)} rows in "
          f"{len(groups)} builds, budget {args.budget:.0f} s", flush=True)
    for (family, depth, px, path), members in groups.items():
        elapsed = time.perf_counter() - started
        if elapsed > args.budget:
            for row in members:
                print(f"[skip] {row.name}: time budget spent ({elapsed:.0f} s)", flush=True)
                report["rows"].append({**row.__dict__, "name": row.name, "skipped": "budget"})
            continue
        pipe = fast = None
        try:
            t0 = time.perf_counter()
            fast_dtype = {"fast": torch.float16, "fast-bf16": torch.bfloat16,
                          "fast-unfused": torch.float16}.get(path)
            pipe = build(depth, px, family, fast_dtype, device)
            options = {"fused": False} if path == "fast-unfused" else {}
            engine = pipe if fast_dtype is None else pipe.to_fast(dtype=fast_dtype, **options)
            fast = None if fast_dtype is None else engine
            print(f"[build] {family} d{depth} {px}px {path}: {time.perf_counter() - t0:.1f} s",
                  flush=True)
            for row in members:
                report["rows"].append(measure(row, engine, reps, args))
            if family == "hmar" and depth == 16 and px == 256 and path in ("reference", "fast"):
                extra_d16(pipe, fast, path, report, out_dir, args)
        except Exception as err:  # noqa: BLE001 - fail soft per configuration
            message = f"{family} d{depth} {px}px {path}: {type(err).__name__}: {err}"
            print(f"[error] {message}", flush=True)
            traceback.print_exc(limit=3)
            report["errors"].append(message)
            for row in members:
                if not any(r.get("name") == row.name for r in report["rows"]):
                    report["rows"].append({**row.__dict__, "name": row.name, "error": message})
        finally:
            del pipe, fast
            engine = None
            free()
    report["wall_s"] = time.perf_counter() - started
    return report


def measure(row: Row, engine: object, reps: int, args: argparse.Namespace) -> dict:
    record = {**row.__dict__, "name": row.name}
    try:
        batch = min(row.batch, 2) if DRY_RUN[0] else row.batch

        def generate(seed: int) -> object:
            with torch.no_grad():
                return engine.generate(seed=seed, batch_size=batch)

        slow = row.path == "reference" and row.depth == 30
        median, times, peak, reserved = time_gpu(
            generate, reps=min(reps, 3) if slow else reps, warmup=1 if slow else 2,
            budget_s=args.row_budget)
        record.update(ms=median, times_ms=times, img_per_s=batch / median * 1000,
                      peak_gib=peak, reserved_gib=reserved)
        runner = getattr(engine, "runner", None)
        if runner is not None:
            record["graphs"] = len(runner.graphs)
            record["graph_error"] = runner.graphs.error
            record["fused"] = bool(getattr(runner, "fused", False))
        if runner is not None and row.batch >= 4 and not DRY_RUN[0]:
            record["breakdown"] = breakdown(engine, batch)
            print(f"[breakdown] {row.name}: {record['breakdown']}", flush=True)
        if args.profile and not DRY_RUN[0] and row.px == 256 and (
                row.depth == 16 or row.batch == 64):
            record["profile"] = profile_table(row.name, lambda: generate(0))
        graphs = (f"  graphs {record['graphs']} fused {record['fused']} "
                  f"graph error {record['graph_error']}" if runner is not None else "")
        print(f"[row] {row.name}: {median:8.1f} ms/batch  {record['img_per_s']:7.1f} img/s  "
              f"peak {peak:5.1f} GiB (reserved {reserved:5.1f}){graphs}", flush=True)
    except torch.cuda.OutOfMemoryError as err:
        record["error"] = f"OOM: {str(err).splitlines()[0]}"
        print(f"[oom] {row.name}", flush=True)
    except Exception as err:  # noqa: BLE001
        record["error"] = f"{type(err).__name__}: {err}"
        print(f"[error] {row.name}: {record['error']}", flush=True)
        traceback.print_exc(limit=3)
    free()
    return record


def profile_table(label: str, fn: Callable[[], object], rows: int = 22) -> dict:
    """One run of ``fn`` under torch.profiler: the top CUDA kernels by total time, printed,
    and the summed kernel time against the wall time (host-bound when much smaller)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    tick = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - tick) * 1000
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"
              or getattr(e, "self_device_time_total", 0) > 0]
    kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    launches = sum(e.count for e in events)
    print(f"[profile] {label}: wall {wall_ms:.1f} ms (profiled), kernels {kernel_us / 1000:.1f} ms"
          f" in {launches} launches", flush=True)
    top = sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:rows]
    for e in top:
        print(f"    {getattr(e, 'self_device_time_total', 0) / 1000:8.2f} ms {e.count:6d}x  "
              f"{e.key[:110]}", flush=True)
    return {"wall_ms": wall_ms, "kernel_ms": kernel_us / 1000, "launches": launches,
            "top": [(e.key[:110], getattr(e, "self_device_time_total", 0) / 1000, e.count)
                    for e in top]}


def breakdown(fast: object, batch: int) -> dict:
    """Where a fast batch goes: sampling alone, and the decoder in three forms (ms)."""
    pipe = fast.pipe
    settings, schedule = pipe.sampler_settings(), pipe.resolve_schedule()
    result: dict = {}
    try:
        def sample_only(seed: int) -> object:
            with torch.no_grad():
                gen, _ = pipe.make_generator(seed)
                labels = pipe.labels_for(None, batch, gen)
                return fast.sample_tokens(labels, settings, schedule, gen)

        f_hat = sample_only(0).f_hat
        result["sample_ms"] = time_gpu(sample_only, 3, 1, 3.0)[0]
        with torch.no_grad():  # the fast path's own decoder (compiled on CUDA by default)
            result["decode_fast_ms"] = time_gpu(lambda _seed: fast.decode_fhat(f_hat), 3, 1,
                                                3.0)[0]
        chunk = fast.decode_batch
        bf16 = copy.deepcopy(torch.nn.Sequential(pipe.tokenizer.post_quant_conv,
                                                 pipe.tokenizer.decoder)).to(torch.bfloat16)
        nhwc = copy.deepcopy(bf16).to(memory_format=torch.channels_last)
        variants = {
            "decode_fp32_tf32_ms": lambda: pipe.tokenizer.decode_fhat(f_hat),
            "decode_bf16_ms": lambda: [bf16(c.to(torch.bfloat16)) for c in f_hat.split(chunk)],
            "decode_bf16_channels_last_ms": lambda: [
                nhwc(c.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
                for c in f_hat.split(chunk)],
        }
        for name, fn in variants.items():
            with torch.no_grad():
                result[name] = time_gpu(lambda _seed, fn=fn: fn(), 3, 1, 3.0)[0]
    except Exception as err:  # noqa: BLE001
        result["error"] = f"{type(err).__name__}: {err}"
    free()
    return result


def extra_d16(pipe: Pipeline, fast: object, path: str, report: dict, out_dir: Path,
              args: argparse.Namespace) -> None:
    """d16 256 px: samples of both paths, the teacher-forced check, and the edit latency."""
    sample = (fast if fast is not None else pipe).generate(seed=0, batch_size=4)
    report.setdefault("_samples", {})[path] = (sample.images.cpu(),
                                               [t.cpu() for t in sample.tokens])
    if path == "reference":
        try:
            report["checks"]["teacher_forced_d16"] = teacher_forced_check(pipe)
            print(f"[check] teacher-forced d16: {report['checks']['teacher_forced_d16']}",
                  flush=True)
        except Exception as err:  # noqa: BLE001
            report["errors"].append(f"teacher-forced check: {type(err).__name__}: {err}")
            print(f"[error] teacher-forced check: {err}", flush=True)
    samples = report["_samples"]
    if "reference" in samples and "fast" in samples:
        (ref_images, ref_tokens), (fast_images, fast_tokens) = samples["reference"], samples["fast"]
        same = sum(int((a == b).sum()) for a, b in zip(ref_tokens, fast_tokens))
        total = sum(t.numel() for t in ref_tokens)
        png = out_dir / "samples_d16_256_reference_vs_fast.png"
        save_images(png, [ref_images, fast_images])
        report["checks"]["samples_d16"] = {
            "png": str(png), "seed": 0, "token_agreement": same / total,
            "first_scale_differing": next((si for si, (a, b) in enumerate(zip(ref_tokens,
                                           fast_tokens)) if not torch.equal(a, b)), None),
            "mean_abs_pixel_diff": float((ref_images - fast_images).abs().mean())}
        print(f"[samples] {png} token agreement {same / total:.3f}", flush=True)
    engine = fast if fast is not None else _Reference(pipe)
    source = sample.images[:1] * 2 - 1
    for edit_steps in EDIT_STEPS:
        try:
            run, how = make_edit(pipe, engine, source, edit_steps)
            median, times, peak, _ = time_gpu(run, reps=args.edit_reps, warmup=2,
                                              budget_s=args.row_budget)
            if args.profile and fast is not None and not DRY_RUN[0]:
                profile_table(f"edit d16 B=1 fast ({how})", lambda run=run: run(0))
            report["edit"].append({"path": path, "ms": median, "times_ms": times,
                                   "peak_gib": peak, "how": how})
            print(f"[edit] d16 256px B=1 {path} ({how}): {median:.1f} ms", flush=True)
        except Exception as err:  # noqa: BLE001
            report["errors"].append(f"edit {path}: {type(err).__name__}: {err}")
            print(f"[error] edit {path}: {err}", flush=True)
            traceback.print_exc(limit=3)


# ------------------------------------------------------------------------------ CPU run
def run_cpu(args: argparse.Namespace) -> dict:
    """The 64 px demo model: generation with ``--threads`` and with 1 thread, and edits.

    Wall time on a shared machine mostly measures the other tenants (and OpenMP threads
    waiting for each other), so the process CPU time of the 1-thread runs is reported too:
    the work one image costs, a contention-free estimate of the 1-core wall time.
    """
    folder = ROOT / "assets" / "hmar-emoji64"
    if (folder / "config.json").is_file():
        pipe = Pipeline.from_pretrained(folder)
        model = f"bundled {folder.relative_to(ROOT)}"
    else:
        pipe = Pipeline.random("emoji64", "emoji-d8")
        model = ("random weights of the bundled model's size (emoji64 tokenizer + emoji-d8; "
                 f"{folder.relative_to(ROOT)} not found)")
    report: dict = {"cpu": True, "threads": args.threads, "model": model, "torch":
                    torch.__version__, "rows": [], "edit": [], "load_before": os.getloadavg()[0]}
    fast = pipe.to_fast(dtype=torch.float32)
    engines = {"reference": pipe, "fast": fast}
    print(f"# CPU: {model}", flush=True)
    with torch.no_grad():
        source = pipe.generate(seed=123, batch_size=1).images * 2 - 1
    for threads in dict.fromkeys((args.threads, 1)):
        torch.set_num_threads(threads)
        for path, engine in engines.items():
            def generate(seed: int, engine: object = engine) -> object:
                with torch.no_grad():
                    return engine.generate(seed=seed, batch_size=1)

            median, times, cpu = time_cpu(generate, reps=args.cpu_reps, warmup=1)
            report["rows"].append({"path": path, "threads": threads, "ms": median,
                                   "times_ms": times, "cpu_ms": cpu})
            print(f"[cpu] 64px generate B=1 {path}, {threads} thread(s): {median:.0f} ms wall "
                  f"(median of {len(times)}), process CPU {cpu:.0f} ms", flush=True)
    torch.set_num_threads(args.threads)
    for edit_steps in EDIT_STEPS:
        for path, engine in engines.items():
            run, how = make_edit(pipe, engine if path == "fast" else _Reference(pipe), source,
                                 edit_steps)
            median, times, cpu = time_cpu(run, reps=max(2, args.cpu_reps // 2), warmup=1)
            report["edit"].append({"path": path, "threads": args.threads, "ms": median,
                                   "times_ms": times, "cpu_ms": cpu, "how": how})
            print(f"[cpu] 64px edit B=1 {path}, {args.threads} thread(s) ({how}): {median:.0f} "
                  f"ms wall, process CPU {cpu:.0f} ms", flush=True)
    report["load_after"] = os.getloadavg()[0]
    return report


# ----------------------------------------------------------------------------- markdown
def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def gpu_markdown(report: dict) -> str:
    lines = [MARK_START, "", f"### GPU: {report['gpu']} (torch {report['torch']})", "",
             "`python benchmarks/inference.py --out OUT` — random N(0, 0.02) weights, random "
             "labels, cfg 1.5, top-k 900, top-p 0.96, benchmark mask schedules (HMAR), VQ-VAE "
             "decode included; median ms per `generate` of B images after warm-up (CUDA events);"
             " peak = `max_memory_allocated` (weights included). reference = float32/TF32 "
             "engine path; fast = `pipe.to_fast()` (fp16 blocks — fast-bf16: bf16 blocks — "
             "with a float32 residual stream, float32 heads/quantiser/f_hat, bf16 VQ-VAE through "
             "torch.compile, CUDA graphs per scale, fused top-k/top-p, no host sync in the scale "
             "loop).", "",
             "| setting | path | ms / batch | images/s | peak GiB (reserved) | graphs | "
             "official anchors (ms, GiB) | target |", "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        key = (row["depth"], row["px"], row["batch"])
        anchors = ANCHORS.get(key, {})
        anchor_text = ", ".join(f"{k} {v:g}" for k, v in anchors.items()
                                if k not in ("target", "target GiB")) or "–"
        target = anchors.get("target")
        target_text = "–"
        if row["family"] == "hmar" and row["path"].startswith("fast") and target:
            target_text = f"≤ {target:g} ms"
            if "target GiB" in anchors:
                target_text += f", ≤ {anchors['target GiB']:g} GiB"
        setting = f"{row['family'].upper()} d{row['depth']} {row['px']}px B={row['batch']}"
        if "ms" in row:
            met = ""
            if target_text != "–":
                ok = row["ms"] <= target and row["peak_gib"] <= anchors.get("target GiB", 1e9)
                met = " ✅" if ok else " ❌"
            lines.append(f"| {setting} | {row['path']} | {_fmt(row['ms'])} | "
                         f"{_fmt(row['img_per_s'])} | {_fmt(row['peak_gib'], 2)} "
                         f"({_fmt(row.get('reserved_gib'), 1)}) | "
                         f"{row.get('graphs', '–')} | {anchor_text} | {target_text}{met} |")
        else:
            why = row.get("error") or f"skipped ({row.get('skipped')})"
            lines.append(f"| {setting} | {row['path']} | {why} | | | | {anchor_text} | "
                         f"{target_text} |")
    broken = [r for r in report["rows"] if r.get("breakdown")]
    if broken:
        lines += ["", "**Where a fast batch goes** (ms; sampling = `sample_tokens` alone; the "
                  "decoder of the same f_hat in float32/TF32, bf16, bf16 channels-last, in "
                  "chunks of 16):", ""]
        for r in broken:
            parts = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" if isinstance(v, float)
                              else f"{k} {v}" for k, v in r["breakdown"].items())
            lines.append(f"- {r['name']}: {parts}")
    lines += ["", "**Interactive edit** (one 256 px inpaint, d16, B = 1, end to end: encode, "
              "constrained sampling, decode, composite; target ≤ 50 ms):", ""]
    for edit in report.get("edit", []):
        lines.append(f"- {edit['path']}: **{edit['ms']:.1f} ms** ({edit['how']})")
    checks = report.get("checks", {})
    tf = checks.get("teacher_forced_d16")
    if tf:
        lines += ["", "**Teacher-forced logits vs float32 (TF32 off)**, d16 256 px random "
                  "weights, same weights and inputs:", "",
                  "| branch, fast dtype | top-1 agreement | relative error (‖Δ‖/‖ref‖) |",
                  "|---|---|---|"]
        for name, value in tf.items():
            lines.append(f"| {name} | {value['top1'] * 100:.2f} % | {value['rel_err']:.2e} |")
    samples = checks.get("samples_d16")
    if samples:
        lines += ["", f"**Samples** (seed 0, d16 256 px; top row reference, bottom row fast): "
                  f"`{Path(samples['png']).name}`; token agreement "
                  f"{samples['token_agreement'] * 100:.1f} % (first differing scale "
                  f"{samples['first_scale_differing']}), mean |Δpixel| "
                  f"{samples['mean_abs_pixel_diff']:.4f}. Sampling is chaotic: one flipped "
                  "token changes every later draw, so half-precision images are compared visually."]
    for err in report.get("errors", []):
        lines.append(f"- error: {err}")
    lines += ["", f"Wall time of the run: {report.get('wall_s', 0):.0f} s."]
    for note in report.get("notes", []):
        lines += ["", note]
    lines += ["", MARK_END]
    return "\n".join(lines) + "\n"


def cpu_markdown(report: dict) -> str:
    lines = [CPU_START, "", f"### CPU ({report['threads']} threads, torch {report['torch']})",
             "", f"`python benchmarks/inference.py --cpu` — {report['model']}; one 64 px image, "
             f"B = 1, median of several runs; target ≤ {CPU_TARGET_S:g} s. Load average "
             f"{report.get('load_before', 0):.1f} before / {report.get('load_after', 0):.1f} "
             "after the run (a shared machine inflates wall times; process CPU time is the sum "
             "over threads).", "",
             "| task | path | threads | median wall ms | median process CPU ms |",
             "|---|---|---|---|---|"]
    for row in report["rows"] + report["edit"]:
        task = f"edit ({row['how']})" if "how" in row else "generate"
        lines.append(f"| {task} | {row['path']} | {row.get('threads', '')} | {row['ms']:.0f} | "
                     f"{row.get('cpu_ms', 0):.0f} |")
    return "\n".join(lines + ["", CPU_END]) + "\n"


def write_markdown(path: Path, report: dict) -> None:
    """Replace (or add) this benchmark's block inside our own BENCHMARKS.md section."""
    cpu = bool(report.get("cpu"))
    start, end = (CPU_START, CPU_END) if cpu else (MARK_START, MARK_END)
    block = cpu_markdown(report) if cpu else gpu_markdown(report)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = "## Inference (`benchmarks/inference.py`)"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block.rstrip("\n") + rest.split(end, 1)[1]
    elif heading in text:
        head, rest = text.split(heading, 1)
        text = head + heading + "\n\n" + block + rest.lstrip("\n")
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n" + block
    path.write_text(text)


def print_summary(report: dict) -> None:
    print("\n=== summary ===")
    if report.get("cpu"):
        for row in report["rows"] + report["edit"]:
            print(f"{row['path']:>9}  {row.get('threads', '')} thr  {row['ms']:8.0f} ms wall  "
                  f"{row.get('cpu_ms', 0):8.0f} ms CPU  {row.get('how', 'generate')}")
        return
    print(f"{'setting':<36}{'ms':>9}{'img/s':>9}{'GiB':>8}  anchors / target")
    for row in report["rows"]:
        anchors = ANCHORS.get((row["depth"], row["px"], row["batch"]), {})
        text = ", ".join(f"{k} {v:g}" for k, v in anchors.items())
        if "ms" in row:
            print(f"{row['name']:<36}{row['ms']:9.1f}{row['img_per_s']:9.1f}"
                  f"{row['peak_gib']:8.2f}  {text}")
        else:
            print(f"{row['name']:<36}  {row.get('error') or row.get('skipped')}")
    for edit in report.get("edit", []):
        print(f"edit d16 256px B=1 {edit['path']:<10} {edit['ms']:8.1f} ms  (target ≤ 50) "
              f"{edit['how']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="folder for inference.json and the sample PNG")
    parser.add_argument("--markdown", type=Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--render", type=Path, default=None, help="only render this JSON")
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run (d16 only)")
    parser.add_argument("--cpu", action="store_true", help="the 64 px demo model on CPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="the GPU plan with toy models on CPU (checks the script only)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (--cpu)")
    parser.add_argument("--no-var", action="store_true", help="skip the VAR rows")
    parser.add_argument("--extras", action="store_true", help="add 512 px and B=16 rows")
    parser.add_argument("--reps", type=int, default=0, help="timed runs per row")
    parser.add_argument("--edit-reps", type=int, default=0, help="timed edits (10; quick 5)")
    parser.add_argument("--cpu-reps", type=int, default=4, help="timed runs on CPU")
    parser.add_argument("--only", default=None,
                        help="regular expression: only the rows whose name matches")
    parser.add_argument("--profile", action="store_true",
                        help="print the top CUDA kernels of the d16 256 px rows and edits")
    parser.add_argument("--budget", type=float, default=170.0,
                        help="seconds after which no new model is built (rows are skipped)")
    parser.add_argument("--row-budget", type=float, default=8.0,
                        help="seconds of timed runs per row (at least two runs)")
    args = parser.parse_args()
    if args.render is not None:
        report = json.loads(args.render.read_text())
    elif args.cpu:
        report = run_cpu(args)
    elif args.dry_run:
        DRY_RUN[0] = True
        torch.set_num_threads(args.threads)
        report = run_gpu(args)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: use --cpu for the CPU figure")
        report = run_gpu(args)
    report.pop("_samples", None)
    if args.render is None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "inference-cpu.json" if args.cpu else "inference.json"
        (args.out / name).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out / name}")
    print_summary(report)
    if args.markdown is not None:
        write_markdown(args.markdown, report)
        print(f"updated {args.markdown}")


if __name__ == "__main__":
    main()
