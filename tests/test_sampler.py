"""Sampler tests on hand-made logits: filters, schedules, CFG ramp, who is re-masked."""

from __future__ import annotations

import math

import pytest
import torch

from hmar_core import SamplerConfig, sample
from hmar_core.sampler import ScaleInput, guided_logits, lowest_confidence, top_k_top_p_filter
from hmar_core.schedules import (
    cfg_weight,
    default_schedule,
    remask_counts,
    schedule_from_steps,
    validate_schedule,
)

P256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def test_top_k_keeps_ties_at_threshold():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5]])
    out = top_k_top_p_filter(logits, top_k=2, top_p=0.0)
    # 2nd largest is 2.0: both tied entries stay, the rest go
    assert torch.isinf(out[0, [0, 4]]).all()
    assert torch.equal(out[0, [1, 2, 3]], logits[0, [1, 2, 3]])
    assert torch.equal(logits, torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5]]))  # input unchanged


def test_top_p_nucleus_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_k_top_p_filter(probs.log(), top_k=0, top_p=0.8)
    # ascending cumulative: 0.05, 0.20, 0.50, 1.0; drop where <= 0.2 → the two smallest
    assert torch.isinf(out[0, [2, 3]]).all() and torch.isfinite(out[0, [0, 1]]).all()
    # the largest entry is always kept, even with a tiny top_p
    tiny = top_k_top_p_filter(probs.log(), top_k=0, top_p=1e-6)
    assert torch.isfinite(tiny[0, 0]) and torch.isinf(tiny[0, 1:]).all()
    # top_k 0 / top_p 0 disable the filters
    assert torch.equal(top_k_top_p_filter(probs.log(), 0, 0.0), probs.log())


def test_lowest_confidence_per_row_and_counts():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1]])
    got = lowest_confidence(conf, torch.tensor([2, 1]))
    assert got.tolist() == [[False, True, False, True], [False, False, False, True]]


def test_schedules():
    assert default_schedule(P256)[:3] == ((1,), (1, 3), (1, 1, 2, 5))
    assert remask_counts((1, 1, 2, 5)) == [8, 7, 5]
    assert remask_counts((16,)) == []
    assert all(len(e) == 1 for e in schedule_from_steps(P256, 0))
    for steps in range(1, 8):
        sched = validate_schedule(schedule_from_steps(P256, steps), P256)
        assert max(len(e) - 1 for e in sched) == min(steps, 12)
        assert len(sched[-1]) == 1  # fine scales are never refined by the knob
    with pytest.raises(ValueError, match="entries"):
        validate_schedule([[1], [4]], P256)
    with pytest.raises(ValueError, match="sums to"):
        validate_schedule([[1], [1, 2], [9], [16]], (1, 2, 3, 4))
    with pytest.raises(ValueError, match="positive"):
        validate_schedule([[1], [4, 0], [9], [16]], (1, 2, 3, 4))



def test_the_steps_knob_refines_only_scales_up_to_max_side():
    """A model's ``refine_max_side`` narrows the knob to its coarse scales (the demo model: 3)."""
    for steps in (1, 2, 4, 8):
        narrow = validate_schedule(schedule_from_steps(P256, steps, max_side=3), P256)
        wide = schedule_from_steps(P256, steps)
        assert narrow[:3] == wide[:3]  # 1x1, 2x2, 3x3: the same as without the limit
        assert all(len(entry) == 1 for entry in narrow[3:])  # 4x4 and finer: never refined
        assert any(len(entry) > 1 for entry in wide[3:7])
    # 3x3 re-predicts R = 9 - ceil(9/4) = 6 tokens: at most 6 steps change anything
    assert schedule_from_steps(P256, 6, max_side=3) == schedule_from_steps(P256, 9, max_side=3)
    assert schedule_from_steps(P256, 5, max_side=3) != schedule_from_steps(P256, 6, max_side=3)
    assert schedule_from_steps(P256, 2, max_side=8) == schedule_from_steps(P256, 2)  # the default
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="max_side"):
            schedule_from_steps(P256, 2, max_side=bad)

def test_cfg_ramp():
    assert cfg_weight(1.5, 0, 10) == 0.0
    assert cfg_weight(1.5, 9, 10) == 1.5
    assert cfg_weight(3.0, 3, 4) == 3.0
    assert math.isclose(cfg_weight(1.8, 3, 10), 0.6)


class _TableModel:
    """A fake network: fixed logits per (scale, branch) and label, recording every call."""

    def __init__(self, vocab: int, patch_nums: tuple[int, ...]) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ns = [torch.randn(pn * pn, vocab, generator=gen) * 3 for pn in patch_nums]
        self.mask = [torch.randn(pn * pn, vocab, generator=gen) * 3 for pn in patch_nums]
        self.calls: list[tuple[int, str, int, torch.Tensor | None]] = []

    def __call__(self, labels, inputs):
        scale, branch = inputs.scale, inputs.branch
        self.calls.append((scale, branch, labels.shape[0], inputs.masked))
        table = self.ns if branch == "ns" else self.mask
        cond = labels[:, None, None].float()  # the null class shifts the logits
        return table[scale][None].expand(labels.shape[0], -1, -1) + 0.1 * cond


class _Quantizer:
    def __init__(self, vocab: int, channels: int = 2) -> None:
        self.codebook = torch.randn(vocab, channels, generator=torch.Generator().manual_seed(1))

    def phis(self):
        return [lambda h: h] * 4


def _run(model, cfg, schedule, labels, seed=0, constraint=None):
    return sample(model, _Quantizer(8), (1, 2, 3, 4), cfg, schedule, labels=labels,
                  null_class=9, generator=torch.Generator().manual_seed(seed),
                  constraint=constraint, record_steps=True)


def test_sampler_passes_follow_schedule_and_cfg():
    model = _TableModel(8, (1, 2, 3, 4))
    schedule = ((1,), (1, 3), (1, 1, 2, 5), (16,))
    out = _run(model, SamplerConfig(cfg=2.0, top_k=0, top_p=0.0), schedule, torch.tensor([3, 4]))
    passes = [(s, b, n) for s, b, n, _ in model.calls]
    # scale 0 is unguided → one conditional pass of 2 rows; later scales run 4 rows (CFG)
    assert passes == [(0, "ns", 2), (1, "ns", 4), (1, "mask", 4), (2, "ns", 4),
                      (2, "mask", 4), (2, "mask", 4), (2, "mask", 4), (3, "ns", 4)]
    # re-masked counts per step at scale 2: 8, then 7, then 5 (per sample, duplicated for CFG)
    counts = [int(m[0].sum()) for s, b, _, m in model.calls if s == 2 and b == "mask"]
    assert counts == [8, 7, 5]
    # later mask sets are subsets of earlier ones
    sets = [m[0] for s, b, _, m in model.calls if s == 2 and b == "mask"]
    assert bool((sets[1] <= sets[0]).all()) and bool((sets[2] <= sets[1]).all())
    assert [len(s) for s in out.steps] == [1, 2, 4, 1]
    # only masked positions change during refinement
    first, second = out.steps[2][0], out.steps[2][1]
    changed = first != second
    assert bool((changed[0] <= sets[0]).all())


def test_unconditional_runs_skip_the_second_cfg_half():
    """All labels null: guidance between identical conditions is the identity, so every pass
    runs the B rows once and the tokens equal those of the two-half computation."""
    schedule = ((1,), (1, 3), (1, 1, 2, 5), (16,))
    cfg = SamplerConfig(cfg=2.0, top_k=0, top_p=0.0, mask_cfg_ratio=1.0)
    null = torch.tensor([9, 9])
    model = _TableModel(8, (1, 2, 3, 4))
    out = _run(model, cfg, schedule, null, seed=5)
    assert {n for _, _, n, _ in model.calls} == {2}, "no pass may run the doubled batch"
    twice = _TableModel(8, (1, 2, 3, 4))
    doubled = _run(twice, SamplerConfig(cfg=0.0, top_k=0, top_p=0.0), schedule, null, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, doubled.tokens))
    # one conditional label keeps guidance on
    mixed = _TableModel(8, (1, 2, 3, 4))
    _run(mixed, cfg, schedule, torch.tensor([9, 3]), seed=5)
    assert 4 in {n for _, _, n, _ in mixed.calls}


def test_sampler_remasks_the_least_confident():
    vocab = 8
    model = _TableModel(vocab, (1, 2, 3, 4))
    # make scale-1 position 2 nearly uniform (low confidence), others peaked
    model.ns[1][:] = -10.0
    model.ns[1][:, 0] = 10.0
    model.ns[1][2] = 0.0
    schedule = ((1,), (3, 1), (9,), (16,))
    _run(model, SamplerConfig(cfg=0.0, top_k=0, top_p=0.0), schedule, torch.tensor([1]))
    masked = [m for s, b, _, m in model.calls if s == 1 and b == "mask"][0]
    assert masked.tolist() == [[False, False, True, False]]


def test_sampler_deterministic_and_seed_dependent():
    model = _TableModel(8, (1, 2, 3, 4))
    schedule = default_schedule((1, 2, 3, 4))
    cfg = SamplerConfig(cfg=1.0, top_k=5, top_p=0.9)
    a = _run(model, cfg, schedule, torch.tensor([1, 2]), seed=7)
    b = _run(model, cfg, schedule, torch.tensor([1, 2]), seed=7)
    c = _run(model, cfg, schedule, torch.tensor([1, 2]), seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert not all(torch.equal(x, y) for x, y in zip(a.tokens, c.tokens))


def test_guided_logits_formula():
    def model(labels, inputs):
        return torch.where(labels[:, None, None] == 9, torch.tensor(1.0), torch.tensor(3.0)).expand(
            -1, 2, 4)

    out = guided_logits(model, torch.tensor([0]), 9, 0.5, ScaleInput(1, None))
    assert torch.allclose(out, torch.full((1, 2, 4), 1.5 * 3.0 - 0.5 * 1.0))


class _KeepHalf:
    def __init__(self, patch_nums):
        self.src = [torch.full((1, pn * pn), 7) for pn in patch_nums]

    def keep(self, scale):
        n = self.src[scale].shape[1]
        return torch.arange(n)[None] % 2 == 0

    def source(self, scale):
        return self.src[scale]


def test_constraint_keeps_source_and_limits_remasking():
    model = _TableModel(8, (1, 2, 3, 4))
    schedule = ((1,), (1, 3), (1, 1, 2, 5), (16,))
    constraint = _KeepHalf((1, 2, 3, 4))
    out = _run(model, SamplerConfig(cfg=0.0, top_k=0, top_p=0.0), schedule, torch.tensor([1]),
               constraint=constraint)
    for si, toks in enumerate(out.tokens):
        keep = constraint.keep(si)
        assert bool((toks[keep] == 7).all())
        assert bool((out.confidence[si][keep] == 1.0).all())
    for s, b, _, m in model.calls:
        if b == "mask":
            assert not bool((m & constraint.keep(s)).any())  # kept tokens are never masked
            assert int(m.sum()) >= 1
    # scale 0 is entirely kept → no network pass there at all
    assert all(s != 0 for s, _, _, _ in model.calls)
