"""Equal weighting: ``Mean`` (d = (1/m) sum_i g_i) and ``Sum`` (d = sum_i g_i).

``Sum`` is linear scalarisation (LibMTL "EW", Nash-MTL "ls"): the gradient of ``sum_i L_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator


class Mean(WeightedAggregator):
    r"""Average of the task gradients, :math:`d = \frac1m \sum_i g_i` (weights :math:`1/m`)."""

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        return torch.full((m,), 1.0 / m, dtype=matrix.dtype, device=matrix.device)


class Sum(WeightedAggregator):
    r"""Sum of the task gradients, :math:`d = \sum_i g_i` — what ``sum(losses).backward()`` gives."""

    def compute_weights(self, matrix: Tensor) -> Tensor:
        return torch.ones(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
