"""SAM-GS: similarity-aware momentum gradient surgery.

Borsani, Rosani, Nicosia & Di Fatta, "Gradient Similarity Surgery in Multi-Task Deep Learning",
ECML PKDD 2025, arXiv:2506.06130. Official code (PyTorch, on the Nash-MTL/FAMO code base):
https://github.com/ThomBors/samgs (``methods/weight_methods.py``, class ``SAMGS``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import Aggregator, check_number

_EPS = 1e-8


def _mean_magnitude_similarity(norms: Tensor) -> Tensor:
    """Mean over pairs ``i < j`` of ``2|g_i||g_j| / (|g_i|^2 + |g_j|^2)`` (1 for a zero pair / m = 1)."""
    m = norms.shape[0]
    if m == 1:
        return norms.new_ones(())
    num = 2.0 * norms[:, None] * norms[None, :]
    den = norms[:, None] ** 2 + norms[None, :] ** 2
    sim = torch.where(den > 0, num / den.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
    rows, cols = torch.triu_indices(m, m, offset=1, device=norms.device)
    return sim[rows, cols].mean()


class SAMGS(Aggregator):
    r"""Gradient-magnitude similarity gates between magnitude equalisation and momentum modulation.

    With task gradients :math:`g_i` (rows of ``J``), the pairwise magnitude similarity is
    :math:`s_{ij} = 2\|g_i\|\|g_j\| / (\|g_i\|^2 + \|g_j\|^2)` and :math:`\bar s` its mean over
    :math:`i < j`. Every call (step :math:`t`) updates, as in the official code,

    .. math::
        M_t = \beta_1 M_{t-1} + (1-\beta_1) J,\qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)(1-\bar s)^2 + 10^{-8},

    (``M`` per task and coordinate, ``v`` a scalar) with bias corrections
    :math:`\hat M = M_t/(1-\beta_1^t)`, :math:`\hat v = v_t/(1-\beta_2^t)`. Then

    * if :math:`\bar s < \gamma` (magnitudes dissimilar): equalise the magnitudes,
      :math:`d = \sum_i \frac{g_i}{\|g_i\|}\cdot\frac1m\sum_j \|g_j\|`;
    * otherwise (momentum modulation): :math:`d = \sum_i g_i \odot |\hat M_i| / \sqrt{\hat v}`.

    :param gamma: similarity threshold :math:`\gamma\in[0, 1]`. Default ``0.1`` (official class
        default and toy config; the NYUv2/Cityscapes configs use ``0.7``).
    :param beta1: momentum of :math:`M` (official ``momentum=0.9``).
    :param beta2: rate of :math:`v` (official ``0.99``; toy config ``0.9``).
    :param rescale: ``"none"`` (default) returns :math:`d` as in the paper; ``"sum"`` returns
        :math:`m\,d`, what the official ``overwrite_grad`` writes ("to match the sum loss").

    Deviations and choices: the official ``WeightMethod.backward`` also clips the shared gradient
    to norm ``max_norm=1.0``; gradkit leaves clipping to the optimizer/transform chain
    (``torch.nn.utils.clip_grad_norm_`` or a clipping transform). A task with a zero gradient
    contributes zero in the equalisation branch (the official code divides by zero); a pair of
    zero gradients has similarity 1, and one task gives :math:`\bar s = 1` (official: NaN).
    The moments are kept in float32/float64 of the input; ``J`` must keep its shape across calls.

    State (``state_dict``): ``step``, ``exp_avg`` (:math:`M`, shape ``[m, n]``), ``exp_var``
    (:math:`v`).
    """

    def __init__(
        self, gamma: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, rescale: str = "none"
    ):
        check_number("gamma", gamma, low=0.0, high=1.0)
        check_number("beta1", beta1, low=0.0, high=1.0)
        check_number("beta2", beta2, low=0.0, high=1.0)
        if beta1 == 1.0:
            raise ValueError(f"Invalid beta1: {beta1!r} (must be in [0.0, 1.0))")
        if beta2 == 1.0:
            raise ValueError(f"Invalid beta2: {beta2!r} (must be in [0.0, 1.0))")
        if rescale not in ("none", "sum"):
            raise ValueError(f"Invalid rescale: {rescale!r} (expected 'none' or 'sum')")
        self.gamma = gamma
        self.beta1 = beta1
        self.beta2 = beta2
        self.rescale = rescale
        self.reset()

    def reset(self) -> None:
        """Forget the moments (step 0)."""
        self.step = 0
        self.exp_avg: Tensor | None = None
        self.exp_var: Tensor | None = None
        self.last_similarity: float | None = None
        self.last_branch: str | None = None

    def _arguments(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "rescale": self.rescale,
        }

    def aggregate(self, matrix: Tensor) -> Tensor:
        if self.exp_avg is not None and self.exp_avg.shape != matrix.shape:
            raise ValueError(
                f"SAMGS state has Jacobian shape {tuple(self.exp_avg.shape)}, "
                f"got {tuple(matrix.shape)}; call reset() to start over"
            )
        m = matrix.shape[0]
        norms = matrix.norm(dim=1)
        s_bar = _mean_magnitude_similarity(norms)
        if self.exp_avg is None:
            self.exp_avg = torch.zeros_like(matrix)
            self.exp_var = matrix.new_zeros(())
        self.step += 1
        self.exp_avg.mul_(self.beta1).add_(matrix, alpha=1.0 - self.beta1)
        self.exp_var.mul_(self.beta2).add_((1.0 - self.beta2) * (1.0 - s_bar) ** 2 + _EPS)
        self.last_similarity = float(s_bar)
        if s_bar < self.gamma:
            self.last_branch = "equalize"
            safe = torch.where(norms > 0, norms, torch.ones_like(norms))
            scale = torch.where(norms > 0, norms.mean() / safe, torch.zeros_like(norms))
            out = scale @ matrix
        else:
            self.last_branch = "momentum"
            m_hat = self.exp_avg / (1.0 - self.beta1**self.step)
            v_hat = self.exp_var / (1.0 - self.beta2**self.step)
            out = (matrix * m_hat.abs()).sum(0) / v_hat.sqrt()
        return out * m if self.rescale == "sum" else out

    def state_dict(self) -> dict[str, Any]:
        if self.exp_avg is None:
            return {"step": 0}
        return {
            "step": self.step,
            "exp_avg": self.exp_avg.clone(),
            "exp_var": self.exp_var.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "step" not in state_dict:
            raise ValueError("SAMGS state_dict has no 'step' entry")
        self.reset()
        self.step = int(state_dict["step"])
        if self.step > 0:
            self.exp_avg = state_dict["exp_avg"].clone()
            self.exp_var = state_dict["exp_var"].clone()
