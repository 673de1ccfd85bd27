"""The fast inference path against the float32 reference (CPU; a CUDA-graph check on GPU).

* the fused top-k/top-p filter keeps exactly the reference's set; ``draw`` is ``multinomial``;
* teacher-forced logits of :class:`FastRunner` vs :meth:`HMARTransformer.forward` (float32:
  ≥ 99 % top-1 and ~1e-7 relative error; bf16: reported, loose bounds);
* generation through the fast path in float32 gives the reference's tokens for the same seed
  (HMAR and VAR, plain and edited, resumed), because it makes the same random draws.
"""

from __future__ import annotations

import pytest
import torch

from hmar_core import Pipeline, SamplerConfig, TransformerConfig, sample
from hmar_core.config import PATCH_NUMS
from hmar_core.fast import (
    FastRunner,
    GraphCache,
    cast_blocks_,
    draw,
    fast_sample,
    fused_top_k_top_p_filter,
)
from hmar_core.model import ScaleRunner
from hmar_core.sampler import ScaleInput, top_k_top_p_filter
from hmar_core.transformer import HMARTransformer


# --------------------------------------------------------------------------------- filter
def _distinct_logits(rows: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    """Random logits with distinct values in every row (no ties at any boundary)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale
    ranks = base.argsort(-1).argsort(-1).to(torch.float64)
    return (base + ranks * 1e-5).float()  # strictly increasing with rank, even after rounding


def test_fused_filter_hand_made():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5]])
    # ties at the k-th value are kept (topk returns only one of them)
    for top_p in (0.0, 0.999):
        fused = fused_top_k_top_p_filter(logits, 2, top_p)
        assert torch.equal(fused, top_k_top_p_filter(logits, 2, top_p))
    assert torch.equal(torch.isfinite(fused[0]), torch.tensor([False, True, True, True, False]))
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    for top_k, top_p in ((3, 0.8), (3, 1e-6), (0, 0.8), (2, 0.0), (0, 0.0), (4, 0.5), (3, 1.0)):
        assert torch.equal(fused_top_k_top_p_filter(probs.log(), top_k, top_p),
                           top_k_top_p_filter(probs.log(), top_k, top_p)), (top_k, top_p)
    # the largest entry survives any top_p; input unchanged
    tiny = fused_top_k_top_p_filter(probs.log(), 3, 1e-6)
    assert torch.isfinite(tiny[0, 0]) and torch.isinf(tiny[0, 1:]).all()
    assert torch.equal(probs, torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def test_fused_filter_ties_beyond_k_change_the_nucleus():
    # three logits tie at the k-th value: the reference keeps all three, and their mass
    # counts in its nucleus (ascending cumulative 0.039, 0.077, 0.116, 0.222, 1); the fused
    # filter must count the two that topk left out (at top_p 0.8, ignoring them would also
    # drop the 2.0).
    logits = torch.tensor([[4.0, 2.0, 1.0, 1.0, 1.0, -1.0, -3.0, 0.0]])
    for top_p in (0.8, 0.85, 0.97, 0.99, 0.999):
        assert torch.equal(fused_top_k_top_p_filter(logits, 3, top_p),
                           top_k_top_p_filter(logits, 3, top_p)), top_p
    # where the nucleus boundary falls inside a tie group, the reference keeps an arbitrary
    # part of it (its sort order); the fused filter keeps the whole group
    fused, reference = (f(logits, 3, 0.9) for f in (fused_top_k_top_p_filter,
                                                     top_k_top_p_filter))
    assert torch.equal(torch.isfinite(fused[0]), logits[0] >= 1.0)
    assert bool((torch.isfinite(reference) <= torch.isfinite(fused)).all())


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])
@pytest.mark.parametrize("top_k,top_p", [(900, 0.96), (50, 0.5), (4000, 0.99), (900, 0.0)])
def test_fused_filter_random_logits(scale, top_k, top_p):
    logits = _distinct_logits(64, 4096, scale, seed=int(scale * 10) + top_k)
    fused = fused_top_k_top_p_filter(logits, top_k, top_p)
    reference = top_k_top_p_filter(logits, top_k, top_p)
    assert torch.equal(torch.isfinite(fused), torch.isfinite(reference))
    assert torch.equal(fused.softmax(-1), reference.softmax(-1))


def test_draw_is_multinomial():
    probs = torch.rand(37, 4096, generator=torch.Generator().manual_seed(0)) ** 8
    probs = probs / probs.sum(-1, keepdim=True)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = torch.multinomial(probs, 1, replacement=True, generator=gen_a)[:, 0]
    assert torch.equal(draw(probs, gen_b), expected)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())  # same draws consumed


# ------------------------------------------------------------------------ teacher forcing
def _filled(cfg: TransformerConfig, seed: int = 0) -> HMARTransformer:
    """A transformer with N(0, 0.02) weights (the benchmark's fill)."""
    model = HMARTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02, generator=gen)
    return model


def _agreement(fast: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = float((fast - ref).norm() / ref.norm())
    top1 = float((fast.argmax(-1) == ref.argmax(-1)).float().mean())
    return rel, top1


@pytest.mark.parametrize("kind", ["hmar", "var"])
def test_teacher_forced_logits(kind):
    cfg = TransformerConfig(depth=4, width=256, heads=4, n_layers_train=2, kind=kind,
                            num_classes=10, patch_nums=PATCH_NUMS["256"][:6])
    model = _filled(cfg)
    gen = torch.Generator().manual_seed(1)
    x_ns = torch.randn(2, cfg.seq_len - 1, cfg.latent_channels, generator=gen)
    labels = torch.tensor([3, 10])  # one conditional row, one null-class row
    cases = [(None, None)]
    if kind == "hmar":
        x_mask = torch.randn(x_ns.shape, generator=gen)
        cases.append((x_mask, torch.rand(x_ns.shape[:2], generator=gen) < 0.4))
    with torch.no_grad():
        for x_mask, masked in cases:
            ref = model(labels, x_ns, x_mask, masked)
            rel32, top32 = _agreement(
                FastRunner(model, torch.float32).teacher_forced(labels, x_ns, x_mask, masked), ref)
            assert rel32 < 1e-5 and top32 >= 0.99, (rel32, top32)
            runner = FastRunner(model, torch.bfloat16, residual_dtype=torch.float32)
            fast = runner.teacher_forced(labels, x_ns, x_mask, masked)
            rel, top1 = _agreement(fast, ref)
            print(f"{kind} bf16 blocks, float32 residual: rel {rel:.2e} top-1 {top1:.4f}")
            assert fast.dtype == torch.float32 and rel < 1e-2 and top1 >= 0.95


# ------------------------------------------------------------------------------ sampling
def _same_tokens(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def var_pipe() -> Pipeline:
    return Pipeline.random("tiny", TransformerConfig.from_name("tiny", kind="var"), seed=1)


def test_fast_generate_float32_identical_tokens(tiny_pipe, var_pipe):
    for pipe in (tiny_pipe, var_pipe):
        fast = pipe.with_engine("fast", dtype=torch.float32)
        for seed in (0, 1, 7):
            ref = pipe.generate(seed=seed, batch_size=3)
            out = fast.generate(seed=seed, batch_size=3)
            assert _same_tokens(out.tokens, ref.tokens)
            assert torch.equal(out.labels, ref.labels)
            assert (out.images - ref.images).abs().max() <= 1e-5
            assert (out.confidence - ref.confidence).abs().max() <= 1e-6


def test_fast_sample_matches_reference_loop(tiny_pipe):
    """Same model callable: only the loop differs (fused filter, draw, one-shot keep check)."""
    pipe = tiny_pipe
    schedule = pipe.resolve_schedule(steps=3)
    settings = SamplerConfig(cfg=2.0, top_k=20, top_p=0.9)
    labels = torch.tensor([0, 5])
    kwargs = dict(labels=labels, null_class=pipe.transformer.cfg.null_class, record_steps=True)
    quant, patch_nums = pipe.tokenizer.quantize, pipe.patch_nums
    with torch.no_grad():
        ref = sample(ScaleRunner(pipe.transformer), quant, patch_nums, settings, schedule,
                     generator=torch.Generator().manual_seed(3), **kwargs)
        out = fast_sample(ScaleRunner(pipe.transformer), quant, patch_nums, settings, schedule,
                          generator=torch.Generator().manual_seed(3), **kwargs)
        plain = sample(FastRunner(pipe.transformer, torch.float32), quant, patch_nums, settings,
                       schedule, generator=torch.Generator().manual_seed(3), **kwargs)
    assert _same_tokens(out.tokens, ref.tokens) and _same_tokens(plain.tokens, ref.tokens)
    for mine, theirs in zip(out.steps, ref.steps):
        assert _same_tokens(mine, theirs)


class _BoxConstraint:
    """Keep the source tokens outside the top-left quarter; scale 0 and 1 kept entirely."""

    def __init__(self, source: list[torch.Tensor], patch_nums: tuple[int, ...]) -> None:
        self.source_tokens = source
        self.masks = []
        for si, pn in enumerate(patch_nums):
            grid = torch.ones(pn, pn, dtype=torch.bool)
            if si >= 2:
                grid[: (pn + 1) // 2, : (pn + 1) // 2] = False
            self.masks.append(grid.flatten()[None].expand(source[si].shape[0], -1))

    def keep(self, scale: int) -> torch.Tensor:
        return self.masks[scale]

    def source(self, scale: int) -> torch.Tensor:
        return self.source_tokens[scale]


def test_fast_edit_and_resume_identical_tokens(tiny_pipe):
    pipe = tiny_pipe
    fast = pipe.with_engine("fast", dtype=torch.float32)
    settings = pipe.sampler_settings()
    schedule = pipe.resolve_schedule(steps=2)
    labels = torch.tensor([2, 2])
    with torch.no_grad():
        source = pipe.generate(seed=11, batch_size=2).tokens
    constraint = _BoxConstraint(source, pipe.patch_nums)
    states = []
    with torch.no_grad():
        ref = pipe.sample_tokens(labels, settings, schedule, torch.Generator().manual_seed(4),
                                 constraint=constraint)
        out = fast.sample_tokens(labels, settings, schedule, torch.Generator().manual_seed(4),
                                 constraint=constraint, on_scale=states.append)
        assert _same_tokens(out.tokens, ref.tokens)
        for si in (0, 1):
            assert torch.equal(out.tokens[si], source[si])
        # resume after scale 1 with a fresh generator: both loops continue identically
        resumed = [fast.sample_tokens(labels, settings, schedule, torch.Generator().manual_seed(9),
                                      resume=states[1]),
                   pipe.sample_tokens(labels, settings, schedule, torch.Generator().manual_seed(9),
                                      resume=states[1])]
    assert _same_tokens(resumed[0].tokens, resumed[1].tokens)


class _StaticRegion:
    """A :class:`~hmar_core.sampler.Region` with a CUDA graph's buffer semantics, on the CPU:
    inputs are copied into per-key buffers, and every call of a key writes its outputs into
    the same tensors (which the next call of that key overwrites)."""

    def __init__(self) -> None:
        self.outputs: dict[object, list[torch.Tensor | None]] = {}
        self.calls = 0

    def __call__(self, key, fn, inputs):
        self.calls += 1
        out = fn(*[None if x is None else x.clone() for x in inputs])
        values = list(out) if isinstance(out, tuple) else [out]
        slots = self.outputs.setdefault(key, [None if v is None else torch.empty_like(v)
                                              for v in values])
        for slot, value in zip(slots, values):
            if slot is not None:
                slot.copy_(value)
        return tuple(slots) if isinstance(out, tuple) else slots[0]


def test_region_with_reused_buffers_gives_the_same_results(tiny_pipe):
    """The fast engine's step regions with graph-like reused output buffers: the same tokens
    as the eager reference, and what a run returns or hands to ``on_scale`` (which edit
    sessions keep) is not overwritten by later runs."""
    from hmar_core.fast import GUMBEL

    pipe = tiny_pipe
    fast = pipe.with_engine("fast", dtype=torch.float32)
    model, options = fast.backend.scale_model(torch.tensor([2, 2]))
    settings = pipe.sampler_settings(cfg=2.0)
    schedule = pipe.resolve_schedule([[1], [1, 3], [3, 3, 3], [4, 6, 6]])  # refines 2 scales
    with torch.no_grad():
        source = pipe.generate(seed=11, batch_size=2).tokens
    constraint = _BoxConstraint(source, pipe.patch_nums)
    labels = torch.tensor([2, 2])
    region = _StaticRegion()

    def run(seed: int, engine: str, states: list | None = None, keep=None):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if engine == "reference":
                return pipe.sample_tokens(labels, settings, schedule, generator,
                                          constraint=keep, on_scale=None)
            return sample(model, pipe.tokenizer.quantize, pipe.patch_nums, settings, schedule,
                          labels=labels, null_class=pipe.null_class, generator=generator,
                          constraint=keep, drawer=GUMBEL, upsample=options["upsample"],
                          region=region, record_steps=True,
                          on_scale=None if states is None else states.append)

    states: list = []
    first = run(4, "fast", states, constraint)
    kept = [t.clone() for t in first.tokens], first.f_hat.clone()
    kept_states = [(s.f_hat.clone(), [t.clone() for t in s.tokens]) for s in states]
    plain = run(5, "fast")
    again = run(6, "fast", [], constraint)  # overwrites every buffer of the first run
    assert region.calls > 3 * len(pipe.patch_nums)
    assert _same_tokens(first.tokens, run(4, "reference", keep=constraint).tokens)
    assert _same_tokens(plain.tokens, run(5, "reference").tokens)
    assert not _same_tokens(again.tokens, first.tokens)
    assert _same_tokens(first.tokens, kept[0]) and torch.equal(first.f_hat, kept[1])
    for state, (f_hat, tokens) in zip(states, kept_states):
        assert torch.equal(state.f_hat, f_hat) and _same_tokens(state.tokens, tokens)
    steps = [t for scale in first.steps for t in scale]
    assert len(steps) == 1 + 1 + 3 + 3  # every refinement step recorded, none overwritten
    assert not all(torch.equal(a, b) for a, b in zip(first.steps[3], first.steps[3][1:]))


def test_fast_encode_decode_float32(tiny_pipe):
    fast = tiny_pipe.with_engine("fast", dtype=torch.float32, decode_batch=2)
    images = torch.rand(3, 3, tiny_pipe.image_size, tiny_pipe.image_size) * 2 - 1
    with torch.no_grad():
        tokens = tiny_pipe.tokenizer.encode(images)
        assert _same_tokens(fast.backend.encode(images), tokens)
        f_hat = tiny_pipe.tokenizer.fhat_from_tokens(tokens)[-1]
        decoded = fast.backend.decode(f_hat)  # chunks of 2: convolution sums may round apart
        # float32 sums of 9·32 products of values ≤ 1 in another order: a few 1e-5 at most
        # (the whole-suite run once gave 1.09e-5, a lone run less)
        assert (decoded - tiny_pipe.tokenizer.decode_fhat(f_hat)).abs().max() <= 5e-5


def test_compiled_vae_matches_eager(tiny_pipe):
    """compile_vae=True (the CUDA default) through inductor on CPU: same latents and images."""
    fast = tiny_pipe.with_engine("fast", dtype=torch.float32, decode_batch=2, compile_vae=True)
    images = torch.rand(2, 3, tiny_pipe.image_size, tiny_pipe.image_size) * 2 - 1
    with torch.no_grad():
        tokens = tiny_pipe.tokenizer.encode(images)
        f_hat = tiny_pipe.tokenizer.fhat_from_tokens(tokens)[-1]
        decoded = fast.backend.decode(f_hat)
        encoded = fast.backend.encode(images)
        assert fast.backend._decoder.compiled is not None, "compiling fell back to eager"
        assert (decoded - tiny_pipe.tokenizer.decode_fhat(f_hat)).abs().max() <= 1e-4
        assert sum(int((a == b).sum()) for a, b in zip(encoded, tokens)) >= 0.99 * sum(
            t.numel() for t in tokens)


def test_compiled_or_eager_falls_back():
    from hmar_core.fast import CompiledOrEager

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    wrapper = CompiledOrEager(Broken(), "broken")
    wrapper.compiled = lambda x: (_ for _ in ()).throw(RuntimeError("no compiler"))
    assert torch.equal(wrapper(torch.zeros(2)), torch.ones(2))
    assert wrapper.compiled is None


def test_bf16_generation_runs_and_is_close(tiny_pipe):
    fast = tiny_pipe.with_engine("fast", dtype=torch.bfloat16)
    with torch.no_grad():
        out = fast.generate(seed=0, batch_size=2)
        ref = tiny_pipe.generate(seed=0, batch_size=2)
    assert out.images.dtype == torch.float32 and out.images.shape == ref.images.shape
    assert 0 <= float(out.images.min()) and float(out.images.max()) <= 1
    same = sum(int((a == b).sum()) for a, b in zip(out.tokens, ref.tokens))
    print(f"bf16 vs float32 tokens equal: {same}/{sum(t.numel() for t in ref.tokens)}")


def test_cast_blocks_shares_weights():
    pipe = Pipeline.random(seed=2)
    cast_blocks_(pipe.transformer, torch.bfloat16)
    runner = FastRunner(pipe.transformer, torch.bfloat16)
    block = pipe.transformer.base_blocks[0]
    assert runner._blocks[0].fc1_w.data_ptr() == block.ffn.fc1.weight.data_ptr()
    assert pipe.transformer.ns_head.out.weight.dtype == torch.float32  # heads untouched
    labels = torch.tensor([1])
    with torch.no_grad():
        x_ns = torch.randn(1, 4, pipe.transformer.cfg.latent_channels)
        logits = runner.guided(labels, pipe.transformer.cfg.null_class, 0.5, ScaleInput(1, x_ns))
    assert logits.shape == (1, 4, pipe.transformer.cfg.vocab_size)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())


def test_graph_cache_is_eager_off_cuda():
    cache = GraphCache()
    calls = []

    def fn(x: torch.Tensor, y: None) -> torch.Tensor:
        calls.append(x)
        return x * 2

    x = torch.ones(3)
    assert torch.equal(cache.run("k", fn, (x, None), x.device), x * 2)
    assert len(cache) == 0 and calls[0] is x


def test_runner_validates_labels(tiny_pipe):
    runner = FastRunner(tiny_pipe.transformer, torch.float32)
    with pytest.raises(ValueError, match="class ids"):
        runner.begin(torch.tensor([0, 99]))
    with pytest.raises(ValueError, match="branch"):
        FastRunner(Pipeline.random("tiny", TransformerConfig.from_name("tiny", kind="var"))
                   .transformer, torch.float32)(torch.tensor([1]),
                                                ScaleInput(0, None, branch="mask"))


# --------------------------------------------------------------------------- GPU (graphs)
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["hmar", "var"])
def test_cuda_graphs_match_eager(kind):
    """Replayed graphs compute what the eager pass computes (bf16, CFG in the pass)."""
    cfg = TransformerConfig(depth=4, width=256, heads=4, n_layers_train=2, kind=kind,
                            num_classes=10, patch_nums=PATCH_NUMS["256"][:6])
    model = _filled(cfg).to("cuda")
    eager = FastRunner(model, torch.bfloat16, cuda_graphs=False)
    graphs = FastRunner(model, torch.bfloat16, cuda_graphs=True)
    gen = torch.Generator("cuda").manual_seed(0)
    for labels in (torch.tensor([1, 3, 5], device="cuda"), torch.tensor([2, 2, 9], device="cuda")):
        for runner in (eager, graphs):
            runner.begin(labels, cfg.null_class)
        with torch.no_grad():
            for scale, pn in enumerate(cfg.patch_nums):  # capture on the first labels, replay
                x_ns = None if scale == 0 else torch.randn(3, pn * pn, cfg.latent_channels,
                                                           generator=gen, device="cuda")
                weight = 1.5 * scale / (len(cfg.patch_nums) - 1)
                outs = [r.guided(labels, cfg.null_class, weight, ScaleInput(scale, x_ns)).clone()
                        for r in (eager, graphs)]
                assert torch.allclose(outs[0], outs[1], rtol=1e-3, atol=1e-3), scale
    assert len(graphs.graphs) == len(cfg.patch_nums) and graphs.graphs.error is None


@pytest.mark.gpu
def test_fast_pipeline_on_cuda(tiny_pipe):
    pipe = tiny_pipe.to("cuda")
    fast = pipe.with_engine("fast")
    with torch.no_grad():
        first = fast.generate(seed=0, batch_size=2)  # captures
        again = fast.generate(seed=0, batch_size=2)  # replays
    assert _same_tokens(first.tokens, again.tokens)
    assert first.images.shape == (2, 3, pipe.image_size, pipe.image_size)
    assert len(fast.backend.runner.graphs) > 0


@pytest.mark.gpu
def test_vae_graphs_match_the_launch_path(tiny_pipe):
    """Graphed encode/decode (small batches) give the per-launch path's tokens and pixels, and
    a replay's outputs are copies: an earlier result survives the next call."""
    pipe = tiny_pipe.to("cuda")
    graphed = pipe.with_engine("fast", compile_vae=False)
    plain = pipe.with_engine("fast", compile_vae=False, vae_graph_batch=0)
    gen = torch.Generator("cuda").manual_seed(0)
    side = pipe.image_size
    images = [torch.rand(2, 3, side, side, generator=gen, device="cuda") * 2 - 1 for _ in range(2)]
    with torch.no_grad():
        first = graphed.backend.encode(images[0])  # captures
        second = graphed.backend.encode(images[1])  # replays into the same buffers
        for got, x in ((first, images[0]), (second, images[1])):
            assert _same_tokens(got, plain.backend.encode(x))
        assert not _same_tokens(first, second)
        f_hats = [torch.randn(2, pipe.tokenizer.cfg.latent_channels, pipe.patch_nums[-1],
                              pipe.patch_nums[-1], generator=gen, device="cuda") for _ in range(2)]
        out = [graphed.backend.decode(f) for f in f_hats]
        for got, f in zip(out, f_hats):
            assert torch.equal(got, plain.backend.decode(f))
        big = torch.cat(f_hats * 3)  # 12 images: above vae_graph_batch, the per-launch path
        assert torch.equal(graphed.backend.decode(big), plain.backend.decode(big))
    assert len(graphed.backend.vae_graphs) == 2 and graphed.backend.vae_graphs.error is None
    assert len(plain.backend.vae_graphs) == 0


def test_vae_graph_batch_is_checked(tiny_pipe):
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="vae_graph_batch"):
            _ = tiny_pipe.with_engine("fast", vae_graph_batch=bad).backend


def test_adaln_buffers_are_reused_across_runs_only_for_equal_labels_and_weights():
    """A new run with equal labels (a new tensor each call, as every edit makes) does no
    device work for the AdaLN buffers; other labels or weights changed in place recompute them,
    and the logits always equal a fresh runner's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Linears(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Linears.count += func.__name__.startswith(("addmm", "mm", "linear"))
            return func(*args, **(kwargs or {}))

    cfg = TransformerConfig(depth=2, width=64, heads=2, n_layers_train=1, num_classes=5,
                            patch_nums=PATCH_NUMS["256"][:3])
    model = _filled(cfg)
    runner = FastRunner(model, torch.float32)

    def logits(labels: list[int]) -> torch.Tensor:
        t = torch.tensor(labels)
        runner.begin(t, cfg.null_class)
        with torch.no_grad():
            return runner.guided(t, cfg.null_class, 1.5, ScaleInput(0, None)).clone()

    def fresh(labels: list[int]) -> torch.Tensor:
        other = FastRunner(model, torch.float32)
        t = torch.tensor(labels)
        other.begin(t, cfg.null_class)
        with torch.no_grad():
            return other.guided(t, cfg.null_class, 1.5, ScaleInput(0, None))

    logits([1, 2])
    for labels, recompute in (([1, 2], False), ([1, 3], True), ([1, 3], False)):
        Linears.count = 0
        with Linears():
            runner.begin(torch.tensor(labels), cfg.null_class)
        assert (Linears.count > 0) == recompute, labels
        torch.testing.assert_close(logits(labels), fresh(labels))
    with torch.no_grad():
        model.class_embed.weight[1] += 1.0  # in place: the runner shares these float32 weights
    Linears.count = 0
    with Linears():
        runner.begin(torch.tensor([1, 3]), cfg.null_class)
    assert Linears.count > 0
    torch.testing.assert_close(logits([1, 3]), fresh([1, 3]))
