"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

Robbins & Monro, "A Stochastic Approximation Method", 1951; momentum as in Polyak (1964) and
Sutskever et al., "On the importance of initialization and momentum in deep learning", ICML 2013.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradkit.core.transform import Transform
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.optim.signum import state_present
from gradkit.transforms.basic import add_l2, scale_by_lr, trace


@register(
    paper="A Stochastic Approximation Method",
    year=1951,
    url="https://doi.org/10.1214/aoms/1177729586",
    state_floats=0,
)
class SGD(GradkitOptimizer):
    r"""SGD with torch.optim.SGD's exact semantics.

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1},\quad
        b_1 = g_1,\ b_t = \mu b_{t-1} + (1-\tau) g_t,\quad
        \theta_t = \theta_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Defaults as torch 2.13: ``lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False``.
    Momentum follows torch (and Sutskever et al.'s reformulation), not the "lr inside the buffer"
    form some papers write: the two agree for a constant learning rate. The first step copies the
    gradient into the buffer without dampening, exactly as torch does. With ``momentum=0`` no state
    is kept.

    Chain: ``maximize -> add_l2 -> trace -> scale_by_lr``. ``foreach`` is accepted and has no
    effect (always multi-tensor); ``fused`` and ``differentiable`` raise when set. Without extra
    ``transforms`` the step runs as one native pass over memory (:mod:`gradkit._native`,
    ``gk_sgd``): the memory traffic of torch's fused SGD.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags("SGD", fused=fused, differentiable=differentiable)
        core = [add_l2(weight_decay), trace(momentum, dampening, nesterov), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, nesterov=nesterov,
        )  # fmt: skip

    def native_spec(self, hp):
        momentum = float(hp["momentum"])
        keys = ("trace.momentum_buffer",) if momentum != 0 else ()
        if not state_present(self, hp, keys):
            return None
        args = (float(hp["lr"]), momentum, hp["dampening"], hp["weight_decay"], hp["nesterov"],
                hp["maximize"])  # fmt: skip
        return NativeSpec("sgd", keys, tuple(float(a) for a in args))
