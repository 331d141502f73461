"""IMTL-G: the gradient part of Impartial Multi-Task Learning.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (Section 3.2, Eq. 8). No official code; LibMTL (``LibMTL/weighting/IMTL.py``) and
TorchJD (``src/torchjd/aggregation/_imtl_g.py``) implement it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator


class IMTLG(WeightedAggregator):
    r"""Weights :math:`\alpha` (:math:`\sum_i \alpha_i = 1`) such that :math:`d = \alpha^\top J`
    has the same projection on every unit task gradient :math:`u_i = g_i/\|g_i\|`.

    The paper's closed form is :math:`\alpha_{2:} = g_1 U^\top (D U^\top)^{-1}`,
    :math:`\alpha_1 = 1 - \sum \alpha_{2:}` with :math:`D = [g_1 - g_i]`, :math:`U = [u_1 - u_i]`.
    Equivalently (``diag(1/|g|) J d = c 1`` with ``d = J^T alpha``):
    :math:`\alpha \propto G^{+} \sqrt{\mathrm{diag}\, G}`, normalised to sum 1. We use this Gramian
    form with the pseudo-inverse (as TorchJD), which also covers linearly dependent gradients
    where the paper's inverse does not exist; weights are all zero if their sum vanishes (e.g.
    all-zero gradients).
    """

    def compute_weights(self, matrix: Tensor) -> Tensor:
        # the weights are invariant to scaling J; normalising first keeps the Gramian out of the
        # subnormal range (|J| ~ 1e-157 squares to ~1e-313, where pinv returns nan)
        peak = matrix.detach().abs().max().to(torch.float64)
        if peak == 0:
            return torch.zeros(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        unit = matrix.to(torch.float64)
        if torch.isfinite(peak):  # non-finite gradients stay non-finite (no silent repair)
            unit = unit / peak
        gram = unit @ unit.T
        v = torch.linalg.pinv(gram, hermitian=True) @ gram.diagonal().clamp_min(0).sqrt()
        total = v.sum()
        scale = gram.diagonal().sum().sqrt()
        if total.abs() <= 1e-12 / scale.clamp_min(1e-300) or scale == 0:
            return torch.zeros_like(v).to(matrix.dtype)
        return (v / total).to(matrix.dtype)
