"""Bloop: gradient surgery against an EMA of the main gradient.

Hsieh, Thornton, Ndiaye, Klein, Cuturi & Ablin, "Careful with that Scalpel: Improving Gradient
Surgery with an EMA", ICML 2024, arXiv:2402.02998. Official code (JAX/optax):
https://github.com/apple/ml-bloop (``init_bloop(key, params, ema=0.1, lbda=0.1, init="zeros")``,
``bloop_direction(grad_main, grad_aux, state)``); only its README was consulted here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from gradkit.multitask._base import Aggregator, check_number


class Bloop(Aggregator):
    r"""Main-task gradient plus the auxiliary gradient projected orthogonally to an EMA of the former.

    ``J`` has the main-task gradient as row 0 and auxiliary gradients as rows ``1..m-1`` (summed into
    one :math:`g_{aux}`, the paper's single auxiliary loss being their sum). With
    :math:`\pi(a; b) = a - \frac{\langle a, b\rangle}{\|b\|^2} b` (and :math:`\pi(a; 0) = a`):

    .. math::
        d_t = g_{main} + \lambda\, \pi(g_{aux};\ \bar g_{t-1}),\qquad
        \bar g_t = (1-\rho)\,\bar g_{t-1} + \rho\, g_{main},\quad \bar g_0 = 0.

    The EMA is updated after the direction is computed (the paper updates it after the parameter
    step, which is equivalent since :math:`\bar g` only sees :math:`g_{main}`).

    :param lbda: weight :math:`\lambda \ge 0` of the auxiliary loss (default ``0.1``, README).
    :param ema: EMA rate :math:`\rho \in (0, 1]` (default ``0.1``, README); ``1`` uses the current
        mini-batch gradient (the biased "plain projection" the paper warns against).

    Choices: EMA initialised at zero (official ``init="zeros"``), so the first step is
    :math:`g_{main} + \lambda g_{aux}`. More than one auxiliary row is summed before the projection;
    the paper's multi-level Gram-Schmidt variant is not implemented.

    State (``state_dict``): ``ema`` (:math:`\bar g`, shape ``[n]``) and ``step``.
    """

    def __init__(self, lbda: float = 0.1, ema: float = 0.1):
        check_number("lbda", lbda, low=0.0)
        check_number("ema", ema, low=0.0, high=1.0, low_open=True)
        self.lbda = lbda
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.ema_grad: Tensor | None = None

    def _arguments(self) -> dict[str, Any]:
        return {"lbda": self.lbda, "ema": self.ema}

    def aggregate(self, matrix: Tensor) -> Tensor:
        if matrix.shape[0] < 2:
            raise ValueError(
                f"Bloop needs a main and at least one auxiliary gradient, got {matrix.shape[0]} row(s)"
            )
        main = matrix[0]
        aux = matrix[1:].sum(0)
        if self.ema_grad is None:
            self.ema_grad = main.new_zeros(main.shape)
        elif self.ema_grad.shape != main.shape:
            raise ValueError(
                f"Bloop state has {self.ema_grad.numel()} coordinates, got {main.numel()}; "
                "call reset() to start over"
            )
        ref = self.ema_grad
        sq = ref @ ref
        if sq > 0:
            aux = aux - (aux @ ref) / sq * ref
        out = main + self.lbda * aux
        self.ema_grad.mul_(1.0 - self.ema).add_(main, alpha=self.ema)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.ema_grad is None:
            return {"step": 0}
        return {"step": self.step, "ema": self.ema_grad.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "step" not in state_dict:
            raise ValueError("Bloop state_dict has no 'step' entry")
        self.reset()
        self.step = int(state_dict["step"])
        if "ema" in state_dict:
            self.ema_grad = state_dict["ema"].clone()
