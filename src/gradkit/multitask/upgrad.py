"""UPGrad: unconflicting projection of gradients (Jacobian descent).

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232 (2024).
Reference implementation: TorchJD, https://github.com/TorchJD/torchjd
(``src/torchjd/aggregation/_upgrad.py``, ``_utils/gramian.py``, ``_utils/dual_cone.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator, check_number
from gradkit.multitask._solvers import nonnegative_qp


def project_weights_onto_dual_cone(gram: Tensor, lower: Tensor) -> Tensor:
    r"""Weights ``w = argmin_v v^T G v s.t. v >= lower`` (the dual of projecting ``lower @ J`` onto
    the dual cone ``{x : J x >= 0}``; the projection is ``w @ J``).

    Substituting ``v = lower + x`` gives ``min 1/2 x^T G x + (G lower)^T x, x >= 0``.
    """
    return lower + nonnegative_qp(gram, gram @ lower)


class UPGrad(WeightedAggregator):
    r"""Project every task gradient onto the dual cone of the rows of ``J`` and combine them:
    :math:`d = \sum_i u_i\, \pi_J(g_i)`, :math:`\pi_J(x) = \arg\min_{y: Jy \ge 0} \|y - x\|`.

    Computed in the dual on the Gramian: :math:`w^{(i)} = \arg\min_{v \ge u_i e_i} v^\top G v`,
    weights :math:`\sum_i w^{(i)}`. As TorchJD, :math:`G` is first divided by its trace (the squared
    Frobenius norm of ``J``; replaced by zeros if below ``norm_eps``) and ``reg_eps * I`` is added
    so the QP is strictly convex. The QP is solved exactly by an active-set method in torch
    (TorchJD uses ``quadprog``; no external solver here).

    Properties: non-conflicting (``J d >= 0`` up to ``reg_eps``), permutation-invariant, linear
    under positive row scaling. Note that, with the ``norm_eps`` threshold, matrices with squared
    Frobenius norm below ``norm_eps`` aggregate to the preference-weighted mean.

    :param pref_vector: preference weights ``u`` (shape ``[m]``, nonnegative); default ``1/m``.
    :param norm_eps: trace threshold of the Gramian normalisation (``>= 0``).
    :param reg_eps: ridge added to the normalised Gramian (``>= 0``).
    """

    def __init__(
        self, pref_vector: Tensor | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4
    ):
        check_number("norm_eps", norm_eps, low=0.0)
        check_number("reg_eps", reg_eps, low=0.0)
        if pref_vector is not None:
            pref_vector = torch.as_tensor(pref_vector)
            if pref_vector.dim() != 1 or not bool((pref_vector >= 0).all()):
                raise ValueError(
                    f"Invalid pref_vector: {pref_vector!r} (expected a nonnegative 1-D tensor)"
                )
        self.pref_vector = pref_vector
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def _arguments(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "norm_eps": self.norm_eps, "reg_eps": self.reg_eps}

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        gram = (matrix @ matrix.T).to(torch.float64)
        if self.pref_vector is None:
            pref = gram.new_full((m,), 1.0 / m)
        else:
            if self.pref_vector.shape != (m,):
                raise ValueError(
                    f"pref_vector has shape {tuple(self.pref_vector.shape)}, expected ({m},)"
                )
            pref = self.pref_vector.to(gram)
        trace = gram.diagonal().sum()
        gram = gram / trace if trace >= self.norm_eps else torch.zeros_like(gram)
        gram = gram + self.reg_eps * torch.eye(m, dtype=gram.dtype, device=gram.device)
        weights = sum(
            project_weights_onto_dual_cone(
                gram, pref[i] * torch.eye(m, dtype=gram.dtype, device=gram.device)[i]
            )
            for i in range(m)
        )
        return weights.to(matrix.dtype)
