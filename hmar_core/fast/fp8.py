"""FP8 (e4m3) GEMMs of the transformer blocks: per-token activation scales, per-channel weights.

The fast engine's opt-in ``fp8=True``: each of a block's four products (qkv, proj, fc1, fc2)
runs as ``torch._scaled_mm`` on float8 e4m3 operands, which Hopper's tensor cores multiply at
twice the fp16 rate. The scaling is row-wise on both sides:

* weights (N, K): one float32 scale per output channel, ``s_w = max|W[n]| / 448``, quantised
  once when the engine is built;
* activations (M, K): one scale per token, ``s_x = max|x[m]| / 448``, computed on the fly
  (by the fused Triton kernels on CUDA, which write the LayerNorm output straight as fp8; by
  :func:`quantize_rows` elsewhere);

so ``y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] · q_w[n, k] + b[n]``, accumulated in float32.
Rounding is to nearest even on the e4m3 grid (3 mantissa bits: about 3 significant digits,
a relative error of at most 1/16 per element), never saturating since every row's largest
value maps to exactly 448.

Shape legend: M = rows (tokens), K = input features, N = output features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["E4M3", "E4M3_MAX", "Fp8Weight", "fp8_linear", "fp8_out_dtype", "quantize_rows"]

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3fn value
_TINY = 1e-12  # the smallest amax a scale is computed from (all-zero rows quantise to 0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantisation of (..., K): the fp8 values and (M, 1) float32 scales.

    ``q = round_e4m3(x · 448 / a)``, ``scale = a / 448`` with ``a = max(max|x_row|, 1e-12)``,
    computed in float32 (the reference of the fused kernels' quantisation).

    Returns:
        q: (M, K) float8 e4m3fn, M = the product of the leading dims.
        scale: (M, 1) float32.
    """
    rows = x.reshape(-1, x.shape[-1]).float()
    amax = rows.abs().amax(dim=1, keepdim=True).clamp_min(_TINY)
    return (rows * (E4M3_MAX / amax)).to(E4M3), amax / E4M3_MAX


@dataclass
class Fp8Weight:
    """A linear layer's weight as e4m3 with one scale per output channel, and its bias.

    Attributes:
        q: (N, K) float8 e4m3fn, contiguous (``q.t()`` is the column-major operand
            ``torch._scaled_mm`` wants).
        scale: (1, N) float32.
        bias: (N,) in the GEMM's output dtype, or ``None``.
    """

    q: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None,
                    out_dtype: torch.dtype) -> Fp8Weight:
        """Quantise a (N, K) weight row-wise (see :func:`quantize_rows`)."""
        if weight.dim() != 2 or weight.shape[0] % 16 or weight.shape[1] % 16:
            raise ValueError(f"FP8 GEMMs need (N, K) weights with N and K multiples of 16, "
                             f"got {tuple(weight.shape)}")
        q, scale = quantize_rows(weight.detach())
        return cls(q.contiguous(), scale.view(1, -1).contiguous(),
                   None if bias is None else bias.detach().to(out_dtype))

    def dequantized(self) -> torch.Tensor:
        """The (N, K) float32 weight these values stand for (the CPU emulation, tests)."""
        return self.q.float() * self.scale.view(-1, 1)


def fp8_linear(q: torch.Tensor, scale: torch.Tensor, weight: Fp8Weight,
               out_dtype: torch.dtype) -> torch.Tensor:
    """``(q·scale) · (weight)ᵀ + bias`` for (M, K) e4m3 rows and their (M, 1) scales → (M, N).

    On CUDA one ``torch._scaled_mm`` (FP8 tensor cores, float32 accumulation). Elsewhere the
    same product of the dequantised operands in float32 (CPUs have no FP8 units, and CPU
    builds of ``torch._scaled_mm`` differ in which scalings they accept): for tests.
    """
    if q.device.type == "cuda":
        return torch._scaled_mm(q, weight.q.t(), scale_a=scale, scale_b=weight.scale,
                                bias=weight.bias, out_dtype=out_dtype)
    out = (q.float() * scale) @ weight.dequantized().t()
    if weight.bias is not None:
        out += weight.bias.float()
    return out.to(out_dtype)


def fp8_out_dtype(device: torch.device, preferred: torch.dtype) -> torch.dtype:
    """The output dtype the FP8 GEMMs use on ``device``: ``preferred`` if row-wise scaled
    ``torch._scaled_mm`` with a bias supports it there, else bfloat16 (older CUDA builds
    support only bfloat16 with row-wise scales); on other devices (the float32 emulation of
    :func:`fp8_linear`) ``preferred``.

    Raises:
        RuntimeError: FP8 GEMMs do not run on this device at all (e.g. before Ada/Hopper).
    """
    if device.type != "cuda":
        return preferred
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise RuntimeError(f"FP8 GEMMs need compute capability >= 8.9 (Ada, Hopper), "
                           f"{torch.cuda.get_device_name(device)} has "
                           f"{torch.cuda.get_device_capability(device)}")
    weight = torch.eye(32, device=device)
    rows = torch.ones(16, 32, device=device)
    errors = []
    for dtype in dict.fromkeys((preferred, torch.bfloat16)):
        try:
            packed = Fp8Weight.from_linear(weight, torch.zeros(32, device=device), dtype)
            out = fp8_linear(*quantize_rows(rows), packed, dtype)
        except (RuntimeError, NotImplementedError) as err:
            errors.append(f"{dtype}: {err}")
            continue
        if torch.equal(out.float(), rows):
            return dtype
        errors.append(f"{dtype}: wrong result")
    raise RuntimeError("FP8 GEMMs are unavailable on this device: " + "; ".join(errors))
