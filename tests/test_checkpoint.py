"""Checkpoint I/O: our safetensors folder, official converters, and refusals with clear errors."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_inputs import ROOT, error_without_blocking

from hmar_core import CheckpointError, Pipeline, load_official
from hmar_core import checkpoint as ckpt


def test_save_and_load_roundtrip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "tokenizer.safetensors", "transformer.safetensors"]
    loaded = Pipeline.from_pretrained(tmp_path / "m")
    for a, b in zip(tiny_pipe.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    x = tiny_pipe.generate(3, seed=5, batch_size=2)
    y = loaded.generate(3, seed=5, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(x.tokens, y.tokens))


def test_save_bfloat16_loads_as_float32(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    loaded = Pipeline.from_pretrained(tmp_path / "m")
    assert loaded.dtype == torch.float32
    ref = tiny_pipe.transformer.pos_embed
    assert (loaded.transformer.pos_embed - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_official_convert_then_save(official_pipe, reference, tmp_path):
    official_pipe.save_pretrained(tmp_path / "conv")
    pipe = Pipeline.from_pretrained(tmp_path / "conv")
    api = reference["api"]["model"]
    with torch.no_grad():
        logits = pipe.model(api["labels"], api["tokens"])
    assert (logits - api["ns_logits"]).abs().max() <= 1e-4 * api["ns_logits"].abs().max()


def _write_folder(pipe: Pipeline, folder: Path, mutate) -> None:
    pipe.save_pretrained(folder)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "transformer.safetensors"))
    mutate(sd)
    save_file(sd, str(folder / "transformer.safetensors"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.pop("ns_head.out.bias"), r"missing keys \['ns_head.out.bias'\]"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)), r"unexpected keys \['extra"),
        (lambda sd: sd.__setitem__("pos_start", torch.zeros(1, 1, 7)), r"mis-shaped keys"),
        (lambda sd: sd.__setitem__("pos_start", torch.full((1, 1, 32), float("nan"))),
         "non-finite"),
    ],
)
def test_bad_weights_are_named(tiny_pipe, tmp_path, mutate, message):
    _write_folder(tiny_pipe, tmp_path / "bad", mutate)
    with pytest.raises(CheckpointError, match=message):
        Pipeline.from_pretrained(tmp_path / "bad")


def test_truncated_and_missing_files(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    data = (tmp_path / "m" / "transformer.safetensors").read_bytes()
    (tmp_path / "m" / "transformer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        Pipeline.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no config.json"):
        Pipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid config"):
        Pipeline.from_pretrained(tmp_path / "m")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))  # would create a file if ever executed

    marker = ""


def test_pickle_payload_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"weights": _Payload()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        ckpt.load_torch_weights(path)
    assert not marker.exists()


def test_non_state_dict_pth_refused(tmp_path):
    torch.save({"a": [1, 2, 3]}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="flat state dict"):
        ckpt.load_torch_weights(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_torch_weights(tmp_path / "missing.pth")


def test_wrong_official_files(fixture_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not a VQVAE"):
        load_official(fixture_dir / "hmar.pth", fixture_dir / "hmar.pth")
    with pytest.raises(CheckpointError):
        load_official(fixture_dir / "vqvae.pth", fixture_dir / "vqvae.pth")
    sd = ckpt.load_torch_weights(fixture_dir / "hmar.pth")
    sd.pop("mask_head.bias")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['mask_head.out.bias'\]"):
        load_official(fixture_dir / "vqvae.pth", tmp_path / "partial.pth")


def test_converter_is_pure_and_drops_recomputed_buffers(fixture_dir):
    sd = ckpt.load_torch_weights(fixture_dir / "hmar.pth")
    before = {k: v.clone() for k, v in sd.items()}
    out = ckpt.convert_official_hmar_state_dict(sd)
    assert all(torch.equal(sd[k], before[k]) for k in before) and set(sd) == set(before)
    assert "lvl_1L" not in out and "attn_bias_for_masking" not in out
    assert not any(k.endswith("zero_k_bias") for k in out)
    assert out["base_blocks.0.attn.qkv.weight"] is sd["base_blocks.0.attn.mat_qkv.weight"]
    assert json.dumps(sorted(out))  # plain string keys


def test_stage2_must_match_frozen_stage1(fixture_dir):
    nsp = ckpt.load_torch_weights(fixture_dir / "nsp.pth")
    mp = ckpt.load_torch_weights(fixture_dir / "mp.pth")
    mp["blocks.0.ffn.fc1.bias"] = mp["blocks.0.ffn.fc1.bias"] + 1
    with pytest.raises(CheckpointError, match="frozen"):
        ckpt.merge_official_stage_state_dicts(nsp, mp, n_layers_train=1)


def test_sharded_weights_roundtrip_and_incomplete_sets(tiny_pipe, tmp_path):
    folder = tmp_path / "sharded"
    tiny_pipe.save_pretrained(folder, max_shard_bytes=20_000)
    shards = sorted(p.name for p in folder.glob("transformer-*.safetensors"))
    assert len(shards) > 1 and not (folder / "transformer.safetensors").exists()
    loaded = Pipeline.from_pretrained(folder)
    for a, b in zip(tiny_pipe.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    # saving again unsharded removes the stale shards
    tiny_pipe.save_pretrained(folder)
    assert not list(folder.glob("transformer-*.safetensors"))
    tiny_pipe.save_pretrained(folder, max_shard_bytes=20_000)
    (folder / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match="incomplete or mixed shard set"):
        Pipeline.from_pretrained(folder)


def test_declared_structure_is_checked_before_building():
    """A config that declares more blocks, levels or a wider model than the weights hold is
    refused by name (before any module is built); the matching pair passes."""
    import dataclasses

    pipe = Pipeline.random(seed=0)
    tok_cfg, tr_cfg = pipe.tokenizer.cfg, pipe.transformer.cfg
    tok_sd, tr_sd = pipe.tokenizer.state_dict(), pipe.transformer.state_dict()
    ckpt.check_declared_structure(tok_cfg, tok_sd, tr_cfg, tr_sd)
    cases = [
        (tok_cfg, dataclasses.replace(tr_cfg, depth=tr_cfg.depth + 5), "base blocks"),
        (tok_cfg, dataclasses.replace(tr_cfg, width=tr_cfg.width * 2), "seq_len, width"),
        (dataclasses.replace(tok_cfg, num_res_blocks=7), tr_cfg, "num_res_blocks"),
        (dataclasses.replace(tok_cfg, channel_mult=(1, 1, 2, 2)), tr_cfg, "encoder levels"),
    ]
    for tok, tr, words in cases:
        with pytest.raises(CheckpointError, match=re.escape(words)):
            ckpt.check_declared_structure(tok, tok_sd, tr, tr_sd)


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["transformer"].update(norm_eps=-1), r"transformer: .*norm_eps"),
        (lambda c: c["tokenizer"].update(quant_resi=float("nan")), r"tokenizer: .*quant_resi"),
        (lambda c: c["transformer"].update(heads=0), r"transformer: .*heads"),
        (lambda c: c["transformer"].update(heads=3), r"transformer: .*not divisible by heads"),
        (lambda c: c.update(format_version=99), r"format_version 99 is not supported"),
        (lambda c: c.update(format_version="1"), r"format_version '1'"),
        (lambda c: c["sampler"].update(mask_schedule=[[1], [5]]), r"sampler.mask_schedule"),
        (lambda c: c["sampler"].update(mask_schedule="fast"), r"mask_schedule"),
        (lambda c: c.update(class_names=["a", "b"]), r"class_names holds 2 names .*10"),
        (lambda c: c.update(class_names=[1] * 10), r"class_names must be a list of strings"),
        (lambda c: c["transformer"].update(vocab_size=32), r"vocab_size"),
        (lambda c: c.pop("tokenizer"), r"missing section 'tokenizer'"),
        (lambda c: c.update(sampler=[]), r"sampler: SamplerConfig must be a mapping"),
    ],
)
def test_config_values_validated_at_load(tiny_pipe, tmp_path, edit, message):
    """Issue #17 item 14: a bad config.json is refused by name before weights are read."""
    tiny_pipe.save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", edit)
    (tmp_path / "m" / "transformer.safetensors").unlink()  # never reached
    with pytest.raises(CheckpointError, match=message):
        Pipeline.from_pretrained(tmp_path / "m")


def test_deeply_nested_config_is_a_checkpoint_error(tiny_pipe, tmp_path):
    """Issue #17 item 13: 200,000 nested lists are a CheckpointError, not a RecursionError."""
    tiny_pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        Pipeline.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"a": "' + "x" * (2**20) + '"}')
    with pytest.raises(CheckpointError, match="byte limit"):
        Pipeline.from_pretrained(tmp_path / "m")


def test_fifo_in_model_folder_is_refused_without_blocking(tiny_pipe, tmp_path):
    """Issue #17 item 11: opening a FIFO blocks until a writer comes, and safetensors does so
    holding the GIL: the load runs in a child process, killed if it blocks."""
    tiny_pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.safetensors").unlink()
    os.mkfifo(tmp_path / "m" / "tokenizer.safetensors")
    script = ("import sys\nfrom hmar_core import CheckpointError, Pipeline\ntry:\n"
              "    Pipeline.from_pretrained(sys.argv[1])\n"
              "except CheckpointError as err:\n    print(err)\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m")],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a folder whose tokenizer.safetensors is a FIFO blocked")
    assert "tokenizer.safetensors is not a regular file" in done.stdout, done.stderr[-2000:]


def test_fifo_config_is_refused_without_blocking(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    os.mkfifo(tmp_path / "m" / "config.json")
    error = error_without_blocking(lambda: Pipeline.from_pretrained(tmp_path / "m"),
                                   tmp_path / "m" / "config.json")
    assert isinstance(error, CheckpointError) and "not a regular file" in str(error), error


def test_non_regular_pth_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.pth")
    with pytest.raises(CheckpointError, match="not a regular file"):
        ckpt.load_torch_weights(tmp_path / "fifo.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt.load_torch_weights(tmp_path)


def test_pickle_refusal_never_suggests_unsafe_loading(tmp_path):
    """Issue #17 item 14: torch's advice to re-run with weights_only=False is never quoted."""
    torch.save({"weights": Path("x")}, tmp_path / "global.pth")  # a non-tensor global
    _Payload.marker = str(tmp_path / "pwned")
    with (tmp_path / "reduce.pth").open("wb") as f:
        pickle.dump({"weights": _Payload()}, f)
    for name in ("global.pth", "reduce.pth"):
        with pytest.raises(CheckpointError) as info:
            ckpt.load_torch_weights(tmp_path / name)
        message = str(info.value)
        assert "refused without executing it" in message
        for advice in ("weights_only", "False", "trust", "safe_globals", "\n"):
            assert advice not in message, message
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not (tmp_path / "pwned").exists()
