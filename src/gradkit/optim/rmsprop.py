"""RMSprop.

Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine Learning, 2012;
the centered variant from Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_bool, check_positive, check_unit_interval
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.optim.signum import state_present
from gradkit.transforms.basic import add_l2, scale_by_lr, trace


class ScaleByRMS(GroupTransform):
    name = "rms"
    nonnegative_state = frozenset({"square_avg"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "alpha", closed_right=True)
        check_positive(hp, "eps")
        check_bool(hp, "centered")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {"square_avg": [torch.zeros_like(p) for p in params]}
        if hp["centered"]:
            state["grad_avg"] = [torch.zeros_like(p) for p in params]
        return state

    def update_group(self, updates, state, params, hp, steps, grads):
        alpha = hp["alpha"]
        square_avg = state["square_avg"]
        torch._foreach_mul_(square_avg, alpha)
        torch._foreach_addcmul_(square_avg, updates, updates, 1.0 - alpha)
        if hp["centered"]:
            grad_avg = state["grad_avg"]
            torch._foreach_lerp_(grad_avg, updates, 1.0 - alpha)
            avg = torch._foreach_addcmul(square_avg, grad_avg, grad_avg, -1.0)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avg)
        torch._foreach_add_(avg, hp["eps"])
        return torch._foreach_div(updates, avg)


@register(
    paper="Lecture 6.5 - RMSProp: divide the gradient by a running average of its recent magnitude",
    year=2012,
    url="https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf",
    state_floats=1,
)
class RMSprop(GradkitOptimizer):
    r"""RMSprop (Tieleman & Hinton, 2012) with torch.optim.RMSprop's exact semantics.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\quad
        d_t = \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered) or } \sqrt{v_t}+\epsilon,

        b_t = \mu b_{t-1} + g_t / d_t,\quad \theta_t = \theta_{t-1} - \eta\, b_t

    with :math:`\bar g_t = \alpha\bar g_{t-1} + (1-\alpha) g_t` (Graves, 2013) and coupled L2
    weight decay on :math:`g_t`. Defaults as torch: ``lr=1e-2, alpha=0.99, eps=1e-8,
    weight_decay=0, momentum=0, centered=False``. :math:`\epsilon` sits outside the square root
    as in torch (TensorFlow and Optax put it inside; the two differ for small :math:`v`).
    ``foreach`` is accepted and has no effect. Without extra ``transforms`` and with
    ``centered=False`` the step runs as one native pass over memory (``gk_rmsprop``); the centered
    variant runs torch's ops, which reproduce torch.optim.RMSprop's float32 rounding exactly.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags(
            "RMSprop", fused=None, capturable=capturable, differentiable=differentiable
        )
        core = [
            add_l2(weight_decay),
            ScaleByRMS(alpha=alpha, eps=eps, centered=centered),
            trace(momentum),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
            momentum=momentum, centered=centered,
        )  # fmt: skip

    def native_spec(self, hp):
        if hp.get("dampening", 0.0) != 0 or hp.get("nesterov", False):
            return None  # not RMSprop options; the group was edited: readable path
        if hp["centered"]:
            # The kernel supports it, but v - gbar^2 cancels, and torch's float32 sqrt is not
            # correctly rounded on CPU (1 ulp off for ~1% of inputs) while C's is: over 100 steps
            # the two drift apart by ~1e-5 relative, so the readable path (torch's ops, bit-equal
            # to torch.optim.RMSprop) keeps the tested parity with torch.
            return None
        momentum = float(hp["momentum"])
        keys = ("rms.square_avg",)
        keys += ("rms.grad_avg",) if hp["centered"] else ()
        keys += ("trace.momentum_buffer",) if momentum != 0 else ()
        if not state_present(self, hp, keys[1:]):
            return None
        args = (float(hp["lr"]), hp["alpha"], hp["eps"], hp["weight_decay"], momentum,
                hp["centered"], hp["maximize"])  # fmt: skip
        return NativeSpec("rmsprop", keys, tuple(float(a) for a in args))
