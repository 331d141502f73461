"""PCGrad: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, arXiv:2001.06782, Algorithm 1. Official code (TensorFlow):
https://github.com/tianheyu927/PCGrad (``PCGrad_tf.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator

_REDUCTIONS = ("sum", "mean")


class PCGrad(WeightedAggregator):
    r"""Project each task gradient away from the *original* gradients it conflicts with, then sum.

    For every task :math:`i`: :math:`g_i^{PC} \leftarrow g_i`; for :math:`j \ne i` in a random
    order, if :math:`\langle g_i^{PC}, g_j\rangle < 0` then
    :math:`g_i^{PC} \leftarrow g_i^{PC} - \frac{\langle g_i^{PC}, g_j\rangle}{\|g_j\|^2} g_j`.
    The direction is :math:`d = \sum_i g_i^{PC}`.

    :param reduction: ``"sum"`` (default; the official TF code, LibMTL, TorchJD and Nash-MTL) or
        ``"mean"`` (``d / m``; used by the ``Pytorch-PCGrad`` port and the CAGrad repository).
    :param generator: a ``torch.Generator`` (or an ``int`` seed) for the projection orders; a
        fresh order is drawn for every task at every call, as in the paper's Algorithm 1.
        ``None`` uses torch's global generator.

    Deviations of the official code and our choice: the TF code shuffles once per step with a
    result that is discarded (``tf.random.shuffle``), so in practice it never shuffles
    (tianheyu927/PCGrad issues #3, #5, #20); we follow the paper (independent order per task).
    Projections are against the original :math:`g_j` as in the official code. With two tasks the
    order cannot matter. For ``m = 2`` PCGrad equals TorchJD's UPGrad with preference ``ones``.

    State (``state_dict``): the generator state, when a generator is given.
    """

    def __init__(self, reduction: str = "sum", generator: torch.Generator | int | None = None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Invalid reduction: {reduction!r} (expected one of {_REDUCTIONS})")
        if generator is not None and not isinstance(generator, (torch.Generator, int)):
            raise ValueError(
                f"Invalid generator: {generator!r} (expected a torch.Generator or int)"
            )
        if isinstance(generator, bool):
            raise ValueError(
                f"Invalid generator: {generator!r} (expected a torch.Generator or int)"
            )
        self.reduction = reduction
        self._seed = generator if isinstance(generator, int) else None
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator

    def _arguments(self) -> dict[str, Any]:
        return {
            "reduction": self.reduction,
            "generator": self._seed if self._seed is not None else self.generator,
        }

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        gram = (matrix @ matrix.T).to(torch.float64)
        sq_norms = gram.diagonal()
        # weights[i] expresses g_i^PC in the basis of the original rows: g_i^PC = weights[i] @ J
        weights = torch.eye(m, dtype=torch.float64, device=matrix.device)
        for i in range(m):
            order = torch.randperm(m, generator=self.generator).tolist()
            for j in order:
                if j == i:
                    continue
                dot = weights[i] @ gram[:, j]  # <g_i^PC, g_j>
                if dot < 0 and sq_norms[j] > 0:
                    weights[i, j] -= dot / sq_norms[j]
        total = weights.sum(0)
        if self.reduction == "mean":
            total = total / m
        return total.to(matrix.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.generator is None:
            super().load_state_dict(state_dict)
        elif "generator" not in state_dict:
            raise ValueError("PCGrad state_dict has no 'generator' entry")
        else:
            self.generator.set_state(state_dict["generator"])
