"""MGDA: the min-norm point in the convex hull of the task gradients.

Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
Comptes Rendus Mathématique 350 (2012); Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018, arXiv:1810.04650 (Algorithms 1-2). Official code:
https://github.com/isl-org/MultiObjectiveOptimization (``min_norm_solvers.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator, check_number
from gradkit.multitask._solvers import min_norm_simplex


class MGDA(WeightedAggregator):
    r"""Min-norm element of the convex hull: :math:`d = \sum_i \alpha_i g_i` with
    :math:`\alpha = \arg\min_{\alpha \in \Delta_m} \alpha^\top G \alpha`, :math:`G = J J^\top`.

    Two tasks use the exact closed form (Sener & Koltun, Alg. 1):
    :math:`\gamma = \mathrm{clip}(\langle g_2 - g_1, g_2\rangle / \|g_1 - g_2\|^2, 0, 1)`,
    :math:`\alpha = (\gamma, 1-\gamma)`. More tasks use Frank-Wolfe on :math:`G` from the uniform
    start with exact line search (Alg. 2), stopping when the duality gap is at most
    ``tol * max_i |g_i|^2`` or after ``max_iter`` iterations.

    Every task then has :math:`\langle g_i, d\rangle \ge \|d\|^2 \ge 0` at the optimum (up to
    ``tol`` for Frank-Wolfe). Choices: no gradient normalisation (the official code offers
    ``l2``/``loss``/``loss+``; normalise the rows of ``J`` yourself); the official solver starts
    Frank-Wolfe from the best pair and uses ``MAX_ITER=250``, ``STOP_CRIT=1e-5`` on the change in
    ``alpha``; we start uniform (as TorchJD) which keeps the result permutation-invariant.

    :param tol: relative duality-gap tolerance of Frank-Wolfe (``>= 0``).
    :param max_iter: maximum Frank-Wolfe iterations (``>= 1``).
    """

    def __init__(self, tol: float = 1e-7, max_iter: int = 1000):
        check_number("tol", tol, low=0.0)
        check_number("max_iter", max_iter, low=1, integer=True)
        self.tol = tol
        self.max_iter = max_iter

    def _arguments(self) -> dict[str, Any]:
        return {"tol": self.tol, "max_iter": self.max_iter}

    def compute_weights(self, matrix: Tensor) -> Tensor:
        gram = (matrix @ matrix.T).to(torch.float64)
        m = gram.shape[0]
        if m == 1:
            alpha = gram.new_ones(1)
        elif m == 2:
            diff = gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]  # |g1 - g2|^2
            if diff <= 0:
                gamma = gram.new_tensor(0.5)
            else:
                gamma = ((gram[1, 1] - gram[0, 1]) / diff).clamp(0.0, 1.0)
            alpha = torch.stack([gamma, 1 - gamma])
        else:
            alpha = min_norm_simplex(gram, self.tol, self.max_iter)
        return alpha.to(matrix.dtype)
