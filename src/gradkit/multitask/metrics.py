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


def delta_m(
    results: dict[str, dict[str, float]] | list[list[float]],
    baseline: dict[str, dict[str, float]] | list[list[float]],
    higher_is_better: dict[str, dict[str, bool]] | list[list[bool]],
    *,
    average: str = "metric",
) -> float:
    r"""Relative degradation of a multi-task model against single-task baselines, in percent.

    With :math:`M_{t,k}` the multi-task model's metric :math:`k` of task :math:`t`, :math:`B_{t,k}`
    the single-task baseline's and :math:`\delta_{t,k} = 1` when higher is better:

    * ``average="metric"`` (Nash-MTL / CAGrad code, ``delta_fn``; Maninis et al. 2019): the mean
      over **all metrics** of :math:`(-1)^{\delta}(M - B)/B`, times 100;
    * ``average="task"`` (LibMTL's ``count_improvement`` with its sign flipped back): the mean
      over metrics within each task, then over tasks, times 100.

    **Lower is better** in both (negative = the multi-task model beats the baselines; LibMTL
    reports the negation, as a fraction). ``results``/``baseline``/``higher_is_better`` are
    nested ``{task: {metric: value}}`` dicts (or lists of per-task lists) with the same layout.

    Example:
        >>> d = delta_m({"a": {"acc": 0.9}, "b": {"err": 0.2}},
        ...             {"a": {"acc": 1.0}, "b": {"err": 0.25}},
        ...             {"a": {"acc": True}, "b": {"err": False}})
        >>> round(d, 6)  # (+10% worse accuracy, -20% error) / 2
        -5.0
    """
    if average not in ("metric", "task"):
        raise ValueError(f"Invalid average: {average!r} (choose 'metric' or 'task')")

    def rows(x):
        if isinstance(x, dict):
            return [list(v.values()) if isinstance(v, dict) else list(v) for v in x.values()]
        return [list(r) for r in x]

    res, base, hib = rows(results), rows(baseline), rows(higher_is_better)
    if (
        not res
        or [len(r) for r in res] != [len(r) for r in base]
        or [len(r) for r in res] != [len(r) for r in hib]
    ):
        raise ValueError("results, baseline and higher_is_better must have the same layout")
    per_task = []
    for m_row, b_row, h_row in zip(res, base, hib, strict=True):
        terms = []
        for m, b, h in zip(m_row, b_row, h_row, strict=True):
            if b == 0:
                raise ValueError("a baseline metric is 0: relative change undefined")
            terms.append((-1.0 if h else 1.0) * (m - b) / abs(b))
        per_task.append(terms)
    if average == "metric":
        flat = [t for terms in per_task for t in terms]
        return 100.0 * sum(flat) / len(flat)
    return 100.0 * sum(sum(t) / len(t) for t in per_task) / len(per_task)
