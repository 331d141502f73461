"""RAdam: Adam with a rectified adaptive learning rate.

Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020,
arXiv:1908.03265.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform, when, zeros_state
from gradkit.core.validation import check_betas, check_positive
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.optim.adam import bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, add_l2, scale_by_lr


def rectification(beta2: float, step: int) -> float | None:
    r"""RAdam's :math:`r_t`, or None while :math:`\rho_t \le 5` (variance not yet tractable)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / (1.0 - beta2**step)
    if rho_t <= 5.0:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


class ScaleByRAdam(GroupTransform):
    name = "radam"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return zeros_state(params, "exp_avg", "exp_avg_sq")

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        out = torch._foreach_div(exp_avg, bias_corrections(b1, steps))
        rects = [rectification(b2, t) for t in steps]
        adaptive = [i for i, r in enumerate(rects) if r is not None]
        if adaptive:
            denom = torch._foreach_sqrt([exp_avg_sq[i] for i in adaptive])
            torch._foreach_add_(denom, hp["eps"])
            scales = [rects[i] * math.sqrt(1.0 - b2 ** steps[i]) for i in adaptive]
            torch._foreach_div_(denom, scales)
            sub = [out[i] for i in adaptive]
            torch._foreach_div_(sub, denom)
        return out


@register(
    paper="On the Variance of the Adaptive Learning Rate and Beyond",
    year=2020,
    url="https://arxiv.org/abs/1908.03265",
    state_floats=2,
)
class RAdam(GradkitOptimizer):
    r"""RAdam (Liu et al., 2020) with torch.optim.RAdam's exact semantics.

    .. math::
        \rho_\infty = \tfrac{2}{1-\beta_2}-1,\quad
        \rho_t = \rho_\infty - \tfrac{2t\beta_2^t}{1-\beta_2^t},\quad
        \hat m_t = \tfrac{m_t}{1-\beta_1^t},

        \theta_t = \theta_{t-1} - \eta\,\hat m_t\cdot
        \begin{cases} r_t\,\frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon} & \rho_t > 5\\
        1 & \text{otherwise}\end{cases},\quad
        r_t = \sqrt{\tfrac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    Defaults as torch: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0``. The threshold
    is 5 as in torch and the authors' code (the paper's Algorithm 2 writes 4); :math:`\epsilon` is
    added to :math:`\sqrt{v_t}` before bias correction, as torch does.
    ``decoupled_weight_decay=True`` gives RAdamW. ``foreach`` is accepted and has no effect.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags("RAdam", fused=None, capturable=capturable, differentiable=differentiable)
        flag, d = "decoupled_weight_decay", decoupled_weight_decay
        core = [
            when(flag, add_l2(weight_decay), value=False, default=d),
            ScaleByRAdam(betas=betas, eps=eps),
            when(flag, add_decayed_weights(weight_decay), value=True, default=d),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip

    def native_spec(self, hp):
        wd, decoupled = float(hp["weight_decay"]), bool(hp["decoupled_weight_decay"])
        b1, b2 = hp["betas"]
        args = (hp["lr"], b1, b2, hp["eps"], wd if decoupled else 0.0,
                0.0 if decoupled else wd, hp["maximize"])  # fmt: skip
        keys = ("radam.exp_avg", "radam.exp_avg_sq")
        return NativeSpec("radam", keys, tuple(float(a) for a in args))
