"""Configs, presets, parameter counts and key names of the full-size official models."""

from __future__ import annotations

import pytest
import torch

from hmar_core import HMARTransformer, MultiScaleVQTokenizer, TokenizerConfig, TransformerConfig
from hmar_core.config import SamplerConfig, phi_index_table


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_phi_tables_match_spec():
    assert phi_index_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_index_table(14, 4) == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3)
    assert phi_index_table(4, 4) == (0, 1, 2, 3)


def test_official_vqvae_parameter_count_on_meta():
    with torch.device("meta"):
        vae = MultiScaleVQTokenizer(TokenizerConfig.from_name("vae-ch160v4096z32"))
    assert _count(vae) == 108_948_355
    assert _count(vae.encoder) == 44_107_872
    assert _count(vae.decoder) == 64_653_923
    keys = set(vae.state_dict())
    assert len(keys) == 323  # 324 official entries minus the training-only usage buffer
    assert "encoder.down.4.attn.1.qkv.weight" in keys
    assert "decoder.up.3.block.0.nin_shortcut.weight" in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys


@pytest.mark.parametrize(
    ("name", "millions"),
    [("hmar-d16", 467.69), ("hmar-d20", 845.52), ("hmar-d24", 1384.33), ("hmar-d30", 2556.32),
     ("var-d16", 310.28), ("var-d20", 600.92), ("var-d24", 1033.40), ("var-d30", 2010.02)],
)
def test_transformer_parameter_counts_on_meta(name, millions):
    with torch.device("meta"):
        model = HMARTransformer(TransformerConfig.from_name(name))
    assert round(_count(model) / 1e6, 2) == millions


def test_d16_keys_and_widths():
    cfg = TransformerConfig.from_name("hmar-d16")
    assert (cfg.width, cfg.heads, cfg.head_dim, cfg.seq_len) == (1024, 16, 64, 680)
    assert cfg.drop_path_rate == pytest.approx(0.1 * 16 / 24)
    with torch.device("meta"):
        sd = HMARTransformer(cfg).state_dict()
    assert len([k for k in sd if k.startswith("base_blocks.")]) == 8 * 12
    assert len([k for k in sd if k.startswith("mask_blocks.")]) == 8 * 12
    assert sd["pos_embed"].shape == (1, 680, 1024)


def test_512_preset_pyramid():
    cfg = TransformerConfig.from_name("hmar-d16-512")
    assert cfg.seq_len == 2240
    assert TokenizerConfig.from_name("vae-ch160v4096z32-512").image_size == 512


@pytest.mark.parametrize(
    "kwargs",
    [{"depth": 0}, {"depth": 4, "width": 100, "heads": 3}, {"n_layers_train": 20},
     {"patch_nums": (1, 3, 2)}, {"patch_nums": ()}, {"kind": "diffusion"}],
)
def test_bad_transformer_configs(kwargs):
    with pytest.raises(ValueError):
        TransformerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"cfg": -1.0}, {"cfg": float("nan")}, {"top_k": -2}, {"top_p": 1.5},
               {"steps": -1}, {"mask_cfg_ratio": -1.0}, {"refine_max_side": 1},
               {"refine_max_side": 2.5}])
def test_bad_sampler_configs(kwargs):
    with pytest.raises(ValueError):
        SamplerConfig(**kwargs)


def test_config_roundtrip():
    for cfg in (TokenizerConfig.from_name("emoji64"), TransformerConfig.from_name("tiny"),
                SamplerConfig(mask_schedule=((1,), (1, 3)), steps=None),
                SamplerConfig(steps=1, refine_max_side=3)):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TransformerConfig.from_dict({"depht": 3})
    with pytest.raises(ValueError, match="unknown transformer preset"):
        TransformerConfig.from_name("hmar-d99")


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (TransformerConfig, {"norm_eps": -1.0}, "norm_eps"),
        (TransformerConfig, {"norm_eps": 0.0}, "norm_eps"),
        (TransformerConfig, {"norm_eps": float("nan")}, "norm_eps"),
        (TransformerConfig, {"mlp_ratio": float("inf")}, "mlp_ratio"),
        (TransformerConfig, {"max_scale_mul": float("nan")}, "max_scale_mul"),
        (TransformerConfig, {"drop_path_rate": float("nan")}, "drop_path_rate"),
        (TransformerConfig, {"depth": float("nan")}, "depth"),
        (TransformerConfig, {"depth": "16"}, "depth"),
        (TransformerConfig, {"num_classes": True}, "num_classes"),
        (TransformerConfig, {"patch_nums": (1, float("nan"))}, "patch_nums"),
        (TransformerConfig, {"patch_nums": "1234"}, "patch_nums"),
        (TokenizerConfig, {"quant_resi": float("nan")}, "quant_resi"),
        (TokenizerConfig, {"quant_resi": 3.0}, "quant_resi"),
        (TokenizerConfig, {"quant_resi": "0.5"}, "quant_resi"),
        (TokenizerConfig, {"channel_mult": (1, None)}, "channel_mult"),
        (SamplerConfig, {"steps": float("nan")}, "steps"),
        (SamplerConfig, {"top_p": None}, "top_p"),
        (SamplerConfig, {"mask_schedule": ((1,), ())}, "mask_schedule"),
        (SamplerConfig, {"mask_schedule": ((1,), (0, 4))}, "mask_schedule"),
        (SamplerConfig, {"mask_schedule": (("a",),)}, "mask_schedule"),
        (SamplerConfig, {"mask_schedule": 7}, "mask_schedule"),
    ],
)
def test_bad_values_name_the_field(cls, kwargs, field):
    """Issue #17 item 14: invalid values fail when the config is built, naming the field."""
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_stored_transformer_config_needs_explicit_heads_and_width():
    """``heads: 0`` in a stored config is an error, not a silent default of ``depth``."""
    stored = TransformerConfig.from_name("tiny").to_dict()
    for name in ("heads", "width"):
        with pytest.raises(ValueError, match=f"TransformerConfig.{name}"):
            TransformerConfig.from_dict({**stored, name: 0})
    with pytest.raises(ValueError, match="mapping"):
        TokenizerConfig.from_dict([1, 2])
    assert TransformerConfig(heads=0).heads == 16  # the constructor keeps the official default
