"""Pure metric functions of ``benchmarks/quality.py``: PSNR, (weighted) Fréchet distance,
nearest-neighbour distances and class-balancing helpers. NumPy/PyTorch only, no model code.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "balanced_mean",
    "class_balance_weights",
    "frechet_distance",
    "gaussian_stats",
    "nearest_neighbour_distances",
    "psnr",
    "to_pixels32",
]


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0
         ) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images against a reference, both in [0, data_range].

    A perfect reconstruction gives ``inf``.
    """
    if images.shape != reference.shape:
        raise ValueError(f"shape mismatch {tuple(images.shape)} vs {tuple(reference.shape)}")
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def class_balance_weights(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Weights ``1 / (num classes present * count of the sample's class)``: every class present
    gets the same total weight; they sum to 1."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def balanced_mean(values: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the per-class mean of ``values`` (each class counts equally)."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    return float(np.sum(values * class_balance_weights(labels)))


def gaussian_stats(features: np.ndarray | torch.Tensor, weights: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features, optionally with sample weights.

    With weights (normalised to sum 1) the covariance is the unbiased reliability-weighted
    estimate ``sum w (x - mu)(x - mu)^T / (1 - sum w^2)``; without them the usual ``N - 1`` one.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {x.shape}")
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(x),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per sample, not all zero")
    w = w / w.sum()
    mu = w @ x
    centred = x - mu
    sigma = (centred * w[:, None]).T @ centred / max(1.0 - float(np.sum(w**2)), 1e-12)
    return mu, sigma


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
                     ) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, with the trace term computed
    as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``; stable for singular covariances).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two Gaussians have different dimensions")
    root1 = _sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def to_pixels32(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3*32*32) float32 vectors (area-downsampled to 32x32)."""
    if images.dtype == torch.uint8:
        raise ValueError("expected float images in [0, 1]")
    return F.adaptive_avg_pool2d(images.float(), 32).flatten(1)


@torch.no_grad()
def nearest_neighbour_distances(queries: torch.Tensor, reference: torch.Tensor,
                                chunk: int = 256, rms: bool = False
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance of each query row to its nearest reference row, and that row's index.

    Args:
        queries: (Q, D) float.
        reference: (R, D) float.
        chunk: queries per distance block (memory: chunk x R).
        rms: divide distances by sqrt(D) (root-mean-square difference per coordinate).

    Returns:
        ``(distances (Q,) float64, indices (Q,) int64)``.
    """
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"need (Q, D) and (R, D), got {tuple(queries.shape)} and "
                         f"{tuple(reference.shape)}")
    if len(reference) == 0:
        raise ValueError("empty reference set")
    ref = reference.double()
    ref_sq = ref.pow(2).sum(1)
    dists, idxs = [], []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].double()
        d2 = q.pow(2).sum(1, keepdim=True) - 2 * q @ ref.T + ref_sq
        best, index = d2.min(1)
        # exact recomputation for the chosen pair (the expansion above loses precision)
        exact = (q - ref[index]).pow(2).sum(1)
        dists.append(exact.clamp_min(0).sqrt())
        idxs.append(index)
    if not dists:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    out = torch.cat(dists)
    if rms:
        out = out / np.sqrt(queries.shape[1])
    return out, torch.cat(idxs)
