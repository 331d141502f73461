"""Gradient-conflict metrics on a Jacobian ``J`` ([m tasks, n]); cheap enough to log every step.

Cosine conflicts as in PCGrad (Yu et al., NeurIPS 2020); magnitude similarity as in SAM-GS
(arXiv:2506.06130, repo ThomBors/samgs): ``s_ij = 2 |g_i| |g_j| / (|g_i|^2 + |g_j|^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.multitask._base import check_matrix


def cosine_matrix(matrix: Tensor) -> Tensor:
    """Pairwise cosine similarities ``[m, m]``; pairs involving a zero gradient get 0."""
    check_matrix(matrix)
    with torch.no_grad():
        gram = matrix @ matrix.T
        norms = gram.diagonal().clamp_min(0).sqrt()
        denom = norms[:, None] * norms[None, :]
        cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, 1), 0)
        return cos.clamp(-1.0, 1.0)


def magnitude_similarity_matrix(matrix: Tensor) -> Tensor:
    """``s_ij = 2|g_i||g_j| / (|g_i|^2 + |g_j|^2)`` in [0, 1]; 1 means equal norms.

    Two zero gradients have equal magnitude, so their entry is 1 (the formula's 0/0 limit
    along equal norms).
    """
    check_matrix(matrix)
    with torch.no_grad():
        norms = matrix.norm(dim=1)
        num = 2 * norms[:, None] * norms[None, :]
        den = norms[:, None] ** 2 + norms[None, :] ** 2
        return torch.where(den > 0, num / torch.where(den > 0, den, 1), 1.0)


def conflict_fraction(matrix: Tensor) -> float:
    """Fraction of task pairs ``i < j`` with a negative inner product (0.0 for a single task)."""
    check_matrix(matrix)
    m = matrix.shape[0]
    if m < 2:
        return 0.0
    with torch.no_grad():
        gram = matrix @ matrix.T
        upper = torch.triu_indices(m, m, offset=1, device=matrix.device)
        return float((gram[upper[0], upper[1]] < 0).double().mean())


def conflict_metrics(matrix: Tensor) -> dict[str, float]:
    """Scalars for logging: conflict fraction, min/mean pairwise cosine, min/mean magnitude
    similarity over pairs ``i < j`` (cosine/similarity entries are NaN-free; a single task gives
    cosine 1 and similarity 1)."""
    m = matrix.shape[0]
    cos, sim = cosine_matrix(matrix), magnitude_similarity_matrix(matrix)
    if m < 2:
        return {
            "conflict_fraction": 0.0,
            "cosine_min": 1.0,
            "cosine_mean": 1.0,
            "magnitude_similarity_min": 1.0,
            "magnitude_similarity_mean": 1.0,
        }
    upper = torch.triu_indices(m, m, offset=1, device=matrix.device)
    pair_cos, pair_sim = cos[upper[0], upper[1]], sim[upper[0], upper[1]]
    return {
        "conflict_fraction": conflict_fraction(matrix),
        "cosine_min": float(pair_cos.min()),
        "cosine_mean": float(pair_cos.mean()),
        "magnitude_similarity_min": float(pair_sim.min()),
        "magnitude_similarity_mean": float(pair_sim.mean()),
    }
