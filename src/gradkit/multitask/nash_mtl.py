"""Nash-MTL: multi-task learning as a bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022, arXiv:2202.01017 (Section 3, Algorithm 1). Official code:
https://github.com/AvivNavon/nash-mtl (``methods/weight_methods.py::NashMTL``, cvxpy + ECOS);
compared with TorchJD (``src/torchjd/aggregation/_nash_mtl.py``) and LibMTL
(``LibMTL/weighting/Nash_MTL.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator, check_number


def nash_bargaining_weights(
    gram: Tensor, start: Tensor | None = None, max_iter: int = 100, tol: float = 1e-10
) -> Tensor:
    r"""Solve :math:`G\alpha = 1/\alpha`, :math:`\alpha > 0` (float64 Gramian ``gram``).

    This is the stationarity condition of the strictly convex problem
    :math:`\min_{\alpha > 0} F(\alpha) = \tfrac12 \alpha^\top G \alpha - \sum_i \log \alpha_i`,
    solved by damped Newton steps (Hessian :math:`G + \mathrm{diag}(1/\alpha^2)`), kept inside
    :math:`\alpha > 0` and with Armijo backtracking on :math:`F`. Stops when
    :math:`\|G\alpha - 1/\alpha\|_\infty \le` ``tol`` or after ``max_iter`` steps. ``F`` is
    bounded below (a solution exists) iff no nonzero :math:`v \ge 0` has :math:`J^\top v = 0`,
    i.e. the gradients are not Pareto-stationary.
    """
    m = gram.shape[0]
    alpha = torch.ones(m, dtype=gram.dtype, device=gram.device) if start is None else start.clone()

    def objective(a: Tensor) -> Tensor:
        return 0.5 * a @ gram @ a - torch.log(a).sum()

    for _ in range(max_iter):
        residual = gram @ alpha - 1.0 / alpha
        if residual.abs().max() <= tol:
            break
        hessian = gram + torch.diag(1.0 / alpha**2)
        try:
            step = -torch.linalg.solve(hessian, residual)
        except torch.linalg.LinAlgError:  # alpha diverged (Pareto-stationary gradients)
            break
        if not bool(torch.isfinite(step).all()):
            break
        t = 1.0
        negative = step < 0
        if bool(negative.any()):  # stay strictly inside alpha > 0
            t = min(1.0, 0.99 * float((-alpha[negative] / step[negative]).min()))
        f0 = objective(alpha)
        slope = float(residual @ step)
        while t > 1e-12 and float(objective(alpha + t * step)) > float(f0) + 1e-4 * t * slope:
            t *= 0.5
        alpha = alpha + t * step
    return alpha


class NashMTL(WeightedAggregator):
    r"""Nash bargaining solution: weights :math:`\alpha > 0` with
    :math:`(G\alpha)_i = 1/\alpha_i` for all tasks, :math:`d = \alpha^\top J`.

    :math:`d` maximises :math:`\sum_i \log(g_i^\top d)` in a ball (paper Section 3); every task
    gets :math:`g_i^\top d = 1/\alpha_i > 0`. The weights are those of the raw Gramian (as the
    official code, whose constraints carry the normalisation factor back), so
    :math:`\|d\| = \sqrt m`; the solve itself runs on :math:`G/\|G\|_F` in float64 (official
    normalisation) and the result is rescaled by :math:`\|G\|_F^{-1/2}`.

    :param max_norm: if ``> 0`` and :math:`\|d\| >` ``max_norm``, :math:`d` (and the weights) are
        scaled to norm ``max_norm`` (official default 1.0: the official code clips the shared
        parameters' gradient with ``clip_grad_norm_``; TorchJD rescales the weights like us).
        ``0`` disables it.
    :param update_weights_every: solve every this many calls and reuse the previous weights in
        between (official default 1).
    :param max_iter: Newton iterations per solve (``>= 1``).
    :param tol: stopping tolerance on :math:`\|G\alpha - 1/\alpha\|_\infty` (normalised Gramian).

    Deviations: no cvxpy. The official code runs at most ``optim_niter=20`` convex-concave
    (CCCP) subproblems with ECOS and may stop early (``||G alpha - 1/alpha|| < 1e-3``); we solve
    the same fixed point to ``tol`` with damped Newton on the convex potential above, warm-started
    from the previous solution (as the official code). If the gradients are Pareto-stationary the
    fixed point does not exist and ``alpha`` grows along the stationary combination until
    ``max_iter`` (or until the Newton system becomes singular); ``max_norm`` then bounds the
    output (the direction is then ~0, the weights large but finite). A zero Jacobian gives zero
    weights.

    State (``state_dict``): the call counter and the last weights (the reused ones, and the warm
    start).
    """

    def __init__(
        self,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int = 100,
        tol: float = 1e-10,
    ):
        check_number("max_norm", max_norm, low=0.0)
        check_number("update_weights_every", update_weights_every, low=1, integer=True)
        check_number("max_iter", max_iter, low=1, integer=True)
        check_number("tol", tol, low=0.0, low_open=True)
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.max_iter = max_iter
        self.tol = tol
        self.step = 0
        self.alpha: Tensor | None = None  # raw-Gramian solution, float64, before max_norm

    def _arguments(self) -> dict[str, Any]:
        return {
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "max_iter": self.max_iter,
            "tol": self.tol,
        }

    def reset(self) -> None:
        """Forget the call counter and the previous weights."""
        self.step = 0
        self.alpha = None

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        gram = (matrix @ matrix.T).to(torch.float64)
        reuse = (
            self.step % self.update_weights_every != 0
            and self.alpha is not None
            and self.alpha.shape == (m,)
        )
        self.step += 1
        if not reuse:
            scale = torch.linalg.matrix_norm(gram)  # Frobenius norm, as the official code
            if scale <= 0:
                self.alpha = torch.zeros(m, dtype=torch.float64, device=gram.device)
            else:
                start = None
                if (
                    self.alpha is not None
                    and self.alpha.shape == (m,)
                    and bool((self.alpha > 0).all())
                ):
                    start = self.alpha.to(gram.device) * scale.sqrt()
                normalised = nash_bargaining_weights(gram / scale, start, self.max_iter, self.tol)
                self.alpha = normalised / scale.sqrt()
        alpha = self.alpha.to(gram.device)
        if self.max_norm > 0:
            norm = (alpha @ gram @ alpha).clamp_min(0.0).sqrt()
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha.to(matrix.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "alpha": None if self.alpha is None else self.alpha.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "step" not in state_dict or "alpha" not in state_dict:
            raise ValueError("NashMTL state_dict needs 'step' and 'alpha' entries")
        self.step = int(state_dict["step"])
        alpha = state_dict["alpha"]
        self.alpha = None if alpha is None else alpha.to(torch.float64).clone()
