"""Gravity: a kinematic step that saturates for large gradients, with a warming-up average.

Bahrami & Pouriyan Zadeh, "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
Learning", 2021, arXiv:2101.09192. Official code: https://github.com/dariush-bahrami/gravity.optimizer
(``implementations/gravity_optimizer_keras.py``, ``..._pytorch.py``, ``gravity_optimizer_math.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import as_number, check_nonnegative, check_unit_interval
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.transforms.basic import scale_by_lr


def initial_velocities(
    params: Sequence[Tensor], alpha: float, lr: float, seed: int
) -> list[Tensor]:
    r""":math:`V_0 \sim \mathcal N(0, (\alpha/\eta)^2)` for each parameter, reproducibly.

    One CPU generator seeded with ``seed`` draws the parameters in order (in each one's dtype),
    so the draws do not depend on the device.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    std = alpha / lr if lr > 0 else 0.0
    out = []
    for p in params:
        v = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        out.append(v.mul_(std).to(p.device))
    return out


class ScaleByGravity(GroupTransform):
    name = "gravity"
    per_parameter = False  # a group's initial velocities come from one seeded draw

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "alpha")
        check_unit_interval(hp, "beta")
        seed = hp["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Invalid seed: {seed!r} (expected an int >= 0)")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        lr = as_number("learning rate", hp.get("lr", 0.0))
        return {"velocity": initial_velocities(params, hp["alpha"], lr, hp["seed"])}

    def update_group(self, updates, state, params, hp, steps, grads):
        beta = hp["beta"]
        velocity = state["velocity"]
        # zeta = g / (1 + (g/m)^2) with m = 1/max|g|: written g / (1 + (g max|g|)^2), no division
        # by zero for an all-zero gradient (zeta = 0 there)
        nonempty = [i for i, u in enumerate(updates) if u.numel()]
        maxima = torch._foreach_norm([updates[i] for i in nonempty], math.inf)
        for i, max_abs in zip(nonempty, maxima, strict=True):
            g = updates[i]
            zeta = g / (1 + (g * max_abs).square())
            t = steps[i] - 1  # the paper counts from t = 0 at the first update
            beta_hat = (beta * t + 1) / (t + 2)
            velocity[i].lerp_(zeta, 1.0 - beta_hat)
        return velocity


def scale_by_gravity(alpha: float = 0.01, beta: float = 0.9, seed: int = 0) -> Transform:
    r"""Gravity's velocity (no learning rate): see :class:`Gravity`. State: ``velocity``."""
    return ScaleByGravity(alpha=alpha, beta=beta, seed=seed)


@register(
    paper="Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning",
    year=2021,
    url="https://arxiv.org/abs/2101.09192",
    state_floats=1,
)
class Gravity(GradkitOptimizer):
    r"""Gravity (Bahrami & Pouriyan Zadeh, 2021).

    .. math::
        V_0 &\sim \mathcal N\big(0, (\alpha/\eta)^2\big),\qquad
        \hat\beta_t = \frac{\beta t + 1}{t + 2}\quad (t = 0, 1, \dots)\\
        m_t &= \frac{1}{\max_i |g_{t,i}|},\qquad \zeta_t = \frac{g_t}{1 + (g_t/m_t)^2}\\
        V_{t+1} &= \hat\beta_t V_t + (1-\hat\beta_t)\,\zeta_t,\qquad
        \theta_{t+1} = \theta_t - \eta\, V_{t+1}

    :math:`\zeta` is the slope of a ball on an inclined plane: linear in :math:`g` for small
    gradients, largest at :math:`|g| = m` and decaying beyond, so the coordinates with the largest
    gradients of a tensor get bounded steps. :math:`m` is per parameter tensor. The average
    :math:`\hat\beta_t` starts at 1/2 and rises to :math:`\beta`, replacing bias correction.

    Defaults (paper and official code): ``lr=0.1, alpha=0.01, beta=0.9``. State: one
    parameter-sized tensor (the velocity). No weight decay (the paper has none; use
    ``transforms=[gradkit.add_l2(...)]`` for coupled L2).

    **Randomness.** :math:`V_0` is drawn when a parameter's state is created (its first step), by
    :func:`initial_velocities`: a CPU generator seeded with ``seed`` draws the group's new
    parameters in order, scaled by :math:`\alpha/\eta` with the group's learning rate at that
    moment. The same seed and parameter shapes give the same run on any device; the velocity is
    optimizer state, so ``state_dict`` resume is bit-exact. Groups initialised at the same step
    with the same seed draw the same stream: give them different seeds for independent draws.
    ``alpha=0`` starts from rest.

    Official code and our choices:

    * **Where the learning rate goes.** We follow the paper and both official implementations:
      the velocity averages :math:`\zeta` and the step is :math:`\eta V` (so the initial
      displacement has scale :math:`\alpha`). Writing the learning rate inside the average,
      :math:`V \leftarrow \hat\beta V + (1-\hat\beta)\eta\zeta,\ \theta \leftarrow \theta - V`,
      is the same method only if :math:`V_0` is scaled by :math:`\eta` too.
    * **The step count in** :math:`\hat\beta`. The paper counts from :math:`t = 0` at the first
      update (:math:`\hat\beta = 1/2`), as the Keras code (``self.iterations``) does; the later
      PyTorch port counts from 1 (:math:`\hat\beta = (\beta+1)/3` at the first update). We follow
      the paper.
    * The PyTorch port draws :math:`V_0` unseeded at construction; we draw it seeded at the first
      step. An early Keras version used a truncated normal and :math:`m = 1/(\max g - \min g)`;
      the released code and the paper use a normal and :math:`1/\max|g|`, as here.

    Chain: ``maximize -> scale_by_gravity -> scale_by_lr``. Without extra ``transforms`` it runs
    natively (``gk_gravity``): a read of the gradient for :math:`\max|g|`, then one update pass.

    Example:
        >>> import torch
        >>> from gradkit.optim.gravity import Gravity
        >>> w = torch.zeros(2, requires_grad=True)
        >>> opt = Gravity([w], lr=0.1, alpha=0.0)  # start from rest
        >>> w.grad = torch.tensor([1.0, 0.5])  # m = 1: zeta = [0.5, 0.4]
        >>> _ = opt.step()
        >>> [round(x, 4) for x in w.tolist()]  # -lr * zeta / 2
        [-0.025, -0.02]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.1,
        alpha: float = 0.01,
        beta: float = 0.9,
        *,
        seed: int = 0,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [scale_by_gravity(alpha, beta, seed), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, alpha=alpha, beta=beta, seed=seed,
        )  # fmt: skip

    def native_spec(self, hp):
        args = (float(hp["lr"]), hp["beta"], hp["maximize"], 0.0)
        return NativeSpec("gravity", ("gravity.velocity",), tuple(float(a) for a in args))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 0  # max |g| of every tensor before any write

    def _run_native(self, spec, lists, steps, seg):
        self._run_checked(spec, lists, steps, seg)
