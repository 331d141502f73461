"""diffGrad: Adam whose step is damped where the gradient has stopped changing.

Dubey, Chakraborty, Roy, Mukherjee, Singh & Chaudhuri, "diffGrad: An Optimization Method for
Convolutional Neural Networks", IEEE TNNLS 31(11), 2020, arXiv:1909.11015.
Official code: https://github.com/shivram1987/diffGrad (``diffGrad_v2.py``, the fixed version).
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
from gradkit.transforms.basic import add_l2, scale_by_lr


def friction(previous: list[Tensor], current: list[Tensor]) -> list[Tensor]:
    r"""diffGrad's friction coefficient :math:`\xi = \sigma(|g_{t-1} - g_t|)`, in [0.5, 1)."""
    xi = torch._foreach_sub(previous, current)
    torch._foreach_abs_(xi)
    torch._foreach_sigmoid_(xi)
    return xi


class ScaleByDiffGrad(GroupTransform):
    name = "diffgrad"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_eps_placement(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return zeros_state(params, "exp_avg", "exp_avg_sq", "previous_grad")

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        previous = state["previous_grad"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        xi = friction(previous, updates)
        # A copy, never a reference to the incoming gradient: the first official release stored
        # ``p.grad`` itself, which in-place zero_grad() overwrote, freezing xi at 0.5.
        torch._foreach_copy_(previous, updates)
        denom = denominator(exp_avg_sq, b2, steps, hp["eps"], hp["eps_placement"])
        out = torch._foreach_mul(exp_avg, xi)
        torch._foreach_div_(out, bias_corrections(b1, steps))
        torch._foreach_div_(out, denom)
        return out


def scale_by_diffgrad(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eps_placement: str = "corrected"
) -> Transform:
    r"""diffGrad's friction-damped Adam direction (no learning rate, no decay).

    .. math::
        \xi_t = \sigma\big(|g_{t-1} - g_t|\big),\qquad
        u_t = \xi_t\,\frac{m_t/(1-\beta_1^t)}{d_t}

    with Adam's moments :math:`m_t, v_t`, :math:`g_0 = 0`, and :math:`d_t` the denominator under
    ``eps_placement`` (see :mod:`gradkit.optim._eps_placement`).
    State: ``exp_avg``, ``exp_avg_sq``, ``previous_grad``.
    """
    return ScaleByDiffGrad(betas=betas, eps=eps, eps_placement=eps_placement)


@register(
    paper="diffGrad: An Optimization Method for Convolutional Neural Networks",
    year=2020,
    url="https://arxiv.org/abs/1909.11015",
    state_floats=3,
)
class DiffGrad(GradkitOptimizer):
    r"""diffGrad (Dubey et al., 2020): Adam scaled by a per-coordinate "friction" coefficient.

    .. math::
        g_t &\leftarrow g_t + \lambda\theta_{t-1}\quad(\text{coupled L2, if } \lambda > 0)\\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        \xi_t &= \frac{1}{1 + e^{-|g_{t-1} - g_t|}}\quad(\text{elementwise, } g_0 = 0)\\
        \theta_t &= \theta_{t-1} - \eta\,\xi_t\,\frac{m_t/(1-\beta_1^t)}
            {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    The friction coefficient lies in [0.5, 1): close to 0.5 where the gradient barely changes
    (a flat region or near an optimum, so the step shrinks) and close to 1 where it changes fast.
    It scales the momentum in the step only; the stored :math:`m_t` is the plain EMA.

    Defaults (paper and official code): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0``. State: 3 parameter-sized tensors.

    Official code and our choices:

    * **Frozen friction in the first release.** ``diffGrad.py`` stored ``previous_grad = grad``,
      a reference to ``p.grad``; with in-place ``zero_grad()`` (PyTorch 1.x's default) the
      "previous" gradient was the current one at the next step, so :math:`\xi \equiv 0.5` after
      step 1 and the method was Adam at half the learning rate (issue shivram1987/diffGrad#2).
      ``diffGrad_v2.py`` clones it; we follow v2: the previous gradient is copied into
      optimizer state.
    * **eps placement.** The paper adds :math:`\epsilon` to :math:`\sqrt{\hat v_t}` (as above,
      ``eps_placement="corrected"``, the default). The official code adds it to the raw
      :math:`\sqrt{v_t}` and steps :math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)`;
      ``eps_placement="uncorrected"`` reproduces that.
    * **Weight decay** is not in the paper. As in the official code it is coupled L2 added to the
      gradient *before* the moments, and the stored previous gradient is that regularized
      gradient :math:`g_t + \lambda\theta_{t-1}` (so :math:`\xi` sees the decay term too). Unlike
      the official code we never modify ``p.grad``.
    * :math:`g_0 = 0` (zero-initialized state, as official), so :math:`\xi_1 = \sigma(|g_1|)`.

    Chain: ``maximize -> add_l2 -> scale_by_diffgrad -> scale_by_lr``.

    Example:
        >>> import torch
        >>> from gradkit.optim.diffgrad import DiffGrad
        >>> w = torch.ones(3, requires_grad=True)
        >>> opt = DiffGrad([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -2.0, 0.0])
        >>> _ = opt.step()
        >>> [round(x, 4) for x in w.tolist()]  # 1 - 0.1 * sigmoid(|g|) * sign(g)
        [0.9269, 1.0881, 1.0]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_placement: str = "corrected",
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            add_l2(weight_decay),
            scale_by_diffgrad(betas, eps, eps_placement),
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
        keys = ("diffgrad.exp_avg", "diffgrad.exp_avg_sq", "diffgrad.previous_grad")
        return NativeSpec("diffgrad", keys, tuple(float(a) for a in args))
