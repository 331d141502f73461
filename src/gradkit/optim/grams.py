"""Grams: the direction of the current gradient with the magnitude of Adam's step.

Cao, Li & Song, "Grams: Gradient Descent with Adaptive Momentum Scaling", arXiv:2412.17107, 2024
(ICLR 2025 SCOPE workshop). Official code: https://github.com/Gunale0926/Grams (``grams.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform, zeros_state
from gradkit.core.validation import check_betas, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim._eps_placement import check_eps_placement, denominator
from gradkit.optim.adam import bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr


class ScaleByGrams(GroupTransform):
    name = "grams"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_eps_placement(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return zeros_state(params, "exp_avg", "exp_avg_sq")

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        denom = denominator(exp_avg_sq, b2, steps, hp["eps"], hp["eps_placement"])
        out = torch._foreach_abs(exp_avg)
        torch._foreach_div_(out, bias_corrections(b1, steps))
        torch._foreach_div_(out, denom)
        torch._foreach_mul_(out, torch._foreach_sign(updates))
        return out


def scale_by_grams(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, eps_placement: str = "corrected"
) -> Transform:
    r"""Grams' direction: :math:`u_t = \operatorname{sign}(g_t)\odot|\hat m_t| / d_t`.

    :math:`\hat m_t` is Adam's bias-corrected momentum and :math:`d_t` its denominator under
    ``eps_placement`` (see :mod:`gradkit.optim._eps_placement`). State: ``exp_avg``,
    ``exp_avg_sq``.
    """
    return ScaleByGrams(betas=betas, eps=eps, eps_placement=eps_placement)


@register(
    paper="Grams: Gradient Descent with Adaptive Momentum Scaling",
    year=2024,
    url="https://arxiv.org/abs/2412.17107",
    state_floats=2,
)
class Grams(GradkitOptimizer):
    r"""Grams (Cao, Li & Song, 2024): Adam's step magnitude in the current gradient's direction.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        u_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},\qquad
        \hat u_t = \operatorname{sign}(g_t)\odot|u_t|\\
        \theta_t &= \theta_{t-1} - \eta\,(\hat u_t + \lambda\theta_{t-1})

    Momentum only sets the per-coordinate step size; the direction is that of the current
    gradient, so every coordinate moves downhill for the current batch. Coordinates with a zero
    gradient do not move (:math:`\operatorname{sign}(0) = 0`) except for weight decay.

    Defaults (official code): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0``. State:
    2 parameter-sized tensors. Weight decay is decoupled, :math:`\eta\lambda\theta_{t-1}`, as in the
    paper and the official code (which shrinks the weights before the moment update; the update
    does not depend on them, so that is the same step).

    Official code and our choices:

    * **eps placement.** The paper adds :math:`\epsilon` to :math:`\sqrt{\hat v_t}`
      (``eps_placement="corrected"``, the default). The official code adds it to the raw
      :math:`\sqrt{v_t}` and steps :math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)`;
      ``eps_placement="uncorrected"`` reproduces that. The two differ noticeably in the first
      steps at the default ``eps=1e-6`` when gradients are small.
    * The official code overwrites ``p.grad`` with :math:`\operatorname{sign}(g)|m|`; gradkit never
      modifies ``p.grad``.
    * The official ``correct_bias=False`` (no bias correction) is not offered.

    Chain: ``maximize -> scale_by_grams -> add_decayed_weights -> scale_by_lr``.

    Example:
        >>> import torch
        >>> from gradkit.optim.grams import Grams
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = Grams([w], lr=0.1)
        >>> for g in ([1.0, 1.0, 1.0], [-0.5, 0.0, 1.0]):  # momentum stays positive
        ...     w.grad = torch.tensor(g)
        ...     _ = opt.step()
        >>> [round(x, 4) for x in w.tolist()]  # coordinate 0 moves up (Adam: down to -0.1266)
        [-0.0734, -0.1, -0.2]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        eps_placement: str = "corrected",
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            scale_by_grams(betas, eps, eps_placement),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, eps_placement=eps_placement,
        )  # fmt: skip

    def native_spec(self, hp):
        b1, b2 = hp["betas"]
        args = (hp["lr"], b1, b2, hp["eps"], hp["weight_decay"], hp["maximize"],
                hp["eps_placement"] == "uncorrected")  # fmt: skip
        return NativeSpec(
            "grams", ("grams.exp_avg", "grams.exp_avg_sq"), tuple(float(a) for a in args)
        )
