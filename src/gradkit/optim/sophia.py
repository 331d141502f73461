"""Sophia: second-order clipped stochastic optimization (SophiaH and SophiaG).

Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for Language
Model Pre-training", ICLR 2024, arXiv:2305.14342. Official code (SophiaG):
https://github.com/Liuhong99/Sophia (``sophia.py``, training loop ``train_sophiag.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_betas, check_nonnegative, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim._curvature import DiagonalHessianOptimizer, gnb_diagonal, hutchinson_diagonal
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr

__all__ = ["ScaleBySophia", "Sophia", "gnb_diagonal", "hutchinson_diagonal", "scale_by_sophia"]


def check_interval(hp: Mapping[str, Any], name: str) -> None:
    value = hp[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")


class ScaleBySophia(GroupTransform):
    """See :func:`scale_by_sophia`."""

    name = "sophia"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_nonnegative(hp, "rho")
        check_positive(hp, "eps")
        check_interval(hp, "hessian_interval")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "hessian": [torch.zeros_like(p) for p in params],
            # step count at the last Hessian refresh (-1: never); a CPU scalar like "step"
            "hessian_step": [torch.tensor(-1.0, dtype=torch.float32) for _ in params],
        }

    def update_group(self, updates, state, params, hp, steps, grads):
        b1 = hp["betas"][0]
        exp_avg = state["exp_avg"]
        torch._foreach_lerp_(exp_avg, updates, 1.0 - b1)
        denom = torch._foreach_mul(state["hessian"], hp["rho"])
        torch._foreach_clamp_min_(denom, hp["eps"])
        out = torch._foreach_div(exp_avg, denom)
        torch._foreach_clamp_min_(out, -1.0)
        torch._foreach_clamp_max_(out, 1.0)
        return out


def scale_by_sophia(
    betas: tuple[float, float] = (0.965, 0.99),
    rho: float = 0.04,
    eps: float = 1e-15,
    hessian_interval: int = 10,
) -> Transform:
    r"""Sophia's clipped, curvature-scaled momentum (no learning rate, no decay).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
        u_t = \operatorname{clip}\!\big(m_t / \max(\rho\, h_t, \epsilon),\ 1\big)

    elementwise, where :math:`h_t` is the EMA (rate :math:`\beta_2`) of diagonal-Hessian estimates
    fed by :meth:`Sophia.update_hessian` (it stays 0 otherwise: :math:`u_t = \operatorname{sign}
    (m_t)` up to :math:`|m_t| < \epsilon`). State: ``exp_avg``, ``hessian``, ``hessian_step``.
    """
    return ScaleBySophia(betas=betas, rho=rho, eps=eps, hessian_interval=hessian_interval)


@register(
    paper="Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training",
    year=2024,
    url="https://arxiv.org/abs/2305.14342",
    state_floats=2,
)
class Sophia(DiagonalHessianOptimizer, GradkitOptimizer):
    r"""Sophia (Liu et al., ICLR 2024) with the Hutchinson (SophiaH) or GNB (SophiaG) estimator.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t\\
        h_t &= \beta_2 h_{t-k} + (1-\beta_2)\,\hat h_t \quad\text{every } k \text{ steps, else }
        h_t = h_{t-1}\\
        \theta_{t+1} &= \theta_t - \eta_t\lambda\theta_t - \eta_t\,
        \operatorname{clip}\!\big(m_t / \max(\rho\, h_t, \epsilon),\ 1\big)

    (elementwise; :math:`\operatorname{clip}(z, 1) = \max(\min(z, 1), -1)`; :math:`m_0 = h_0 = 0`,
    no bias correction). :math:`\hat h_t` is a diagonal-Hessian estimate you compute and hand over:

    * **SophiaH**: :func:`hutchinson_diagonal` (:math:`u \odot Hu`, Rademacher :math:`u`);
    * **SophiaG**: :func:`gnb_diagonal` (:math:`B\,\hat g\odot\hat g`, :math:`\hat g` the gradient
      of the mean loss on labels sampled from the model's softmax);

    or any estimate of your own, through :meth:`update_hessian`. :meth:`hessian_due` says when a
    refresh is due (after steps :math:`k, 2k, \dots`, :math:`k` = ``hessian_interval``, the
    official schedule) and :meth:`hessian_generator` gives probes that survive a checkpoint
    resume. The helpers build their second-order graph inside the call and write nothing to
    ``p.grad``, so nothing outlives a refresh (unlike ``backward(create_graph=True)``, the cause of
    pytorch-optimizer's SophiaH memory leak, its issue #278; ``tests/optim/test_sophia.py``
    measures 1,000 steps).

    Defaults (official ``SophiaG``): ``lr=1e-4, betas=(0.965, 0.99), rho=0.04,
    weight_decay=0.1``; ``hessian_interval=10`` (paper and official training loop, ``k``);
    ``eps=1e-15`` (the official additive constant). The official README suggests ``lr`` slightly
    below AdamW's (its GPT-2 table: 6e-4 with ``rho=0.05, weight_decay=0.2``) and tuning ``rho``
    so that 10-50% of coordinates are not clipped.

    Official code and our choices:

    * **Batch size.** The official step takes ``bs`` (tokens per batch) and divides by
      ``rho * bs * h + 1e-15`` where ``h`` is the EMA of :math:`\hat g\odot\hat g`; the paper's GNB
      estimate is :math:`B\,\hat g\odot\hat g`. We follow the paper: the factor :math:`B` is in
      the estimate (:func:`gnb_diagonal` multiplies by the number of sampled positions), the step
      has no ``bs`` argument, and ``rho`` means the same as in the official code.
    * **Denominator.** Official: ``rho * bs * h + 1e-15``; paper: :math:`\max(\rho h, \epsilon)`.
      We use the paper's form. They agree for GNB (:math:`h \ge 0`, up to 1e-15), but Hutchinson
      estimates can be negative, and the official form then flips the update against the
      momentum; with the max a non-positive curvature gives the clipped (sign) step, as the paper
      intends.
    * **Learning rate.** The official README says its ``lr`` is :math:`\rho\,\eta_t` "in the
      paper": that is the parametrization whose clip bound is :math:`\rho`,
      :math:`\eta\operatorname{clip}(m/\max(h,\epsilon), \rho) = \eta\rho\operatorname{clip}(m/
      \max(\rho h, \rho\epsilon), 1)`. We write the update as above (the paper's :math:`\gamma` is
      our ``rho``), so ``lr`` is the official ``lr``; weight decay is multiplied by ``lr`` in both.
    * **Estimator inputs.** The official loop clips the sampled-label gradient to norm 1 before
      ``update_hessian()`` (a training-script choice, not in the paper); our helpers do not.
      The official ``update_hessian()`` reads ``p.grad``; ours takes the estimates explicitly.
    * Before the first refresh :math:`h = 0` and the update is ``sign(m)`` (official behaviour).

    Chain: ``maximize -> scale_by_sophia -> add_decayed_weights -> scale_by_lr``.

    Example (SophiaG):
        >>> import torch
        >>> from gradkit.optim.sophia import Sophia, gnb_diagonal
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> opt = Sophia(model.parameters(), lr=1e-2, hessian_interval=2)
        >>> for _ in range(4):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     _ = opt.step()
        ...     if opt.hessian_due():
        ...         opt.update_hessian(gnb_diagonal(model, x, generator=opt.hessian_generator()))
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-15,
        hessian_interval: int = 10,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        self._hessian_owner = scale_by_sophia(betas, rho, eps, hessian_interval)
        core = [self._hessian_owner, add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, eps=eps,
            hessian_interval=hessian_interval,
        )  # fmt: skip

    def _hessian_beta(self, group: Mapping[str, Any]) -> float:
        return float(group["betas"][1])

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec:
        args = (hp["lr"], hp["betas"][0], hp["rho"], hp["eps"], hp["weight_decay"], hp["maximize"])
        return NativeSpec(
            "sophia", ("sophia.exp_avg", "sophia.hessian"), tuple(float(a) for a in args)
        )

    def hessian_due(self) -> bool:
        """Whether a Hessian refresh is due: some parameter has completed a multiple of its
        group's ``hessian_interval`` steps and has not been refreshed at that step yet."""
        step_key = self._hessian_key("hessian_step")
        for group in self.param_groups:
            k = group["hessian_interval"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                t = int(state["step"].item())
                if t > 0 and t % k == 0 and int(state[step_key].item()) != t:
                    return True
        return False
