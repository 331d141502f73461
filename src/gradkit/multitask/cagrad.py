"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, arXiv:2110.14048 (Algorithm 1). Official code: https://github.com/Cranial-XIX/CAGrad
(``nyuv2/utils.py::cagrad``, ``toy.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradkit.multitask._base import Aggregator, check_number

_RESCALES = (0, 1, 2)


class CAGrad(Aggregator):
    r"""Maximise the worst local improvement in a ball around the average gradient.

    With :math:`g_0 = \frac1m \sum_i g_i`, :math:`\phi = c^2 \|g_0\|^2` and
    :math:`g_w = w^\top J`, solve the dual
    :math:`w^* = \arg\min_{w \in \Delta_m} g_w^\top g_0 + \sqrt{\phi}\, \|g_w\|` and return
    :math:`d = g_0 + \frac{\sqrt{\phi}}{\|g_{w^*}\|} g_{w^*}`, divided by a rescale factor.
    All quantities are taken from :math:`G = J J^\top`; the simplex problem is solved with
    ``scipy.optimize.minimize`` (SLSQP) from the uniform start, as the official code.

    :param c: conflict-aversion radius (``>= 0``); ``c = 0`` is the mean gradient, ``c >= 1`` makes
        the result non-conflicting. Default 0.5 (paper toy, LibMTL, MTRL); the official NYUv2
        script uses 0.4.
    :param rescale: ``0``: ``d``; ``1``: ``d / (1 + c^2)`` (official ``nyuv2/utils.py`` default and
        LibMTL); ``2``: ``d / (1 + c)`` (official ``toy.py``). Default 1.

    Choices: we divide :math:`G` by its trace before the solve (same minimiser) and use
    ``ftol=1e-12`` so the result does not depend on the gradient scale (the official code solves
    on the raw :math:`G` with SLSQP defaults and ``1e-8`` inside the square root; ours is
    ``1e-12``, so a degenerate :math:`g_w` is resolved to ~1e-6). Zero task gradients are left out
    of the dual (they make the objective flat), and when :math:`g_w \approx 0` (0 in the convex
    hull of the gradients) the direction is 0, as TorchJD — the official code returns
    :math:`g_0` there, which conflicts with some task even for :math:`c \ge 1`. The official training loops
    multiply the result by ``m`` ("to match the sum loss"); we return the mean-scale direction —
    multiply by ``m`` yourself to reproduce that. Requires scipy.
    """

    def __init__(self, c: float = 0.5, rescale: int = 1):
        check_number("c", c, low=0.0)
        if rescale not in _RESCALES or isinstance(rescale, bool):
            raise ValueError(f"Invalid rescale: {rescale!r} (expected one of {_RESCALES})")
        self.c = c
        self.rescale = rescale

    def _arguments(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale}

    def simplex_weights(self, matrix: Tensor) -> Tensor:
        r"""The dual solution :math:`w^*` (on the simplex).

        Zero rows get weight 0 and are left out of the dual: a zero task gradient makes the
        max-min objective flat (its inner product with any direction is 0), and putting weight on
        it only shrinks :math:`g_w` toward 0, where the direction :math:`g_w/\|g_w\|` is
        undefined. The primal optimum over the other tasks is unchanged."""
        from scipy.optimize import minimize

        m = matrix.shape[0]
        gram = (matrix @ matrix.T).to(torch.float64).cpu().numpy()
        trace = gram.trace()
        if trace > 0:  # same minimiser; makes SLSQP's absolute tolerance scale-free
            gram = gram / trace
        active = np.flatnonzero(gram.diagonal() > 1e-20)
        weights = np.zeros(m)
        if active.size == 0:
            return torch.as_tensor(weights, dtype=matrix.dtype, device=matrix.device)
        g0_norm = np.sqrt(gram.mean() + 1e-8)
        radius = self.c * g0_norm + 1e-8
        mean_row = gram[active].mean(axis=1)  # (G 1 / m) on the active rows
        sub = gram[np.ix_(active, active)]

        def objective(w: np.ndarray) -> float:
            return float(w @ mean_row + radius * np.sqrt(w @ sub @ w + 1e-12))

        k = active.size
        result = minimize(
            objective,
            np.full(k, 1.0 / k),
            bounds=[(0.0, 1.0)] * k,
            constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 200},
        )
        weights[active] = result.x
        return torch.as_tensor(weights, dtype=matrix.dtype, device=matrix.device)

    def aggregate(self, matrix: Tensor) -> Tensor:
        w = self.simplex_weights(matrix)
        g_w = w @ matrix
        if g_w.norm() <= 1e-5 * matrix.norm():
            # 0 lies in the convex hull of the gradients (Pareto-stationary point): g_w/|g_w| is
            # undefined. Return 0 as TorchJD does (for c >= 1 it is the max-min optimum); the
            # official code's 1e-4 guard returns the mean gradient g0 instead, which conflicts.
            return torch.zeros_like(g_w)
        g0 = matrix.mean(0)
        g0_norm = (g0 @ g0 + 1e-8).sqrt()
        lam = (self.c * g0_norm + 1e-8) / (g_w.norm() + 1e-8)
        direction = g0 + lam * g_w
        if self.rescale == 1:
            return direction / (1 + self.c**2)
        if self.rescale == 2:
            return direction / (1 + self.c)
        return direction
