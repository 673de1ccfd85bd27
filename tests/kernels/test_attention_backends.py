"""Attention backends against a float64 dense reference, with the flash-attn error rule.

Rule: for the output and for dQ, dK, dV, the max error of a backend against float64 must be at
most twice the error of plain PyTorch attention computed in the same precision (scores, softmax
output and products rounded to that dtype), plus a tiny absolute slack. Without a GPU the Triton
kernels run through Triton's interpreter (see conftest.py) at small sizes; with a GPU the same
tests run the compiled kernels, and ``gpu``-marked tests add real pyramids and bf16 (the
interpreter mis-computes bf16 dot products, so bf16 is checked on the GPU only).
"""

from __future__ import annotations

import pytest
import torch

from kernels import ScaleMask, attention, available_backends, flex_backend, triton_backend

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if HAS_CUDA else torch.device("cpu")
PATTERNS = ["block_diagonal", "block_causal"]
CPU_PYRAMIDS = [(1, 2, 3), (1, 2, 3, 4, 5), (1, 3, 7), (1, 2, 4, 9)]
PYRAMID_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PYRAMID_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
PYRAMID_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)

requires_triton = pytest.mark.skipif(
    not triton_backend.is_available(), reason="needs triton with CUDA or TRITON_INTERPRET=1"
)
gpu = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: torch.device = DEVICE
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fresh random q, k, v (requiring grad) and an upstream gradient, all N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(shape, generator=generator) for _ in range(4))
    inputs = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    return inputs, grad_out.to(device=device, dtype=dtype)


def _pytorch_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: ScaleMask, scale: float
) -> torch.Tensor:
    """Plain attention in q's dtype: scores, probabilities and products rounded to it."""
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~mask.dense(q.device), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs @ v


def _run(fn, inputs, grad_out):
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out.detach(), *grads]


#: How far from float64 our kernel may be, in multiples of PyTorch's own error at the same
#: precision. float32 gets more room: PyTorch's float32 products on the CPU (oneDNN, FMA,
#: blocked reductions) are far more exact than the Triton interpreter's tile-by-tile numpy
#: products, and the gap depends on the machine (measured up to 7.6x on the 2-core CI machine,
#: 2026-12; a wrong kernel is off by orders of magnitude, not by a few roundings).
ERROR_FACTOR = {torch.float32: 10.0}


def _check_against_reference(fn, mask: ScaleMask, inputs, grad_out, scale: float) -> None:
    """fn's output and grads vs float64, within a few times the same-precision PyTorch error
    (:data:`ERROR_FACTOR`, 2x for half precision)."""
    dtype = inputs[0].dtype
    ours = _run(fn, inputs, grad_out)
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    exact = _run(lambda q, k, v: _pytorch_attention(q, k, v, mask, scale),
                 exact_inputs, grad_out.double())
    same_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    same = _run(lambda q, k, v: _pytorch_attention(q, k, v, mask, scale), same_inputs, grad_out)
    for name, mine, pytorch, reference in zip(("out", "dq", "dk", "dv"), ours, same, exact,
                                              strict=True):
        assert mine.dtype == dtype and mine.shape == reference.shape
        assert torch.isfinite(mine).all(), name
        error = (mine.double() - reference).abs().max().item()
        pytorch_error = (pytorch.double() - reference).abs().max().item()
        slack = 0.05 * torch.finfo(dtype).eps * max(1.0, reference.abs().max().item())
        factor = ERROR_FACTOR.get(dtype, 2.0)
        assert error <= factor * pytorch_error + slack, (
            f"{name}: error {error:.3e} > {factor:g} x PyTorch's {pytorch_error:.3e} + "
            f"{slack:.1e}"
        )


# --------------------------------------------------------------------------------------------
# Triton kernel: CPU (interpreter) or GPU, small pyramids, fp32 and fp16
# --------------------------------------------------------------------------------------------

@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("patch_nums", CPU_PYRAMIDS, ids=str)
def test_triton_matches_float64_reference(patch_nums, pattern, head_dim, dtype):
    mask = ScaleMask(patch_nums, pattern)
    scale = head_dim**-0.5
    inputs, grad_out = _inputs((2, 2, mask.length, head_dim), dtype, seed=sum(patch_nums))
    _check_against_reference(
        lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, scale),
        mask, inputs, grad_out, scale,
    )


@requires_triton
@pytest.mark.parametrize("batch, heads", [(1, 1), (3, 1), (1, 3)])
def test_triton_odd_batch_and_heads_and_scale(batch, heads):
    mask = ScaleMask((1, 2, 3, 4, 5), "block_causal")
    scale = 0.37
    inputs, grad_out = _inputs((batch, heads, mask.length, 64), torch.float32, seed=batch + heads)
    _check_against_reference(
        lambda q, k, v: attention(q, k, v, mask, scale=scale, backend="triton"),
        mask, inputs, grad_out, scale,
    )


@requires_triton
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scale", [-0.37, 0.0, 2.5])
def test_triton_negative_zero_and_large_scales(pattern, scale):
    """The forward's interior tiles take the row maximum before scaling (the row minimum for a
    negative scale); (1, 2, 4, 9) has several interior key tiles per program. Large queries
    spread the scores over hundreds of units, so a wrong row maximum overflows exp2."""
    mask = ScaleMask((1, 2, 4, 9), pattern)
    inputs, grad_out = _inputs((1, 2, mask.length, 64), torch.float32, seed=7)
    inputs[0] = (inputs[0].detach() * 8).requires_grad_()
    _check_against_reference(
        lambda q, k, v: attention(q, k, v, mask, scale=scale, backend="triton"),
        mask, inputs, grad_out, scale,
    )


@requires_triton
@pytest.mark.parametrize("pattern", PATTERNS)
def test_backends_agree(pattern):
    """triton, reference and flex (forward; FlexAttention has no CPU backward) agree."""
    mask = ScaleMask((1, 2, 3, 4, 5), pattern)
    inputs, _ = _inputs((1, 2, mask.length, 64), torch.float32, seed=7)
    with torch.no_grad():
        outs = {
            name: attention(*inputs, mask, backend=name)
            for name in ("reference", "triton", "flex")
        }
    torch.testing.assert_close(outs["triton"], outs["reference"], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(outs["flex"], outs["reference"], atol=2e-6, rtol=1e-5)


def test_auto_picks_reference_on_cpu():
    mask = ScaleMask((1, 2, 3), "block_causal")
    inputs, _ = _inputs((1, 2, mask.length, 64), torch.float16, seed=1, device=torch.device("cpu"))
    assert available_backends("cpu", torch.float16) == ["reference"]
    with torch.no_grad():
        out = attention(*inputs, mask)
        expected = attention(*inputs, mask, backend="reference")
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------------------------
# Bad inputs raise ValueError
# --------------------------------------------------------------------------------------------

def _valid(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    mask = ScaleMask((1, 2, 3), "block_diagonal")
    device = DEVICE if HAS_CUDA else torch.device("cpu")
    q, k, v = (torch.randn(1, 2, mask.length, 64, device=device, dtype=dtype) for _ in range(3))
    return q, k, v, mask


def _bad_cases():
    q, k, v, mask = _valid()
    other_device = torch.device("cpu") if HAS_CUDA else torch.device("meta")
    return {
        "3-d": (q[0], k[0], v[0], mask),
        "shape": (q, k[:, :1], v, mask),
        "dtype": (q, k.half(), v, mask),
        "float64": (q.double(), k.double(), v.double(), mask),
        "non-contiguous": (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask),
        "head-dim-32": (q[..., :32].contiguous(), k[..., :32].contiguous(),
                        v[..., :32].contiguous(), mask),
        "length": (q, k, v, ScaleMask((1, 2, 4), "block_diagonal")),
        "mask-type": (q, k, v, mask.dense()),
        "device": (q, k.to(other_device), v, mask),
        "empty": (q[:0], k[:0], v[:0], mask),
    }


@requires_triton
@pytest.mark.parametrize("case", list(_bad_cases()))
def test_triton_rejects_bad_inputs(case):
    q, k, v, mask = _bad_cases()[case]
    with pytest.raises(ValueError):
        triton_backend.triton_attention(q, k, v, mask, 0.125)


@requires_triton
def test_triton_rejects_bad_scale():
    q, k, v, mask = _valid()
    for scale in (float("nan"), float("inf"), "0.125"):
        with pytest.raises(ValueError):
            triton_backend.triton_attention(q, k, v, mask, scale)


@requires_cuda
def test_triton_rejects_cpu_tensors_when_compiled():
    mask = ScaleMask((1, 2, 3))
    q = torch.randn(1, 1, mask.length, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        triton_backend.triton_attention(q, q, q, mask, 0.125)


@pytest.mark.parametrize("case", ["shape", "dtype", "length", "mask-type", "device"])
def test_flex_rejects_bad_inputs(case):
    q, k, v, mask = _bad_cases()[case]
    with pytest.raises(ValueError):
        flex_backend.flex_attention(q, k, v, mask, 0.125)


def test_flex_rejects_cpu_backward():
    mask = ScaleMask((1, 2, 3))
    q = torch.randn(1, 1, mask.length, 64, requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        flex_backend.flex_attention(q, q, q, mask, 0.125)


def test_attention_rejects_bad_backend_and_missing_mask():
    q, k, v, mask = _valid()
    with pytest.raises(ValueError):
        attention(q, k, v, mask, backend="cudnn")
    for backend in ("triton", "flex"):
        with pytest.raises(ValueError):
            attention(q, k, v, None, backend=backend)
    with pytest.raises(ValueError):
        attention(q, k, v, ScaleMask((1, 2, 4)), backend="reference")


# --------------------------------------------------------------------------------------------
# GPU: real pyramids, bf16, FlexAttention with backward, auto dispatch
# --------------------------------------------------------------------------------------------

@gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("patch_nums", [PYRAMID_256, (1, 3, 7)], ids=["256px", "odd"])
def test_triton_gpu_matches_float64_reference(patch_nums, pattern, head_dim, dtype):
    mask = ScaleMask(patch_nums, pattern)
    scale = head_dim**-0.5
    inputs, grad_out = _inputs((2, 3, mask.length, head_dim), dtype, seed=len(patch_nums))
    _check_against_reference(
        lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, scale),
        mask, inputs, grad_out, scale,
    )


@gpu
@requires_cuda
@pytest.mark.parametrize("patch_nums", [PYRAMID_512, PYRAMID_1024], ids=["512px", "1024px"])
def test_triton_gpu_large_pyramids(patch_nums):
    mask = ScaleMask(patch_nums, "block_diagonal")
    inputs, grad_out = _inputs((1, 2, mask.length, 64), torch.float16, seed=3)
    _check_against_reference(
        lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, 0.125),
        mask, inputs, grad_out, 0.125,
    )


@gpu
@requires_cuda
@pytest.mark.parametrize("pattern", PATTERNS)
def test_flex_gpu_matches_float64_reference(pattern):
    mask = ScaleMask(PYRAMID_256, pattern)
    inputs, grad_out = _inputs((2, 2, mask.length, 64), torch.float16, seed=5)
    _check_against_reference(
        lambda q, k, v: flex_backend.flex_attention(q, k, v, mask, 0.125),
        mask, inputs, grad_out, 0.125,
    )


@gpu
@requires_cuda
def test_auto_uses_triton_on_cuda_even_for_non_contiguous_inputs():
    mask = ScaleMask(PYRAMID_256, "block_diagonal")
    assert "triton" in available_backends(DEVICE, torch.float16)
    inputs, _ = _inputs((2, mask.length, 4, 64), torch.float16, seed=11)
    q, k, v = (t.detach().transpose(1, 2) for t in inputs)  # (B, H, L, D) views
    with torch.no_grad():
        out = attention(q, k, v, mask)
        expected = triton_backend.triton_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), mask, 0.125
        )
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------------------------
# Launch plans: built once per (mask, device, B·H, D, dtype, scale), tuned config reused
# --------------------------------------------------------------------------------------------

@requires_triton
def test_launch_plan_is_cached_and_later_calls_reuse_the_tuned_config():
    mask = ScaleMask((1, 2, 3, 4), "block_causal")
    inputs, grad_out = _inputs((1, 2, mask.length, 64), torch.float32, seed=21)
    plan = triton_backend._Launch.of(inputs[0], mask, 0.125)
    assert triton_backend._Launch.of(inputs[0].detach().clone(), ScaleMask((1, 2, 3, 4),
                                     "block_causal"), 0.125) is plan
    first = _run(lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, 0.125),
                 inputs, grad_out)
    for kernel in (plan.fwd, plan.dq, plan.dkdv):
        assert kernel.tuned is not None  # the first call recorded grid and config
        grid, meta = kernel.tuned
        assert grid == (kernel.schedule.counts[meta[kernel.row_block]] * 2,)
    second = _run(lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, 0.125),
                  inputs, grad_out)  # through the recorded configs, not the autotuner
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), name


@gpu
@requires_cuda
def test_launch_plan_keeps_the_compiled_launchers_and_respects_alignment():
    """From the third call on, each kernel launches through the compiled kernel's own launcher;
    tensors at an address that is not 16-byte aligned go through the JIT launcher (which
    compiles for them) and still give the right answer."""
    mask = ScaleMask(PYRAMID_256, "block_diagonal")
    inputs, grad_out = _inputs((2, 2, mask.length, 64), torch.float16, seed=23)
    plan = triton_backend._Launch.of(inputs[0], mask, 0.125)

    def call(q, k, v):
        return triton_backend.triton_attention(q, k, v, mask, 0.125)

    runs = [_run(call, inputs, grad_out) for _ in range(3)]
    for kernel in (plan.fwd, plan.dq, plan.dkdv):
        assert kernel.runner is not None
    for name, *values in zip(("out", "dq", "dk", "dv"), *runs, strict=True):
        assert all(torch.equal(values[0], other) for other in values[1:]), name
    flat = torch.empty(inputs[0].numel() + 1, device=DEVICE, dtype=torch.float16)
    shifted = flat[1:].view(inputs[0].shape)  # 2 bytes past an aligned address
    assert shifted.data_ptr() % 16 != 0
    shifted.copy_(inputs[0].detach())
    shifted.requires_grad_()
    _check_against_reference(call, mask, [shifted, *inputs[1:]], grad_out, 0.125)


@requires_triton
def test_launch_plan_tables_equal_a_fresh_build():
    mask = ScaleMask((1, 2, 4, 9), "block_diagonal")
    q = torch.zeros(3, 1, mask.length, 64, device=DEVICE)
    plan = triton_backend._Launch.of(q, mask, 0.125)
    fresh = triton_backend._Launch(mask, q.device, 3, 64, torch.float32, 0.125)
    for cached, built in zip(plan.fwd.tail + plan.dkdv.tail, fresh.fwd.tail + fresh.dkdv.tail,
                             strict=True):
        if isinstance(cached, torch.Tensor):
            assert torch.equal(cached, built)
        else:
            assert cached == built


@requires_triton
def test_triton_without_grad_matches_the_autograd_path():
    mask = ScaleMask((1, 2, 3, 4, 5), "block_diagonal")
    inputs, _ = _inputs((2, 1, mask.length, 64), torch.float16, seed=4)
    with_graph = triton_backend.triton_attention(*inputs, mask, 0.125)
    assert with_graph.grad_fn is not None
    with torch.no_grad():
        plain = triton_backend.triton_attention(*inputs, mask, 0.125)
    assert plain.grad_fn is None
    assert torch.equal(with_graph.detach(), plain)


@requires_triton
def test_triton_grad_of_q_only():
    """With k and v frozen the backward skips the dK/dV launch; dQ is unchanged."""
    mask = ScaleMask((1, 2, 3, 4, 5), "block_causal")
    inputs, grad_out = _inputs((1, 2, mask.length, 64), torch.float32, seed=9)
    full = _run(lambda q, k, v: triton_backend.triton_attention(q, k, v, mask, 0.125),
                inputs, grad_out)
    q = inputs[0].detach().requires_grad_()
    k, v = inputs[1].detach(), inputs[2].detach()
    out = triton_backend.triton_attention(q, k, v, mask, 0.125)
    (dq,) = torch.autograd.grad(out, [q], grad_out)
    assert torch.equal(dq, full[1])


@requires_triton
def test_attention_triton_rejects_bad_scale():
    q, k, v, mask = _valid()
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            attention(q, k, v, mask, scale=scale, backend="triton")


# --------------------------------------------------------------------------------------------
# Autotuning candidates (the compiled path; checked here without a GPU)
# --------------------------------------------------------------------------------------------

_TUNED_KERNELS = [
    ("fwd", "BLOCK_M", "BLOCK_N", triton_backend._FWD_CONFIGS),
    ("dq", "BLOCK_M", "BLOCK_N", triton_backend._DQ_CONFIGS),
    ("dkdv", "BLOCK_N", "BLOCK_M", triton_backend._DKDV_CONFIGS),
]
H200_SHARED_MEMORY = 232448  # bytes per block (opt-in), as Triton's driver reports it


@pytest.mark.parametrize(("kernel", "rows", "cols", "table"), _TUNED_KERNELS,
                         ids=[k[0] for k in _TUNED_KERNELS])
def test_autotune_candidates_fit_hopper_and_prune_to_the_smallest(kernel, rows, cols, table):
    from kernels.schedule import SCHEDULE_BLOCKS

    distinct = sorted({config for configs in table.values() for config in configs})
    configs = triton_backend._configs(rows, cols, distinct)
    for head_dim in (64, 128):
        assert 5 <= len(table[head_dim]) <= 20  # first-call tuning stays a few seconds
        kept = triton_backend._fitting_configs(kernel, rows, cols, table, configs, head_dim, 2,
                                               H200_SHARED_MEMORY)
        assert len(kept) == len(table[head_dim])  # every candidate fits an H200
        assert all(c.kwargs[rows] in SCHEDULE_BLOCKS for c in kept)
        assert all(c.kwargs[cols] in (16, 32, 64, 128) for c in kept)
    tiny = triton_backend._fitting_configs(kernel, rows, cols, table, configs, 128, 2, 1024)
    assert len(tiny) == 1
    sizes = [triton_backend._shared_memory(kernel, r, c, 128, s, 2)
             for r, c, _, s, *_ in table[128]]
    picked = triton_backend._config_entry(tiny[0], rows, cols)
    assert picked in table[128]
    assert triton_backend._shared_memory(kernel, picked[0], picked[1], 128, picked[3], 2) == min(
        sizes)


def test_config_entries_round_trip_with_register_caps():
    table = [(128, 64, 8, 3), (128, 64, 8, 3, 128), (64, 32, 4, 2)]
    configs = triton_backend._configs("BLOCK_M", "BLOCK_N", table)
    assert [c.maxnreg for c in configs] == [None, 128, None]
    assert [triton_backend._config_entry(c, "BLOCK_M", "BLOCK_N") for c in configs] == table
    kept = triton_backend._fitting_configs("fwd", "BLOCK_M", "BLOCK_N", {64: table[1:]},
                                           configs, 64, 2, H200_SHARED_MEMORY)
    assert kept == configs[1:]  # the capped and the uncapped 128x64 are distinct candidates
    assert configs[1].all_kwargs()["maxnreg"] == 128


def test_tuning_bench_times_a_failing_candidate_as_infinitely_slow():
    def fails() -> None:
        raise RuntimeError("PassManager::run failed")

    assert triton_backend._tuning_bench(fails, (0.5, 0.2, 0.8)) == [float("inf")] * 3


def test_compiled_module_prunes_configs_without_a_gpu():
    """Import the kernels as compiled (not interpreted) and call the autotuners' prune hooks
    as benchmarks/attention.py does before precompiling."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import torch; torch.cuda.current_device = lambda: 0\n"
        "import kernels.triton_backend as tb\n"
        "assert not tb._interpreted()\n"
        "tb._device_shared_memory = lambda index: 232448\n"
        "for name in ('_attn_fwd', '_attn_bwd_dq', '_attn_bwd_dkdv'):\n"
        "    tuner = getattr(tb, name)\n"
        "    for d in (64, 128):\n"
        "        kept = tuner.early_config_prune(tuner.configs, {}, HEAD_DIM=d)\n"
        "        print(name, d, len(kept))\n"
    )
    env = {**__import__("os").environ, "TRITON_INTERPRET": "0"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = [int(line.split()[-1]) for line in result.stdout.split("\n") if line]
    assert len(counts) == 6 and all(count >= 5 for count in counts)
