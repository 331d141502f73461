r"""signSGD and Signum: step by the sign of the gradient or of its momentum.

Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for Non-Convex
Problems", ICML 2018, arXiv:1802.04434. Official code: https://github.com/jxbz/signSGD (the
authors' MXNet ``Signum`` / ``SignSGD`` optimizers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_unit_interval
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.cautious import cautious_if_flagged


def run_with_reductions(spec: NativeSpec, lists: list[list[Tensor]], steps: Tensor) -> None:
    """Run a native kernel that reduces each tensor first (a max, a norm, a count) into ``out``."""
    out = torch.zeros(len(lists[0]), _native.OUT_WIDTH, dtype=torch.float64)
    _native.kernel(spec.kernel).run(lists, steps, spec.hp, out)


def state_present(opt: GradkitOptimizer, hp: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether every parameter of the group that has state holds ``keys`` (state an option such
    as ``momentum`` adds is missing if the option was off when the state was created: the
    readable path then raises its clear error)."""
    if not keys:
        return True
    states = [s for p in hp.get("params", ()) if (s := opt.state.get(p))]
    return all(k in s for s in states for k in keys)


class ScaleBySign(GroupTransform):
    name = "sign"

    def update_group(self, updates, state, params, hp, steps, grads):
        return torch._foreach_sign(updates)


def scale_by_sign() -> Transform:
    r"""``u <- sign(u)`` elementwise (:math:`\operatorname{sign}(0) = 0`). No state.

    The last step of every sign method (signSGD, Signum, Lion): each coordinate moves by exactly
    the learning rate, whatever the gradient's scale.
    """
    return ScaleBySign()


class ScaleByEMA(GroupTransform):
    name = "signum"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "momentum")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        exp_avg = state["exp_avg"]
        torch._foreach_lerp_(exp_avg, updates, 1.0 - hp["momentum"])
        return exp_avg


def scale_by_ema(momentum: float = 0.9) -> Transform:
    r"""Signum's momentum, an EMA started at zero: :math:`m_t = \beta m_{t-1} + (1-\beta) u_t`.

    Not torch's SGD momentum (:func:`~gradkit.transforms.trace`), which copies the first gradient
    and so weighs it differently; under a sign the two give different steps. State: ``exp_avg``.
    """
    return ScaleByEMA(momentum=momentum)


_SIGN_DOC = """
    Weight decay is decoupled, :math:`\\theta \\leftarrow \\theta(1 - \\eta\\lambda)`, as the
    authors' MXNet ``Signum(wd_lh=...)``; it is not passed through the sign (coupled L2 would be,
    and is available by putting :func:`~gradkit.transforms.add_l2` in ``transforms``).
"""


@register(
    paper="signSGD: Compressed Optimisation for Non-Convex Problems",
    year=2018,
    url="https://arxiv.org/abs/1802.04434",
    state_floats=0,
)
class SignSGD(GradkitOptimizer):
    __doc__ = (
        r"""signSGD (Bernstein et al., 2018, Algorithm 1): step by the gradient's sign.

    .. math::
        \theta_t = \theta_{t-1} - \eta\,\big(\operatorname{sign}(g_t) + \lambda\theta_{t-1}\big)

    Defaults: ``lr=0.01`` (the authors' MXNet default), ``weight_decay=0``. No state.
    Chain: ``maximize -> scale_by_sign -> add_decayed_weights -> scale_by_lr`` (one native pass,
    ``gk_signsgd``, without extra ``transforms``).
    """
        + _SIGN_DOC
    )

    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [scale_by_sign(), add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, weight_decay=weight_decay,
        )  # fmt: skip

    def native_spec(self, hp):
        args = (float(hp["lr"]), hp["weight_decay"], hp["maximize"])
        return NativeSpec("signsgd", (), tuple(float(a) for a in args))


@register(
    paper="signSGD: Compressed Optimisation for Non-Convex Problems",
    year=2018,
    url="https://arxiv.org/abs/1802.04434",
    state_floats=1,
)
class Signum(GradkitOptimizer):
    __doc__ = (
        r"""Signum (Bernstein et al., 2018, Algorithm 2): signSGD on the momentum.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t,\quad m_0 = 0,\qquad
        \theta_t = \theta_{t-1} - \eta\,\big(\operatorname{sign}(m_t) + \lambda\theta_{t-1}\big)

    Defaults: ``lr=0.01, momentum=0.9`` (the authors' MXNet defaults), ``weight_decay=0``.
    ``momentum=0`` is signSGD (with a useless buffer; use :class:`SignSGD`). ``cautious=True``
    applies cautious masking (:func:`gradkit.transforms.cautious.cautious`; Liang et al., 2024)
    to :math:`\operatorname{sign}(m_t)`. State: 1 parameter-sized tensor.

    Chain: ``maximize -> scale_by_ema -> scale_by_sign -> [cautious] -> add_decayed_weights ->
    scale_by_lr`` (one native pass, ``gk_signum``, without extra ``transforms``; ``cautious`` adds
    a read-only counting pass).
    """
        + _SIGN_DOC
    )

    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        cautious: bool = False,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            scale_by_ema(momentum),
            scale_by_sign(),
            cautious_if_flagged(cautious),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, momentum=momentum, weight_decay=weight_decay, cautious=cautious,
        )  # fmt: skip

    def native_spec(self, hp):
        args = (float(hp["lr"]), hp["momentum"], hp["weight_decay"], hp["maximize"], hp["cautious"])
        return NativeSpec("signum", ("signum.exp_avg",), tuple(float(a) for a in args))

    def _run_native(self, spec, lists, steps, seg):
        run_with_reductions(spec, lists, steps)  # the cautious mask's kept counts
