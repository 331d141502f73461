"""NAdam: Adam with Nesterov momentum and a momentum-decay schedule.

Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import GroupTransform, State, Transform, when, zeros_state
from gradkit.core.validation import check_betas, check_nonnegative, check_positive
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.optim.adam import bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, add_l2, scale_by_lr


def momentum_schedule(beta1: float, momentum_decay: float, step: int) -> float:
    r""":math:`\mu_t = \beta_1 (1 - \tfrac12\, 0.96^{t\,\psi})` (Dozat's schedule, psi = momentum_decay)."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


class ScaleByNAdam(GroupTransform):
    name = "nadam"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_nonnegative(hp, "momentum_decay")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return {
            **zeros_state(params, "exp_avg", "exp_avg_sq"),
            # a float64 scalar: the running product of mu_t, kept exact for the references
            "mu_product": [torch.ones((), dtype=torch.float64) for _ in params],
        }

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        psi, eps = hp["momentum_decay"], hp["eps"]
        exp_avg, exp_avg_sq, mu_product = state["exp_avg"], state["exp_avg_sq"], state["mu_product"]
        mus = [momentum_schedule(b1, psi, t) for t in steps]
        mus_next = [momentum_schedule(b1, psi, t + 1) for t in steps]
        torch._foreach_mul_(mu_product, mus)
        prods = [float(p) for p in mu_product]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        denom = torch._foreach_div(exp_avg_sq, bias_corrections(b2, steps))
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        grad_coef = [(1.0 - mu) / (1.0 - prod) for mu, prod in zip(mus, prods, strict=True)]
        avg_coef = [mn / (1.0 - prod * mn) for mn, prod in zip(mus_next, prods, strict=True)]
        out = torch._foreach_mul(updates, grad_coef)
        torch._foreach_add_(out, torch._foreach_mul(exp_avg, avg_coef))
        torch._foreach_div_(out, denom)
        return out


@register(
    paper="Incorporating Nesterov Momentum into Adam",
    year=2016,
    url="https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ",
    state_floats=2,
)
class NAdam(GradkitOptimizer):
    r"""NAdam (Dozat, 2016) with torch.optim.NAdam's exact semantics.

    .. math::
        \mu_t = \beta_1\big(1-\tfrac12 0.96^{t\psi}\big),\quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

        \theta_t = \theta_{t-1} - \eta\,\frac{\frac{1-\mu_t}{1-\prod_{i\le t}\mu_i}\,g_t
        + \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i}\,m_t}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    Defaults as torch: ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    momentum_decay=4e-3``; ``decoupled_weight_decay=True`` gives NAdamW. Note the momentum
    coefficient uses :math:`\beta_1` (the paper's :math:`\mu`) for the EMA of :math:`m`, as torch
    and Keras do. The running product of :math:`\mu` is kept as a float64 scalar per parameter
    (torch keeps float32; the difference is below 1e-7 relative).
    ``foreach`` is accepted and has no effect; ``capturable``/``differentiable`` raise when set.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
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
        torch_only_flags("NAdam", fused=None, capturable=capturable, differentiable=differentiable)
        flag, d = "decoupled_weight_decay", decoupled_weight_decay
        core = [
            when(flag, add_l2(weight_decay), value=False, default=d),
            ScaleByNAdam(betas=betas, eps=eps, momentum_decay=momentum_decay),
            when(flag, add_decayed_weights(weight_decay), value=True, default=d),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip

    def native_spec(self, hp):
        wd, decoupled = float(hp["weight_decay"]), bool(hp["decoupled_weight_decay"])
        b1, b2 = hp["betas"]
        args = (hp["lr"], b1, b2, hp["eps"], wd if decoupled else 0.0,
                0.0 if decoupled else wd, hp["maximize"], hp["momentum_decay"])  # fmt: skip
        keys = ("nadam.exp_avg", "nadam.exp_avg_sq")
        return NativeSpec("nadam", keys, tuple(float(a) for a in args))

    def _run_native(self, spec, lists, steps, seg):
        # the kernel updates mu_product, a float64 0-d tensor whatever the parameter dtype (so it
        # is not one of the same-dtype lists _fast_step checks); a checkpoint loaded another way
        # may hold it in another dtype, so such a tensor goes through a float64 copy
        products = [self.state[p]["nadam.mu_product"] for p in self._native_params]
        exact = [t.to("cpu", torch.float64).contiguous() for t in products]
        _native.kernel(spec.kernel).run([*lists, exact], steps, spec.hp)
        for t, e in zip(products, exact, strict=True):
            if t is not e:
                t.copy_(e)
