"""Adam, AdamW and AMSGrad.

Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, arXiv:1412.6980.
Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101.
Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform, when, zeros_state
from gradkit.core.validation import check_betas, check_bool, check_positive
from gradkit.optim._base import (
    GradkitOptimizer,
    NativeSpec,
    Params,
    register,
    torch_only_flags,
)
from gradkit.transforms.basic import add_decayed_weights, add_l2, scale_by_lr


def bias_corrections(beta: float, steps: Sequence[int]) -> list[float]:
    """``1 - beta**t`` for each parameter's step ``t``."""
    return [1.0 - beta**t for t in steps]


def update_moments(
    exp_avg: list[Tensor], exp_avg_sq: list[Tensor], grads: list[Tensor], b1: float, b2: float
) -> None:
    """The two EMAs every Adam-family method shares, in torch's operation order."""
    torch._foreach_lerp_(exp_avg, grads, 1.0 - b1)
    torch._foreach_mul_(exp_avg_sq, b2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1.0 - b2)


def adam_denominator(
    exp_avg_sq: list[Tensor], b2: float, steps: Sequence[int], eps: float
) -> list[Tensor]:
    r""":math:`\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon` (a new list)."""
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, [math.sqrt(bc) for bc in bias_corrections(b2, steps)])
    torch._foreach_add_(denom, eps)
    return denom


class ScaleByAdam(GroupTransform):
    name = "adam"
    nonnegative_state = frozenset({"exp_avg_sq", "max_exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_bool(hp, "amsgrad")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return zeros_state(params, *names[: 3 if hp["amsgrad"] else 2])

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        second = exp_avg_sq
        if hp["amsgrad"]:
            second = state["max_exp_avg_sq"]
            torch._foreach_maximum_(second, exp_avg_sq)
        denom = adam_denominator(second, b2, steps, hp["eps"])
        out = torch._foreach_div(exp_avg, denom)
        torch._foreach_div_(out, bias_corrections(b1, steps))
        return out


def scale_by_adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False
) -> Transform:
    r"""Adam's preconditioned, bias-corrected momentum (no learning rate, no decay).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`\hat v_t = v_t` or, with ``amsgrad``, :math:`\hat v_t = \max(\hat v_{t-1}, v_t)`.
    State: ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``).
    """
    return ScaleByAdam(betas=betas, eps=eps, amsgrad=amsgrad)


_ADAM_DOC_COMMON = """
    Matches ``torch.optim.{name}`` argument for argument and numerically (tested to 1e-6 over 100
    float32 steps). ``foreach`` is accepted for drop-in use; gradkit always runs multi-tensor
    kernels. ``fused=True`` runs torch's fused Adam kernel on the same state (same keys, same
    checkpoints; it can't be combined with ``transforms``); the non-finite policy still applies.
    ``capturable`` and ``differentiable`` are accepted and rejected with a clear error when set.
    One deliberate difference: ``eps`` must be > 0 (torch accepts 0).

    gradkit extras: ``transforms=[...]`` runs extra gradient transforms (clipping, ...) before the
    update; ``nonfinite="skip" | "raise" | "apply"`` (see :class:`gradkit.ChainOptimizer`).
"""


class _FusedAdamMixin(GradkitOptimizer):
    """``fused=True``: the whole Adam/AdamW step in torch's fused kernel, on gradkit's state."""

    def _fast_step(self, params, work, grads, segments, state=None):
        rest = []
        for seg in segments:
            if not seg.hp.get("fused"):
                rest.append(seg)
                continue
            hp, sl = seg.hp, slice(seg.start, seg.stop)
            states = [self.state[p] for p in params[sl]]
            kernel = torch._fused_adamw_ if self._decoupled(hp) else torch._fused_adam_
            kernel(
                work[sl],
                grads[sl],
                [s["adam.exp_avg"] for s in states],
                [s["adam.exp_avg_sq"] for s in states],
                [s["adam.max_exp_avg_sq"] for s in states] if hp["amsgrad"] else [],
                [s["step"] for s in states],
                amsgrad=hp["amsgrad"],
                lr=float(hp["lr"]),
                beta1=hp["betas"][0],
                beta2=hp["betas"][1],
                weight_decay=hp["weight_decay"],
                eps=hp["eps"],
                maximize=hp["maximize"],
                grad_scale=None,
                found_inf=None,
            )
        return super()._fast_step(params, work, grads, rest, state) if rest else []

    def _decoupled(self, hp) -> bool:
        return bool(hp.get("decoupled_weight_decay", type(self) is AdamW))

    def native_spec(self, hp):
        keys = ("adam.exp_avg", "adam.exp_avg_sq")
        if hp["amsgrad"]:
            keys += ("adam.max_exp_avg_sq",)
        wd = float(hp["weight_decay"])
        decoupled = self._decoupled(hp)
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], wd if decoupled else 0.0,
                0.0 if decoupled else wd, hp["maximize"], hp["amsgrad"])  # fmt: skip
        return NativeSpec("adam", keys, tuple(float(a) for a in args))


def _check_fused(fused: bool | None, transforms: Sequence[Transform] | None) -> bool:
    if fused and transforms:
        raise ValueError(
            f"Invalid fused: {fused!r} with transforms={list(transforms)!r}; the fused kernel "
            "runs Adam alone, so pass either fused=True or extra transforms"
        )
    return bool(fused)


@register(
    paper="Adam: A Method for Stochastic Optimization",
    year=2015,
    url="https://arxiv.org/abs/1412.6980",
    state_floats=2,
)
class Adam(_FusedAdamMixin):
    __doc__ = r"""Adam (Kingma & Ba, 2015), with coupled L2 or decoupled weight decay and AMSGrad.

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1}\ (\text{coupled}),\quad
        \theta_t = \theta_{t-1} - \eta\,\frac{m_t/(1-\beta_1^t)}
        {\sqrt{\hat v_t}/\sqrt{1-\beta_2^t}+\epsilon} \;[-\,\eta\lambda\theta_{t-1}\ \text{decoupled}]

    Defaults (paper and torch): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0``.
    With ``decoupled_weight_decay=True`` this is AdamW. ``amsgrad`` (Reddi et al., 2018) uses the
    running maximum of :math:`v_t`. The paper puts :math:`\epsilon` on the bias-corrected
    :math:`\sqrt{\hat v}` as here; Optax does the same.
    """ + _ADAM_DOC_COMMON.format(name="Adam")

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags("Adam", fused=None, capturable=capturable, differentiable=differentiable)
        flag, d = "decoupled_weight_decay", decoupled_weight_decay
        core = [
            when(flag, add_l2(weight_decay), value=False, default=d),
            scale_by_adam(betas, eps, amsgrad),
            when(flag, add_decayed_weights(weight_decay), value=True, default=d),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, decoupled_weight_decay=decoupled_weight_decay,
            fused=_check_fused(fused, transforms),
        )  # fmt: skip


@register(
    paper="Decoupled Weight Decay Regularization",
    year=2019,
    url="https://arxiv.org/abs/1711.05101",
    state_floats=2,
)
class AdamW(_FusedAdamMixin):
    __doc__ = r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math::
        \theta_t = \theta_{t-1} - \eta\Big(\frac{m_t/(1-\beta_1^t)}
        {\sqrt{v_t}/\sqrt{1-\beta_2^t}+\epsilon} + \lambda\,\theta_{t-1}\Big)

    Defaults as torch: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2``. The decay is
    multiplied by the learning rate (torch's convention; the paper's schedule multiplier
    :math:`\eta_t` plays that role there), so schedulers scale both.

    Chain: ``maximize -> scale_by_adam -> add_decayed_weights -> scale_by_lr``.
    """ + _ADAM_DOC_COMMON.format(name="AdamW")

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        torch_only_flags("AdamW", fused=None, capturable=capturable, differentiable=differentiable)
        core = [
            scale_by_adam(betas, eps, amsgrad),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            foreach=foreach, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, fused=_check_fused(fused, transforms),
        )  # fmt: skip
