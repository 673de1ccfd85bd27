"""Attention over token pyramids on the GPU: our Triton kernel against the alternatives.

Shape legend: B = batch, H = heads, L = tokens, D = head dimension.

For the shapes of ``../shared/spec/perf-targets.md`` (fp16, D = 64) this script

1. compiles every autotuning config of our kernels in parallel worker processes (filling
   Triton's on-disk cache, so that tuning inside the timed process does not compile serially);
2. checks correctness: our output and dQ, dK, dV against an fp32 reference, in fp16 and bf16,
   next to the error of PyTorch SDPA in the same dtype;
3. times forward and forward+backward medians (``triton.testing.do_bench``) of: ours,
   FlexAttention (compiled), SDPA with the dense boolean mask, SDPA without a mask (dense
   work), and SDPA called once per scale;
4. prints a table with useful TFLOP/s (forward = 4·B·H·D·allowed pairs, forward+backward =
   3.5x that) beside the official kernel's anchor and our target, writes all numbers as JSON
   and writes the BENCHMARKS.md section.

Usage:
    python -m benchmarks.attention --json out.json --markdown BENCHMARKS.md   # on a GPU
    python -m benchmarks.attention --render out.json --markdown BENCHMARKS.md  # anywhere
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import ScaleMask, attention, flex_backend

SHAPES = [
    {"name": "256px", "patch_nums": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "batch": 64, "heads": 16},
    {"name": "512px", "patch_nums": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32), "batch": 16, "heads": 16},
    {"name": "1024px", "patch_nums": (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
     "batch": 4, "heads": 30},
]
PATTERNS = ("block_diagonal", "block_causal")
HEAD_DIM = 64
METHODS = {
    "ours": "ours (Triton block-sparse)",
    "flex": "FlexAttention (compiled)",
    "sdpa_mask": "SDPA + dense bool mask",
    "per_scale": "SDPA once per scale",
    "sdpa_dense": "SDPA, no mask (dense work)",
}
# perf-targets.md, measured on an H200: (fwd ms, fwd+bwd ms); None where not measured.
ANCHORS = {
    ("256px", "block_diagonal"): {
        "official": (0.213, 0.956), "flex": (1.618, 2.983), "sdpa_mask": (0.646, 2.274),
        "varlen": (0.413, 1.774), "sdpa_dense": (0.413, 1.524), "target": (0.16, 0.70)},
    ("256px", "block_causal"): {
        "official": (0.372, 1.530), "flex": (1.675, 3.335), "sdpa_mask": (0.650, 2.270),
        "varlen": (0.681, 2.984), "sdpa_dense": (0.413, 1.524), "target": (0.30, 1.15)},
    ("512px", "block_diagonal"): {
        "official": (0.374, 1.688), "flex": (1.344, 2.992), "sdpa_mask": (1.338, 4.348),
        "varlen": (0.509, 2.017), "sdpa_dense": (0.877, 2.967), "target": (0.29, 1.25)},
    ("512px", "block_causal"): {
        "official": (0.700, 3.065), "flex": (1.708, 4.398), "sdpa_mask": (1.348, 4.388),
        "varlen": (0.877, 3.688), "sdpa_dense": (0.877, 2.967), "target": (0.55, 2.4)},
    ("1024px", "block_diagonal"): {
        "official": (2.438, 11.10), "flex": None, "sdpa_mask": (27.09, 59.19),
        "varlen": (2.635, 10.40), "sdpa_dense": (6.911, 23.59), "target": (2.0, 8.5)},
}
MARK_START = "<!-- attention-benchmark:start -->"
MARK_END = "<!-- attention-benchmark:end -->"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# 1. Parallel compilation of every autotuning config (fills Triton's disk cache)
# --------------------------------------------------------------------------------------------

def _compile_jobs(dtypes: list[str], head_dims: list[int]) -> list[tuple[str, int, str, int]]:
    from kernels import triton_backend as tb

    jobs = []
    for name in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"):
        tuner = getattr(tb, name)
        for head_dim in head_dims:
            kept = tuner.early_config_prune(tuner.configs, {}, HEAD_DIM=head_dim)
            for config in kept:
                for dtype in dtypes:
                    jobs.append((name, tuner.configs.index(config), dtype, head_dim))
    return jobs


def _compile_one(job: tuple[str, int, str, int]) -> float:
    """Compile one (kernel, config, dtype, head dim) without launching it (worker process)."""
    from kernels import triton_backend as tb

    name, index, dtype_name, head_dim = job
    tuner = getattr(tb, name)
    config = tuner.configs[index]
    dtype = getattr(torch, dtype_name)
    fp32, int32 = torch.float32, torch.int32
    tensors = {
        "_attn_fwd": [dtype] * 4 + [fp32] + [int32] * 3,
        "_attn_bwd_dq": [dtype] * 5 + [fp32, dtype, fp32] + [int32] * 3,
        "_attn_bwd_dkdv": [dtype] * 4 + [fp32, fp32, dtype, dtype] + [int32] * 3,
    }[name]
    schedule_ints = [18, 118, 318, 818, 5, 5, 5, 5]  # offsets and item counts per tile size
    scalars = schedule_ints + [680, 0.18] + ([0.125] if name != "_attn_fwd" else []) + [12345]
    extra = {"NEGATIVE_SCALE": False} if name == "_attn_fwd" else {}
    start = time.perf_counter()
    try:
        tuner.fn.warmup(
            *tensors, *scalars, grid=(1,), HEAD_DIM=head_dim, DOT_PRECISION="tf32",
            WHILE_LOOPS=False, **extra, **config.all_kwargs(),
        )
    except Exception as error:  # noqa: BLE001 - the autotuner skips a config that fails
        print(f"precompile: {name} {config} {dtype_name} D={head_dim} failed: "
              f"{type(error).__name__}: {str(error)[:200]}", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def precompile(dtypes: list[str], head_dims: list[int], workers: int) -> None:
    jobs = _compile_jobs(dtypes, head_dims)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        seconds = list(pool.map(_compile_one, jobs))
    log(f"precompiled {len(jobs)} kernel configs in {time.perf_counter() - start:.1f} s "
        f"({sum(seconds):.1f} s of compile work, {workers} workers)")


# --------------------------------------------------------------------------------------------
# Methods under test
# --------------------------------------------------------------------------------------------

def per_scale_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> torch.Tensor:
    """One unmasked SDPA call per scale: its queries against its own (or all coarser) keys."""
    outs = []
    for start, size in zip(mask.scale_starts, mask.scale_sizes, strict=True):
        end = start + size
        key_start = start if mask.pattern == "block_diagonal" else 0
        outs.append(F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, key_start:end], v[:, :, key_start:end], scale=scale))
    return torch.cat(outs, dim=2)


def make_method(name: str, mask: ScaleMask, dense_mask: torch.Tensor, scale: float) -> Callable:
    if name == "ours":
        return lambda q, k, v: attention(q, k, v, mask, scale=scale, backend="triton")
    if name == "flex":
        return lambda q, k, v: flex_backend.flex_attention(q, k, v, mask, scale)
    if name == "sdpa_mask":
        return lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense_mask, scale=scale)
    if name == "sdpa_dense":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=scale)
    if name == "per_scale":
        return lambda q, k, v: per_scale_sdpa(q, k, v, mask, scale)
    raise ValueError(name)


# --------------------------------------------------------------------------------------------
# 2. Correctness
# --------------------------------------------------------------------------------------------

def _relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref).norm() / ref.norm()).item()


def _forward_backward(fn: Callable, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> list:
    out = fn(*inputs)
    return [out, *torch.autograd.grad(out, inputs, grad_out)]


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense_mask: torch.Tensor,
               scale: float) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~dense_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def correctness(device: torch.device, heads_checked: int) -> list[dict]:
    """Ours at the full benchmark shapes (so with the very configs the timing uses), checked on
    the first ``heads_checked`` heads of batch 0 against an fp32 reference of those heads."""
    rows = []
    for shape in SHAPES:
        for pattern in PATTERNS:
            mask = ScaleMask(shape["patch_nums"], pattern)
            dense_mask = mask.dense(device)
            scale = HEAD_DIM**-0.5
            generator = torch.Generator(device=device).manual_seed(len(rows))
            size = (shape["batch"], shape["heads"], mask.length, HEAD_DIM)
            base = [torch.randn(size, device=device, generator=generator) for _ in range(4)]
            part = (slice(0, 1), slice(0, heads_checked))
            exact_inputs = [t[part].clone().requires_grad_() for t in base[:3]]
            exact = _forward_backward(
                lambda q, k, v, m=dense_mask, s=scale: _reference(q, k, v, m, s),
                exact_inputs, base[3][part])
            for dtype in (torch.float16, torch.bfloat16):
                inputs = [t.to(dtype).requires_grad_() for t in base[:3]]
                method = make_method("ours", mask, dense_mask, scale)
                # the first call tunes and records the configs; check the second, which runs
                # the recorded launches (the path every later call and the timing take)
                _forward_backward(method, inputs, base[3].to(dtype))
                ours = _forward_backward(method, inputs, base[3].to(dtype))
                finite = all(bool(torch.isfinite(t).all()) for t in ours)
                ours_errors = [_relative_error(t[part], e) for t, e in zip(ours, exact,
                                                                            strict=True)]
                del inputs, ours
                inputs = [t[part].to(dtype).requires_grad_() for t in base[:3]]
                sdpa = _forward_backward(make_method("sdpa_mask", mask, dense_mask, scale),
                                         inputs, base[3][part].to(dtype))
                sdpa_errors = [_relative_error(t, e) for t, e in zip(sdpa, exact, strict=True)]
                ok = finite and all(o <= 2 * s + 1e-4 for o, s in zip(ours_errors, sdpa_errors,
                                                                      strict=True))
                row = {"shape": shape["name"], "pattern": pattern, "dtype": str(dtype)[6:],
                       "batch": shape["batch"], "heads": shape["heads"],
                       "heads_checked": heads_checked, "ours": ours_errors,
                       "sdpa": sdpa_errors, "ok": ok}
                rows.append(row)
                log("correct {shape} {pattern} {dtype}: ours {o} | sdpa {s} | {ok}".format(
                    shape=row["shape"], pattern=pattern, dtype=row["dtype"],
                    o=" ".join(f"{e:.1e}" for e in ours_errors),
                    s=" ".join(f"{e:.1e}" for e in sdpa_errors), ok="OK" if ok else "FAIL"))
            del exact, exact_inputs, base
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------
# 3. Timing
# --------------------------------------------------------------------------------------------

def time_method(fn: Callable, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> tuple:
    import triton.testing

    def forward() -> None:
        with torch.no_grad():
            fn(*inputs)

    def forward_backward() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad_out)

    forward_backward()  # compile, autotune
    torch.cuda.synchronize()
    fwd = triton.testing.do_bench(forward, warmup=25, rep=100, return_mode="median")
    both = triton.testing.do_bench(forward_backward, warmup=25, rep=100, return_mode="median")
    return fwd, both


def timing(device: torch.device, methods: list[str], budget_s: float, with_1024_causal: bool,
           save: Callable[[], None], results: list[dict]) -> None:
    start = time.perf_counter()
    cases = [(shape, pattern) for shape in SHAPES for pattern in PATTERNS
             if with_1024_causal or (shape["name"], pattern) != ("1024px", "block_causal")]
    for method in methods:  # ours first for every shape, slow compiles (flex) last
        for shape, pattern in cases:
            mask = ScaleMask(shape["patch_nums"], pattern)
            row = {"shape": shape["name"], "pattern": pattern, "method": method,
                   "batch": shape["batch"], "heads": shape["heads"], "length": mask.length,
                   "allowed_pairs": mask.allowed_pairs()}
            if time.perf_counter() - start > budget_s:
                row["error"] = "skipped: time budget"
                results.append(row)
                continue
            generator = torch.Generator(device=device).manual_seed(0)
            size = (shape["batch"], shape["heads"], mask.length, HEAD_DIM)
            inputs = [torch.randn(size, device=device, dtype=torch.float16, generator=generator)
                      .requires_grad_() for _ in range(3)]
            grad_out = torch.randn(size, device=device, dtype=torch.float16, generator=generator)
            fn = make_method(method, mask, mask.dense(device), HEAD_DIM**-0.5)
            began = time.perf_counter()
            try:
                row["fwd_ms"], row["fwd_bwd_ms"] = time_method(fn, inputs, grad_out)
            except Exception as error:  # noqa: BLE001 - a failed baseline must not stop the run
                row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            row["wall_s"] = time.perf_counter() - began
            results.append(row)
            log(f"time {row['shape']} {pattern} {method}: {row.get('fwd_ms', '-')} / "
                f"{row.get('fwd_bwd_ms', '-')} ms ({row['wall_s']:.1f} s) {row.get('error', '')}")
            del inputs, grad_out
            save()


def _breakdown_case(device: torch.device, shape: dict, pattern: str) -> dict:
    import triton.testing

    from kernels import triton_backend as tb

    mask = ScaleMask(shape["patch_nums"], pattern)
    size = (shape["batch"], shape["heads"], mask.length, HEAD_DIM)
    q, k, v, grad_out = (torch.randn(size, device=device, dtype=torch.float16) for _ in range(4))
    launch = tb._Launch.of(q, mask, HEAD_DIM**-0.5)
    out, lse = tb._forward(q, k, v, launch)
    dq, delta = tb._backward_dq(q, k, v, out, lse, grad_out, launch)
    tb._backward_dkdv(q, k, v, lse, delta, grad_out, launch)
    row = {"shape": shape["name"], "pattern": pattern}
    # host time of one forward+backward through attention(): CPU wall time per call with no
    # synchronisation inside the loop (the GPU work is queued, not waited for)
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]

    def api_call() -> None:
        out = attention(*inputs, mask, scale=HEAD_DIM**-0.5, backend="triton")
        torch.autograd.grad(out, inputs, grad_out)

    api_call()
    torch.cuda.synchronize()
    calls = 20
    began = time.perf_counter()
    for _ in range(calls):
        api_call()
    row["host_ms"] = (time.perf_counter() - began) * 1e3 / calls
    torch.cuda.synchronize()
    for name, fn in (
        ("fwd", lambda: tb._forward(q, k, v, launch)),
        ("dq", lambda: tb._backward_dq(q, k, v, out, lse, grad_out, launch)),
        ("dkdv", lambda: tb._backward_dkdv(q, k, v, lse, delta, grad_out, launch)),
    ):
        row[name] = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    return row


def kernel_breakdown(device: torch.device, results: list[dict]) -> None:
    """Median time of each of our three kernels at every benchmark shape (fp16)."""
    for shape in SHAPES:
        for pattern in PATTERNS:
            row = _breakdown_case(device, shape, pattern)
            results.append(row)
            log(f"kernels {row['shape']} {pattern}: fwd {row['fwd']:.3f} dq {row['dq']:.3f} "
                f"dkdv {row['dkdv']:.3f} ms; host {row['host_ms']:.3f} ms per fwd+bwd call")


def tuned_configs() -> dict[str, list[str]]:
    """What the autotuner chose, per kernel and key."""
    from kernels import triton_backend as tb

    chosen = {}
    for name in ("_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv"):
        tuner = getattr(tb, name)
        chosen[name] = [f"{key}: {config}" for key, config in tuner.cache.items()]
    return chosen


# --------------------------------------------------------------------------------------------
# 4. Report
# --------------------------------------------------------------------------------------------

def tflops(row: dict, key: str) -> float | None:
    if key not in row:
        return None
    flops = 4 * row["batch"] * row["heads"] * HEAD_DIM * row["allowed_pairs"]
    if key == "fwd_bwd_ms":
        flops *= 3.5
    return flops / (row[key] * 1e-3) / 1e12


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _pair(anchor: tuple[float, float] | None) -> str:
    return "–" if anchor is None else f"{anchor[0]:g} / {anchor[1]:g}"


def table_lines(report: dict) -> list[str]:
    lines = [
        "| shape | pattern | method | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s "
        "| anchor fwd / fwd+bwd ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["timing"]:
        key = (row["shape"], row["pattern"])
        anchors = ANCHORS.get(key, {})
        anchor_name = {"ours": "official", "per_scale": "varlen"}.get(row["method"], row["method"])
        anchor = anchors.get(anchor_name)
        label = METHODS[row["method"]]
        if row["method"] == "ours":
            label = f"**{label}**"
            anchor_text = f"official {_pair(anchor)}"
        elif row["method"] == "per_scale":
            anchor_text = f"one varlen call {_pair(anchor)}"
        else:
            anchor_text = _pair(anchor)
        fwd_tflops, both_tflops = tflops(row, "fwd_ms"), tflops(row, "fwd_bwd_ms")
        if "error" in row:
            cells = [row["error"], "", "", ""]
        else:
            cells = [_ms(row["fwd_ms"]), _ms(row["fwd_bwd_ms"]), f"{fwd_tflops:.0f}",
                     f"{both_tflops:.0f}"]
        lines.append(f"| {row['shape']} B{row['batch']} H{row['heads']} | {row['pattern']} | "
                     f"{label} | " + " | ".join(cells) + f" | {anchor_text} |")
    return lines


def verdict_lines(report: dict) -> list[str]:
    lines = ["| shape | pattern | ours fwd / fwd+bwd ms | official fwd / fwd+bwd ms | "
             "speed-up fwd / fwd+bwd |", "|---|---|---|---|---|"]
    for row in report["timing"]:
        if row["method"] != "ours" or "error" in row:
            continue
        official = ANCHORS.get((row["shape"], row["pattern"]), {}).get("official")
        if official is None:
            continue
        lines.append(f"| {row['shape']} | {row['pattern']} | {row['fwd_ms']:.3f} / "
                     f"{row['fwd_bwd_ms']:.3f} | {_pair(official)} | "
                     f"{official[0] / row['fwd_ms']:.2f}x / "
                     f"{official[1] / row['fwd_bwd_ms']:.2f}x |")
    return lines


def correctness_lines(report: dict) -> list[str]:
    lines = ["| shape (heads checked) | pattern | dtype | ours rel. error out / dq / dk / dv | "
             "SDPA same dtype | ≤ 2x SDPA |", "|---|---|---|---|---|---|"]
    for row in report["correctness"]:
        ours = " / ".join(f"{e:.1e}" for e in row["ours"])
        sdpa = " / ".join(f"{e:.1e}" for e in row["sdpa"])
        checked = row.get("heads_checked", row["heads"])
        lines.append(f"| {row['shape']} B{row['batch']} H{row['heads']} ({checked}) | "
                     f"{row['pattern']} | {row['dtype']} | {ours} | {sdpa} | "
                     f"{'yes' if row['ok'] else 'NO'} |")
    return lines


def breakdown_lines(report: dict) -> list[str]:
    lines = ["| shape | pattern | forward | dQ (+ delta) | dK, dV | sum | host time of one "
             "fwd+bwd call |", "|---|---|---|---|---|---|---|"]
    for row in report.get("breakdown", []):
        total = row["fwd"] + row["dq"] + row["dkdv"]
        host = _ms(row.get("host_ms"))
        lines.append(f"| {row['shape']} | {row['pattern']} | {row['fwd']:.3f} | {row['dq']:.3f} | "
                     f"{row['dkdv']:.3f} | {total:.3f} | {host} |")
    return lines


def markdown(report: dict) -> str:
    env = report["environment"]
    parts = [
        MARK_START,
        "## Attention kernels (`kernels/`, `benchmarks/attention.py`)",
        "",
        f"GPU: **{env['gpu']}**; torch {env['torch']}, triton {env['triton']}, CUDA "
        f"{env['cuda']}; fp16 inputs, D = {HEAD_DIM}; medians of `triton.testing.do_bench` "
        "(25 ms warm-up, 100 ms of runs, L2 flushed); forward timed under `no_grad`, "
        "forward+backward as `autograd.grad` of the output. Useful FLOPs: forward = "
        "4·B·H·D·(allowed pairs), forward+backward = 3.5x. Anchors: the official HMAR "
        "implementation (its autotuned Triton kernel; PyTorch for the other methods) measured "
        f"on the same GPU model. Measured {env['date']} with `python -m benchmarks.attention "
        "--with-1024-causal --breakdown --json OUT.json --markdown BENCHMARKS.md`; "
        "`--render OUT.json --markdown BENCHMARKS.md` rewrites this section from the JSON.",
        "",
        "### Ours against the official kernel",
        "",
        *verdict_lines(report),
        "",
        "### All methods",
        "",
        *table_lines(report),
        "",
        *(["### Our three kernels apart (ms, each timed alone with a flushed L2)", "",
           *breakdown_lines(report), ""] if report.get("breakdown") else []),
        *(["### Notes", "", *report["notes"], ""] if report.get("notes") else []),
        "### Correctness (relative error vs an fp32 reference, fp16 and bf16)",
        "",
        "Ours runs at the full benchmark shape (the configs the timing uses); the first heads of",
        "batch 0 are compared with an fp32 reference, next to PyTorch SDPA (dense mask) in the",
        "same dtype on the same heads.",
        "",
        *correctness_lines(report),
        MARK_END,
    ]
    return "\n".join(parts) + "\n"


def write_markdown(path: Path, report: dict) -> None:
    section = markdown(report)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write all numbers here")
    parser.add_argument("--markdown", type=Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--render", type=Path, default=None, help="only render this JSON")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop timing after this")
    parser.add_argument("--with-1024-causal", action="store_true")
    parser.add_argument("--no-correctness", action="store_true")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--head-dims", default=str(HEAD_DIM), help="precompile these head dims")
    parser.add_argument("--precompile-only", action="store_true")
    parser.add_argument("--skip-precompile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="time our 3 kernels apart")
    args = parser.parse_args()

    if args.render is not None:
        report = json.loads(args.render.read_text())
        print("\n".join(table_lines(report)))
        if args.markdown is not None:
            write_markdown(args.markdown, report)
        return
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32
    torch._dynamo.config.cache_size_limit = 64  # FlexAttention compiles once per shape
    device = torch.device("cuda")
    report: dict = {
        "environment": {
            "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"),
        },
        "correctness": [], "timing": [],
    }

    def save() -> None:
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1))

    log(f"GPU {report['environment']['gpu']}, torch {torch.__version__}, triton "
        f"{triton.__version__}")
    if not args.skip_precompile:
        head_dims = [int(d) for d in args.head_dims.split(",")]
        precompile(["float16", "bfloat16"], head_dims, args.workers)
    if args.precompile_only:
        return
    if not args.no_correctness:
        report["correctness"] = correctness(device, heads_checked=8)
        save()
    timing(device, args.methods.split(","), args.budget_s, args.with_1024_causal, save,
           report["timing"])
    if args.breakdown:
        report["breakdown"] = []
        kernel_breakdown(device, report["breakdown"])
    report["tuned"] = tuned_configs()
    save()
    for name, configs in report["tuned"].items():
        for line in configs:
            log(f"tuned {name} {line}")
    print("\n".join(correctness_lines(report)))
    print()
    print("\n".join(table_lines(report)))
    print()
    print("\n".join(verdict_lines(report)))
    if args.markdown is not None:
        write_markdown(args.markdown, report)


if __name__ == "__main__":
    main()
