"""Adagrad.

Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization", JMLR 12, 2011.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_nonnegative, check_positive
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.transforms.basic import add_l2, scale_by_lr


class ScaleByAdagrad(GroupTransform):
    name = "adagrad"
    nonnegative_state = frozenset({"sum"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "lr_decay")
        check_nonnegative(hp, "initial_accumulator_value")
        check_positive(hp, "eps")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        value = hp["initial_accumulator_value"]
        return {"sum": [torch.full_like(p, value) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        sums = state["sum"]
        torch._foreach_addcmul_(sums, updates, updates, 1.0)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, hp["eps"])
        out = torch._foreach_div(updates, std)
        decay = hp["lr_decay"]
        if decay != 0:
            torch._foreach_div_(out, [1.0 + (t - 1) * decay for t in steps])
        return out


@register(
    paper="Adaptive Subgradient Methods for Online Learning and Stochastic Optimization",
    year=2011,
    url="https://jmlr.org/papers/v12/duchi11a.html",
    state_floats=1,
)
class Adagrad(GradkitOptimizer):
    r"""Adagrad (Duchi et al., 2011), diagonal version, with torch.optim.Adagrad's semantics.

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1},\quad s_t = s_{t-1} + g_t^2,\quad
        \theta_t = \theta_{t-1} - \frac{\eta}{1 + (t-1)\,\delta}\,\frac{g_t}{\sqrt{s_t}+\epsilon}

    Defaults as torch: ``lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
    eps=1e-10``. State: ``sum`` (starts at ``initial_accumulator_value``).
    ``foreach`` is accepted and has no effect; ``fused``/``differentiable`` raise when set.
    Without extra ``transforms`` the step runs as one native pass over memory (``gk_adagrad``).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags("Adagrad", fused=fused, differentiable=differentiable)
        core = [
            add_l2(weight_decay),
            ScaleByAdagrad(
                lr_decay=lr_decay, initial_accumulator_value=initial_accumulator_value, eps=eps
            ),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
        )  # fmt: skip

    def native_spec(self, hp):
        args = (float(hp["lr"]), hp["lr_decay"], hp["weight_decay"], hp["eps"], hp["maximize"])
        return NativeSpec("adagrad", ("adagrad.sum",), tuple(float(a) for a in args))
