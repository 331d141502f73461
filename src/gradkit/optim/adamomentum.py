"""AdaMomentum (AdaM3): Adam whose second moment tracks the momentum instead of the gradient.

Wang, Kang, Sun, Zhang, Zheng, Yang, Ma, Zou & Liu, "Rethinking Adam: A Twofold Exponential
Moving Average Approach", arXiv:2106.11514, 2021; published as "Momentum is All You Need for
Data-Driven Adaptive Optimization", ICDM 2023 (AdaM3).
Official code: https://github.com/wyzjack/AdaM3 (``optimizers/AdaM3.py``; Algorithm 1 in
``images/AdaM3.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform, when
from gradkit.core.validation import check_betas, check_bool, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import bias_corrections
from gradkit.transforms.basic import add_decayed_weights, add_l2, scale_by_lr


class ScaleByAdaMomentum(GroupTransform):
    name = "adamomentum"
    nonnegative_state = frozenset({"exp_avg_var", "max_exp_avg_var"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_bool(hp, "amsgrad")
        if "decoupled_weight_decay" in hp:  # the optimizer's flag (absent when used standalone)
            check_bool(hp, "decoupled_weight_decay")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_var": [torch.zeros_like(p) for p in params],
        }
        if hp["amsgrad"]:
            state["max_exp_avg_var"] = [torch.zeros_like(p) for p in params]
        return state

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_var = state["exp_avg"], state["exp_avg_var"]
        torch._foreach_lerp_(exp_avg, updates, 1.0 - b1)
        torch._foreach_mul_(exp_avg_var, b2)
        torch._foreach_addcmul_(exp_avg_var, exp_avg, exp_avg, 1.0 - b2)
        # eps goes into the stored v (it accumulates), as in Algorithm 1 and the official code
        torch._foreach_add_(exp_avg_var, hp["eps"])
        second = exp_avg_var
        if hp["amsgrad"]:
            second = state["max_exp_avg_var"]
            torch._foreach_maximum_(second, exp_avg_var)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, [math.sqrt(bc) for bc in bias_corrections(b2, steps)])
        out = torch._foreach_div(exp_avg, denom)
        torch._foreach_div_(out, bias_corrections(b1, steps))
        return out


def scale_by_adamomentum(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16, amsgrad: bool = False
) -> Transform:
    r"""AdaMomentum's direction (no learning rate, no decay).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) m_t^2 + \epsilon,\quad
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{\hat v_t/(1-\beta_2^t)}}

    with :math:`\hat v_t = v_t` or, with ``amsgrad``, :math:`\max(\hat v_{t-1}, v_t)`.
    State: ``exp_avg``, ``exp_avg_var`` (and ``max_exp_avg_var``).
    """
    return ScaleByAdaMomentum(betas=betas, eps=eps, amsgrad=amsgrad)


@register(
    paper="Rethinking Adam: A Twofold Exponential Moving Average Approach",
    year=2021,
    url="https://arxiv.org/abs/2106.11514",
    state_floats=2,
)
class AdaMomentum(GradkitOptimizer):
    r"""AdaMomentum / AdaM3 (Wang et al., 2021): the second moment is an EMA of the *momentum*.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t\\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) m_t^2 + \epsilon\\
        \theta_t &= \theta_{t-1} - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}}
            \;[-\,\eta\lambda\theta_{t-1}]

    :math:`v_t` uses the current step's momentum :math:`m_t`. :math:`\epsilon` sits **inside**
    the recursion for :math:`v_t`, so the stored :math:`v_t` accumulates
    :math:`\epsilon(1-\beta_2^t)/(1-\beta_2)`, and there is no :math:`\epsilon` in the
    denominator: this is Algorithm 1 of the paper and exactly what the official code does (its
    in-place ``exp_avg_var.add_(eps)``). Hence the tiny default ``eps=1e-16``; do not move it
    outside the root, that changes the method.

    Defaults (official code): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0,
    amsgrad=False, decoupled_weight_decay=True``. State: 2 parameter-sized tensors (3 with
    ``amsgrad``, which keeps the running maximum of :math:`v_t`, eps included, as official).

    Official code and our choices: the paper has no weight decay; the official code's default
    (``weight_decouple=True``) is AdamW-style decoupled decay :math:`\eta\lambda\theta_{t-1}`
    (applied before the moments there; the update does not depend on the weights, so the step is
    the same), and ``decoupled_weight_decay=False`` gives its coupled L2 path (added to the
    gradient, never in ``p.grad`` itself). Not offered: the official ``fixed_decay`` (decay not
    scaled by the learning rate) and ``rectify`` (a RAdam-style rectification inherited from
    AdaBelief's code, not part of the method); both default off in the official image/LSTM code.

    Chain: ``maximize -> [add_l2] -> scale_by_adamomentum -> [add_decayed_weights] ->
    scale_by_lr``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = True,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        flag, d = "decoupled_weight_decay", decoupled_weight_decay
        core = [
            when(flag, add_l2(weight_decay), value=False, default=d),
            scale_by_adamomentum(betas, eps, amsgrad),
            when(flag, add_decayed_weights(weight_decay), value=True, default=d),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip

    def native_spec(self, hp):
        wd, decoupled = float(hp["weight_decay"]), bool(hp["decoupled_weight_decay"])
        b1, b2 = hp["betas"]
        keys = ("adamomentum.exp_avg", "adamomentum.exp_avg_var")
        if hp["amsgrad"]:
            keys += ("adamomentum.max_exp_avg_var",)
        args = (hp["lr"], b1, b2, hp["eps"], wd if decoupled else 0.0,
                0.0 if decoupled else wd, hp["maximize"], hp["amsgrad"])  # fmt: skip
        return NativeSpec("adamomentum", keys, tuple(float(a) for a in args))
