"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of the gradients.

Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", arXiv:2409.03137,
2024. Official code: https://github.com/apple/ml-ademamix (``pytorch/ademamix.py``,
``optax/ademamix.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_betas, check_nonnegative, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr


def alpha_scheduler(step: int, alpha: float, warmup: float | None) -> float:
    r"""AdEMAMix's linear warm-up: :math:`\alpha(t) = \min(t\alpha/T_\alpha, \alpha)`.

    ``step`` is 1-based (the official PyTorch code's convention, so :math:`\alpha(1) = \alpha/T`);
    ``warmup=None`` means no warm-up (:math:`\alpha(t) = \alpha`).

    Example:
        >>> alpha_scheduler(1, 8.0, 4), alpha_scheduler(2, 8.0, 4), alpha_scheduler(9, 8.0, 4)
        (2.0, 4.0, 8.0)
    """
    if warmup is None:
        return alpha
    return min(step * alpha / warmup, alpha)


def _half_life(beta: float) -> float:
    """Steps for ``beta**n`` to reach 1/2; 0 for ``beta == 0``."""
    return 0.0 if beta == 0 else math.log(0.5) / math.log(beta)


def beta3_scheduler(step: int, beta_start: float, beta3: float, warmup: float | None) -> float:
    r"""AdEMAMix's warm-up of :math:`\beta_3`, linear in the half-life of the slow EMA.

    The paper's closed form (with :math:`\beta_{start} = \beta_1`, :math:`T = T_{\beta_3}`):

    .. math::
        \beta_3(t) = \min\Big(\exp\Big(\frac{\ln\beta_{start}\,\ln\beta_3}
        {(1 - t/T)\ln\beta_3 + (t/T)\ln\beta_{start}}\Big),\ \beta_3\Big),

    which is :math:`0.5^{1/h(t)}` with the half-life :math:`h = \ln 0.5/\ln\beta` interpolated
    linearly from :math:`h(\beta_{start})` to :math:`h(\beta_3)`; that is how it is computed here,
    so :math:`\beta_{start} = 0` (half-life 0) is exact. ``step`` is 1-based; ``warmup=None``
    means no warm-up. The official PyTorch code adds 1e-8 inside the logarithm and has no
    :math:`\min` (it matters only when :math:`\beta_{start} > \beta_3`); neither is done here.

    Example:
        >>> round(beta3_scheduler(5, 0.5, 0.5 ** (1 / 3), 10), 6)  # half-lives 1 -> 3, halfway 2
        0.707107
        >>> beta3_scheduler(10, 0.9, 0.9999, 10), beta3_scheduler(3, 0.9, 0.9999, None)
        (0.9999, 0.9999)
    """
    if warmup is None or step >= warmup:
        return beta3
    a = step / warmup
    h = (1.0 - a) * _half_life(beta_start) + a * _half_life(beta3)
    return min(0.5 ** (1.0 / h), beta3) if h > 0 else 0.0


def _check_warmup(hp: Mapping[str, Any], name: str) -> None:
    if hp[name] is not None:
        check_positive(hp, name)


class ScaleByAdEMAMix(GroupTransform):
    """See :class:`AdEMAMix`. State: ``exp_avg_fast`` (absent when ``beta1 == 0``),
    ``exp_avg_slow``, ``exp_avg_sq``."""

    name = "ademamix"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 3)
        check_nonnegative(hp, "alpha")
        check_positive(hp, "eps")
        _check_warmup(hp, "alpha_warmup")
        _check_warmup(hp, "beta3_warmup")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {
            "exp_avg_slow": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
        }
        if hp["betas"][0] != 0:  # beta1 == 0: the fast EMA is the gradient itself, no buffer
            state["exp_avg_fast"] = [torch.zeros_like(p) for p in params]
        return state

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2, b3 = hp["betas"]
        exp_avg_slow, exp_avg_sq = state["exp_avg_slow"], state["exp_avg_sq"]
        alphas = [alpha_scheduler(t, hp["alpha"], hp["alpha_warmup"]) for t in steps]
        beta3s = [beta3_scheduler(t, b1, b3, hp["beta3_warmup"]) for t in steps]
        if b1 != 0:
            fast = state.get("exp_avg_fast")
            if fast is None or any(f is None for f in fast):
                raise ValueError(
                    "beta1 was 0 when this optimizer's state was created, so there is no fast "
                    f"EMA buffer; it can't be switched on later (got betas={hp['betas']!r})"
                )
            update_moments(fast, exp_avg_sq, updates, b1, b2)
            fast = torch._foreach_div(fast, bias_corrections(b1, steps))
        else:
            torch._foreach_mul_(exp_avg_sq, b2)
            torch._foreach_addcmul_(exp_avg_sq, updates, updates, 1.0 - b2)
            fast = updates
        torch._foreach_lerp_(exp_avg_slow, updates, [1.0 - b for b in beta3s])
        out = torch._foreach_mul(exp_avg_slow, alphas)
        torch._foreach_add_(out, fast)
        torch._foreach_div_(out, adam_denominator(exp_avg_sq, b2, steps, hp["eps"]))
        return out


@register(
    paper="The AdEMAMix Optimizer: Better, Faster, Older",
    year=2024,
    url="https://arxiv.org/abs/2409.03137",
    state_floats=3,
)
class AdEMAMix(GradkitOptimizer):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024): Adam plus a slow, un-corrected EMA.

    .. math::
        m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t,\qquad
        m^{(2)}_t = \beta_3(t)\, m^{(2)}_{t-1} + (1-\beta_3(t))\, g_t,\qquad
        \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) g_t^2\\
        \theta_t &= \theta_{t-1} - \eta\Big(\frac{m^{(1)}_t/(1-\beta_1^t) + \alpha(t)\, m^{(2)}_t}
        {\sqrt{\nu_t/(1-\beta_2^t)} + \epsilon} + \lambda\,\theta_{t-1}\Big)

    The fast EMA :math:`m^{(1)}` is bias-corrected, the slow one :math:`m^{(2)}` is not (its
    warm-up plays that role). :math:`\alpha(t)` and :math:`\beta_3(t)` follow
    :func:`alpha_scheduler` and :func:`beta3_scheduler` over ``alpha_warmup`` and
    ``beta3_warmup`` steps (``None``: constant, the official default; the paper warms both up over
    the whole run for large :math:`\beta_3`). With ``beta1 == 0`` there is no fast buffer and
    :math:`m^{(1)}_t = g_t`.

    Defaults (official PyTorch code): ``lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0,
    beta3_warmup=None, alpha_warmup=None, eps=1e-8, weight_decay=0``. The official Optax version
    defaults to ``alpha=5.0`` and the README recommends ``alpha=8.0`` with both warm-ups equal to
    the number of training steps. State: 3 parameter-sized tensors (2 with ``beta1 == 0``).

    Official code and our choices:

    * The schedulers take the 1-based step (as the PyTorch code, so :math:`\alpha(1) = \alpha/T`);
      the Optax code evaluates them at the 0-based count, so its first step has :math:`\alpha = 0`.
    * :math:`\beta_3(t)` is computed exactly from the paper's formula (the PyTorch code adds 1e-8
      inside a logarithm and skips the :math:`\min`; see :func:`beta3_scheduler`).
    * :math:`\epsilon` is added to the bias-corrected root, as in the paper and both official codes.
    * The weight decay is decoupled and multiplied by the learning rate (official PyTorch code);
      it uses :math:`\theta_{t-1}`.

    Chain: ``maximize -> scale_by_ademamix -> add_decayed_weights -> scale_by_lr``.

    Example:
        >>> import torch
        >>> from gradkit.optim.ademamix import AdEMAMix
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = AdEMAMix([w], lr=0.1, alpha=8.0, alpha_warmup=100, beta3_warmup=100)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> _ = opt.step()  # 1 + alpha(1) (1 - beta3(1)) = 1 + 0.08 * 0.0091
        >>> [round(x, 5) for x in w.tolist()]
        [-0.10007, 0.10007]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ScaleByAdEMAMix(
                betas=betas,
                alpha=alpha,
                beta3_warmup=beta3_warmup,
                alpha_warmup=alpha_warmup,
                eps=eps,
            ),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, alpha=alpha, beta3_warmup=beta3_warmup,
            alpha_warmup=alpha_warmup, eps=eps, weight_decay=weight_decay,
        )  # fmt: skip

    def native_spec(self, hp):
        b1, b2, b3 = hp["betas"]
        keys = ("ademamix.exp_avg_slow", "ademamix.exp_avg_sq")
        if b1 != 0:
            keys += ("ademamix.exp_avg_fast",)
            if any(keys[0] in self.state[p] and keys[2] not in self.state[p] for p in hp["params"]):
                return None  # state made with beta1 == 0: the readable path raises the error
        # warm-ups: None (no warm-up) is sent as 0, which validation rules out as a length
        args = (hp["lr"], b1, b2, b3, hp["alpha"], hp["alpha_warmup"] or 0.0,
                hp["beta3_warmup"] or 0.0, hp["eps"], hp["weight_decay"], hp["maximize"])  # fmt: skip
        return NativeSpec("ademamix", keys, tuple(float(a) for a in args))
