"""Small exact solvers on the Gramian (m x m, m = number of tasks), torch only, float64."""

from __future__ import annotations

import torch
from torch import Tensor


def nonnegative_qp(gram: Tensor, linear: Tensor, max_iter: int | None = None) -> Tensor:
    """Solve ``min_x 1/2 x^T G x + c^T x  s.t.  x >= 0`` for a positive-definite ``G``.

    Primal active-set method in the style of Lawson & Hanson's NNLS ("Solving Least Squares
    Problems", 1974, ch. 23), written for the quadratic form directly: it terminates in finitely
    many steps with the exact optimum (up to the linear solves), which an iterative method
    would only approach.
    """
    m = gram.shape[0]
    max_iter = 3 * m + 10 if max_iter is None else max_iter
    scale = gram.diagonal().abs().max().clamp_min(torch.finfo(gram.dtype).tiny)
    tol = 1e-12 * scale * (1.0 + linear.abs().max())
    x = torch.zeros(m, dtype=gram.dtype, device=gram.device)
    free = torch.zeros(m, dtype=torch.bool, device=gram.device)
    for _ in range(max_iter):
        neg_grad = -(gram @ x + linear)
        candidates = torch.where(~free, neg_grad, torch.full_like(neg_grad, -torch.inf))
        if candidates.max() <= tol:
            break
        free[candidates.argmax()] = True
        for _ in range(max_iter):
            z = torch.zeros_like(x)
            idx = free.nonzero().squeeze(1)
            z[idx] = torch.linalg.solve(gram[idx][:, idx], -linear[idx])
            if bool((z[idx] > 0).all()):
                x = z
                break
            # step from x towards z until the first free coordinate hits zero, then drop it
            blocking = free & (z <= 0)
            ratios = x[blocking] / (x[blocking] - z[blocking])
            alpha = ratios.min().clamp(0.0, 1.0)
            x = x + alpha * (z - x)
            free &= x > 0
            x = torch.where(free, x, torch.zeros_like(x))
    return x


def min_norm_simplex(gram: Tensor, tol: float, max_iter: int) -> Tensor:
    """Frank-Wolfe for ``argmin_{a in simplex} a^T G a`` (MGDA's min-norm point).

    Starts at the uniform vector; each iteration moves toward the vertex ``e_t`` with
    ``t = argmin (G a)_t`` using the exact line search of the quadratic. Stops when the duality
    gap ``a^T G a - min_t (G a)_t`` is at most ``tol * max_i G_ii`` (then every task satisfies
    ``<g_i, d> >= -tol * max_i |g_i|^2``) or after ``max_iter`` iterations.
    """
    m = gram.shape[0]
    alpha = torch.full((m,), 1.0 / m, dtype=gram.dtype, device=gram.device)
    threshold = tol * gram.diagonal().max()
    for _ in range(max_iter):
        g_alpha = gram @ alpha
        t = int(g_alpha.argmin())
        a_g_a = alpha @ g_alpha
        if a_g_a - g_alpha[t] <= threshold:
            break
        # minimise over gamma in [0, 1]: |(1-gamma) d + gamma g_t|^2
        denom = a_g_a - 2 * g_alpha[t] + gram[t, t]
        gamma = (
            ((a_g_a - g_alpha[t]) / denom).clamp(0.0, 1.0) if denom > 0 else alpha.new_tensor(1.0)
        )
        alpha = (1 - gamma) * alpha
        alpha[t] += gamma
    return alpha
