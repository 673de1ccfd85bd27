"""Checkpoints: official ``.pth`` layouts → ours, config inference, safetensors I/O.

Converters are pure functions ``dict -> dict`` (tested), followed by a strict load in which any
missing, unexpected or mis-shaped key is an error that names the keys. Official ``.pth`` files
are read only with ``torch.load(weights_only=True)``; buffers the official code stores
(``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``, ``ema_vocab_hit_SV``) are recomputed by
us and dropped (a VAR checkpoint's mask buffer differs from HMAR's, so it must not be loaded).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .config import TokenizerConfig, TransformerConfig

__all__ = [
    "CheckpointError",
    "check_declared_structure",
    "convert_official_hmar_state_dict",
    "convert_official_var_state_dict",
    "convert_official_vqvae_state_dict",
    "infer_tokenizer_config",
    "infer_transformer_config",
    "load_into",
    "load_torch_weights",
    "merge_official_stage_state_dicts",
    "require_regular_file",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

_DROPPED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")
_BLOCK_RENAMES = {
    "attn.mat_qkv.weight": "attn.qkv.weight",
    "attn.scale_mul_1H11": "attn.log_scale",
    "attn.q_bias": "attn.q_bias",
    "attn.v_bias": "attn.v_bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "ffn.fc1.weight": "ffn.fc1.weight",
    "ffn.fc1.bias": "ffn.fc1.bias",
    "ffn.fc2.weight": "ffn.fc2.weight",
    "ffn.fc2.bias": "ffn.fc2.bias",
    "ada_lin.1.weight": "ada_lin.weight",
    "ada_lin.1.bias": "ada_lin.bias",
}
_TOP_RENAMES = {
    "pos_start": "pos_start",
    "pos_1LC": "pos_embed",
    "class_emb.weight": "class_embed.weight",
    "lvl_embed.weight": "level_embed.weight",
    "word_embed.weight": "word_embed.weight",
    "word_embed_bias": "word_embed_bias",
    "mask_embed.weight": "mask_embed",
}
_HEAD_RENAMES = {"_head_nm.ada_lin.1.weight": "_head.ada_lin.weight",
                 "_head_nm.ada_lin.1.bias": "_head.ada_lin.bias",
                 "_head.weight": "_head.out.weight", "_head.bias": "_head.out.bias"}
_BLOCK_KEY = re.compile(r"^(base_blocks|ns_blocks|mask_blocks|blocks)\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that does not fit: missing, unexpected or mis-shaped keys, bad files."""


def require_regular_file(path: Path, what: str) -> None:
    """Refuse a missing path or anything but a regular file (FIFO, device, folder, socket).

    Symbolic links are followed. Opening a FIFO for reading blocks until a writer appears, so
    this check comes before any ``open``.

    Raises:
        CheckpointError: naming ``what`` and the path.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"{what} {path} is {kind}")


def load_torch_weights(path: str | Path) -> StateDict:
    """Read a ``.pth`` state dict safely (``weights_only=True``); refuse anything else.

    Raises:
        CheckpointError: the file is missing, not a weights-only pickle (e.g. it would run
            code), or not a flat mapping of names to tensors.
    """
    path = Path(path)
    require_regular_file(path, "checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            IndexError, KeyError, AssertionError, TypeError, struct.error, OSError) as err:
        raise CheckpointError(f"{path} is not a weights-only checkpoint, refused without "
                              f"executing it ({_refusal_reason(err)}); only state dicts of "
                              "plain tensors are read") from None
    if isinstance(obj, Mapping) and "trainer" in obj and isinstance(obj["trainer"], Mapping):
        obj = obj["trainer"].get("transformer_wo_ddp", obj)  # official training checkpoint
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return dict(obj)


# Sentences of torch's refusal that must never reach a user: its advice to load unsafely.
_UNSAFE_ADVICE = re.compile(r"weights_only|trusted source|safe_globals|allowlist|trust", re.I)


def _refusal_reason(err: BaseException) -> str:
    """The cause of torch's weights-only refusal in one short sentence, without torch's advice
    to re-run ``torch.load`` unsafely (which would execute the file's code)."""
    text = str(err)
    _, found, detail = text.partition("WeightsUnpickler error:")
    reason = " ".join((detail if found else text).split("Check the documentation")[0].split())
    reason = re.split(r"(?<=\.)\s+|\s+(?=Please use)", reason)[0].rstrip(".")
    if not reason or _UNSAFE_ADVICE.search(reason):
        reason = f"{type(err).__name__}: it holds more than tensors"
    return reason[:200]


def _rename_block_key(key: str) -> str:
    match = _BLOCK_KEY.match(key)
    if match is None:
        raise CheckpointError(f"not a block key: {key}")
    group, index, rest = match.groups()
    if rest == "attn.zero_k_bias":
        return ""
    if rest not in _BLOCK_RENAMES:
        raise CheckpointError(f"unexpected block key {key!r}")
    return f"{group}.{index}.{_BLOCK_RENAMES[rest]}"


def _convert(sd: Mapping[str, torch.Tensor], head_prefixes: tuple[str, ...]) -> StateDict:
    out: StateDict = {}
    unknown = []
    for key, value in sd.items():
        if key in _DROPPED_BUFFERS:
            continue
        if key in _TOP_RENAMES:
            new = _TOP_RENAMES[key]
        elif _BLOCK_KEY.match(key):
            new = _rename_block_key(key)
            if not new:
                if value.count_nonzero():
                    raise CheckpointError(f"{key} must be a zero buffer")
                continue
        else:
            new = ""
            for prefix in head_prefixes:
                for suffix, renamed in _HEAD_RENAMES.items():
                    if key == prefix + suffix:
                        new = prefix + renamed
            if not new:
                unknown.append(key)
                continue
        out[new] = value
    if unknown:
        raise CheckpointError(f"unexpected keys in official checkpoint: {sorted(unknown)}")
    if "mask_embed" in out:
        out["mask_embed"] = out["mask_embed"].reshape(1, -1)
    return out


def convert_official_hmar_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official HMAR layout (``base_blocks``/``ns_blocks``/``mask_blocks``) → ours."""
    return _convert(sd, ("ns", "mask"))


def convert_official_var_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official VAR / stage-1 layout (``blocks``, ``head``, biased ``word_embed``) → ours (VAR).

    All blocks become ``base_blocks``; the head becomes ``ns_head``.
    """
    if any(k.startswith("shared_ada_lin") or k.endswith("ada_gss") for k in sd):
        raise CheckpointError("shared-AdaLN checkpoints (VAR-d36) are not supported")
    sd = dict(sd)
    if "word_embed.bias" in sd:
        sd["word_embed_bias"] = sd.pop("word_embed.bias")
    renamed = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            key = "base_" + key
        elif key.startswith("head"):
            key = "ns_" + key
        renamed[key] = value
    return _convert(renamed, ("ns",))


def merge_official_stage_state_dicts(
    stage1: Mapping[str, torch.Tensor],
    stage2: Mapping[str, torch.Tensor] | None,
    n_layers_train: int,
) -> StateDict:
    """Map official stage-1 (NSP) and stage-2 (MP) state dicts onto the official HMAR layout.

    Blocks ``i < depth - n`` of stage 1 become ``base_blocks``, the rest ``ns_blocks``; the
    last ``n`` blocks of stage 2 become ``mask_blocks``; heads get ``ns_`` / ``mask_``
    prefixes; ``word_embed.bias`` becomes ``word_embed_bias``. Stage 2's frozen parts (first
    blocks, embeddings) must equal stage 1's — a mismatch is an error, not silently ignored.
    """
    depth = 1 + max(int(m.group(2)) for k in stage1 if (m := _BLOCK_KEY.match(k)))
    n_base = depth - n_layers_train
    if not 0 <= n_base < depth:
        raise CheckpointError(f"n_layers_train={n_layers_train} does not fit depth {depth}")
    out: StateDict = {}
    for key, value in stage1.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, rest = int(match.group(2)), match.group(3)
            group = "base_blocks" if index < n_base else "ns_blocks"
            out[f"{group}.{index if index < n_base else index - n_base}.{rest}"] = value
        elif key.startswith("head"):
            out["ns_" + key] = value
        elif key == "word_embed.bias":
            out["word_embed_bias"] = value
        else:
            out[key] = value
    if stage2 is None:
        return out
    for key, value in stage2.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, rest = int(match.group(2)), match.group(3)
            if index >= n_base:
                out[f"mask_blocks.{index - n_base}.{rest}"] = value
            elif not torch.equal(value, stage1[key]):
                raise CheckpointError(f"stage-2 {key} differs from stage 1 (should be frozen)")
        elif key.startswith("head"):
            out["mask_" + key] = value
        elif key == "mask_embed.weight":
            out[key] = value
        elif key in ("word_embed_bias",):
            if not torch.equal(value, stage1["word_embed.bias"]):
                raise CheckpointError(
                    "stage-2 word_embed_bias differs from stage-1 word_embed.bias")
        elif key in _DROPPED_BUFFERS:
            continue
        elif key in stage1 and not torch.equal(value, stage1[key]):
            raise CheckpointError(f"stage-2 {key} differs from stage 1 (should be frozen)")
    return out


def convert_official_vqvae_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official VQVAE layout → ours (same names; the training-only usage buffer is dropped)."""
    return {k: v for k, v in sd.items() if k != "quantize.ema_vocab_hit_SV"}


def infer_tokenizer_config(sd: Mapping[str, torch.Tensor], **overrides: object) -> TokenizerConfig:
    """Tokenizer config from an official VQVAE state dict's tensor shapes.

    ``patch_nums`` cannot be read from the VQVAE alone (its usage buffer holds only the number of
    scales); it defaults to the 256 px pyramid and is normally taken from the transformer.
    """
    try:
        channels = sd["encoder.conv_in.weight"].shape[0]
        vocab, latent = sd["quantize.embedding.weight"].shape
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        mult = []
        for level in levels:
            mult.append(sd[f"encoder.down.{level}.block.0.conv1.weight"].shape[0] // channels)
        blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
        phi_prefix = "quantize.quant_resi.qresi_ls."
        num_phi = len({k.split(".")[3] for k in sd if k.startswith(phi_prefix)})
        image_channels = sd["encoder.conv_in.weight"].shape[1]
    except KeyError as err:
        raise CheckpointError(f"not a VQVAE state dict: missing key {err}") from err
    kwargs: dict[str, object] = {
        "vocab_size": vocab, "latent_channels": latent, "channels": channels,
        "channel_mult": tuple(mult), "num_res_blocks": blocks, "num_phi": num_phi,
        "image_channels": image_channels,
    }
    kwargs.update(overrides)
    return TokenizerConfig(**kwargs)  # type: ignore[arg-type]


def infer_transformer_config(
    sd: Mapping[str, torch.Tensor], **overrides: object
) -> TransformerConfig:
    """Transformer config from one of *our* (converted) state dicts' tensor shapes.

    Depth, width, heads, branch depth, classes, vocab, latent channels and the pyramid (from the
    length of the position embedding, matched against the official pyramids or a perfect-square
    decomposition) are all read from shapes; ``overrides`` win.
    """
    try:
        width = sd["pos_start"].shape[-1]
        seq_len = sd["pos_embed"].shape[1]
        num_scales = sd["level_embed.weight"].shape[0]
        num_classes = sd["class_embed.weight"].shape[0] - 1
        vocab = sd["ns_head.out.weight"].shape[0]
        latent = sd["word_embed.weight"].shape[1]
        first = "base_blocks.0" if "base_blocks.0.attn.log_scale" in sd else "ns_blocks.0"
        heads = sd[f"{first}.attn.log_scale"].shape[1]
        hidden = next(v.shape[0] for k, v in sd.items() if k.endswith("ffn.fc1.weight"))
    except (KeyError, StopIteration) as err:
        raise CheckpointError(f"not an HMAR/VAR state dict: missing key {err}") from err

    def count(group: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(group + ".")})

    n_base, n_ns, n_mask = count("base_blocks"), count("ns_blocks"), count("mask_blocks")
    kind = "hmar" if n_mask else "var"
    kwargs: dict[str, object] = {
        "depth": n_base + n_ns, "width": width, "heads": heads, "n_layers_train": n_ns,
        "kind": kind, "num_classes": num_classes, "vocab_size": vocab, "latent_channels": latent,
        "patch_nums": _patch_nums_for(seq_len, num_scales), "mlp_ratio": hidden / width,
    }
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)  # type: ignore[arg-type]


def _patch_nums_for(seq_len: int, num_scales: int) -> tuple[int, ...]:
    from .config import PATCH_NUMS

    for patch_nums in PATCH_NUMS.values():
        if sum(p * p for p in patch_nums) == seq_len and len(patch_nums) == num_scales:
            return patch_nums
    if seq_len == sum(p * p for p in range(1, num_scales + 1)):
        return tuple(range(1, num_scales + 1))
    raise CheckpointError(f"cannot infer patch_nums for L={seq_len} with {num_scales} scales; "
                          "pass patch_nums=... explicitly")


def _indices(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many distinct ``prefix.<i>.`` sub-modules the keys hold."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({match.group(1) for key in sd if (match := pattern.match(key))})


def check_declared_structure(
    tokenizer_cfg: TokenizerConfig,
    tokenizer_sd: Mapping[str, torch.Tensor],
    transformer_cfg: TransformerConfig,
    transformer_sd: Mapping[str, torch.Tensor],
) -> None:
    """Refuse a config that declares more (or other) structure than the weights hold, before
    anything is built: block counts, levels and res-blocks from the key names, widths and the
    pyramid from a few shapes. Building first would cost time and memory in proportion to what
    an untrusted ``config.json`` declares (depth 20000: 21 s, +625 MiB) just to fail the strict
    load. A consistent pair passes; :func:`load_into` still checks every key and shape.

    Raises:
        CheckpointError: naming each declared value next to what the weights hold.
    """
    t, k = transformer_cfg, tokenizer_cfg
    n_branch = t.n_layers_train
    checks = [
        ("transformer depth - n_layers_train (base blocks)", t.depth - n_branch,
         _indices(transformer_sd, "base_blocks")),
        ("transformer n_layers_train (ns blocks)", n_branch, _indices(transformer_sd, "ns_blocks")),
        ("transformer mask blocks", n_branch if t.has_mask_branch else 0,
         _indices(transformer_sd, "mask_blocks")),
        ("tokenizer len(channel_mult) (encoder levels)", len(k.channel_mult),
         _indices(tokenizer_sd, "encoder.down")),
        ("tokenizer num_res_blocks (encoder)", k.num_res_blocks,
         _indices(tokenizer_sd, "encoder.down.0.block")),
        ("tokenizer num_res_blocks + 1 (decoder)", k.num_res_blocks + 1,
         _indices(tokenizer_sd, "decoder.up.0.block")),
    ]
    shapes = [
        ("transformer (1, seq_len, width) from patch_nums and width", (1, t.seq_len, t.width),
         transformer_sd.get("pos_embed")),
        ("transformer (num_classes + 1, width)", (t.num_classes + 1, t.width),
         transformer_sd.get("class_embed.weight")),
        ("tokenizer (vocab_size, latent_channels)", (k.vocab_size, k.latent_channels),
         tokenizer_sd.get("quantize.embedding.weight")),
    ]
    problems = [f"{name}: config.json declares {declared}, the weights hold {held}"
                for name, declared, held in checks if declared != held]
    problems += [f"{name}: config.json declares {declared}, the weights hold "
                 f"{tuple(tensor.shape)}" for name, declared, tensor in shapes
                 if tensor is not None and tuple(tensor.shape) != declared]
    if problems:
        raise CheckpointError("config does not match the weights: " + "; ".join(problems))


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load with errors that name every missing, unexpected and mis-shaped key.

    Works for modules built on the meta device (``assign=True``); values are cast to the
    module's dtype for floating tensors.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape
    )
    dtypes = sorted(
        f"{k}: {sd[k].dtype}" for k in set(sd) & set(expected)
        if sd[k].is_floating_point() != expected[k].is_floating_point()
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"mis-shaped keys {shapes}")
    if dtypes:
        problems.append(f"wrong dtype kind {dtypes}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{what}: non-finite values in {sorted(bad)[:10]}")
    cast = {k: v.to(expected[k].dtype) for k, v in sd.items()}
    module.load_state_dict(cast, strict=True, assign=True)
