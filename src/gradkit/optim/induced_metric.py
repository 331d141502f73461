"""The induced-metric optimiser: descend in the metric of the loss surface seen as a graph.

Harvey, "The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's Induced Metric",
2025, arXiv:2509.03594. Official code: https://github.com/harveyThomas4692/Induced-Metric-Optimiser
(``optimisers/jax_imp.py``, the implementation every experiment of the paper used, and
``optimisers/torch_imp.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import Context, State, Transform
from gradkit.core.validation import (
    check_bool,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr


class ScaleByInducedMetric(Transform):
    """Momentum scaled by the induced metric's inverse; the gradient norm is over *all* groups."""

    name = "induced_metric"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "momentum")
        check_nonnegative(hp, "xi")
        check_unit_interval(hp, "beta")
        check_bool(hp, "rms")
        check_unit_interval(hp, "beta_rms")
        check_positive(hp, "eps")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "metric_ema": [torch.zeros((), dtype=p.dtype, device=p.device) for p in params],
        }
        if hp["rms"]:
            state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
        return state

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        # one metric for the whole model: the squared gradient norm sums every group's parameters
        denoms = [None] * len(updates)
        for sl, hp in ctx.iter_segments():
            if hp["rms"]:
                denoms[sl] = _rms_denominators(updates[sl], state, sl, hp, ctx.steps[sl])
        norm_sq = _squared_norm(updates, denoms)
        out: list[Tensor] = []
        for sl, hp in ctx.iter_segments():
            out += self._scaled_momentum(updates, state, denoms, norm_sq, sl, hp, ctx.steps)
        return out

    def _scaled_momentum(self, updates, state, denoms, norm_sq, sl, hp, steps) -> list[Tensor]:
        mu = hp["momentum"]
        out = []
        for i in range(sl.start, sl.stop):
            coef = _metric_coefficient(state["metric_ema"][i], norm_sq, hp, steps[i])
            exp_avg = state["exp_avg"][i]
            exp_avg.lerp_(updates[i], 1.0 - mu)
            u = exp_avg * coef
            out.append(u if denoms[i] is None else u.div_(denoms[i]))
        return out


def _metric_coefficient(ema: Tensor, norm_sq: Tensor, hp: Mapping[str, Any], t: int) -> Tensor:
    r"""Update the metric EMA :math:`s_t` in place and return
    :math:`\kappa_t/(1-\mu^t)` (a 0-d tensor of the EMA's dtype)."""
    beta = hp["beta"]
    ema.mul_(beta).add_(norm_sq.to(ema), alpha=(1.0 - beta) * hp["xi"])
    scale = 1.0 / (1.0 + (ema / (1.0 - beta**t)).abs())
    return scale / (1.0 - hp["momentum"] ** t)


def _rms_denominators(grads, state, sl, hp, steps) -> list[Tensor]:
    r""":math:`\sqrt{v_t/(1-\beta_{rms}^t)} + \epsilon` after updating :math:`v_t`."""
    exp_avg_sq = state["exp_avg_sq"][sl]
    if any(v is None for v in exp_avg_sq):
        raise ValueError(
            "rms was False when this optimizer's state was created, so no exp_avg_sq exists; it "
            "can't be switched on later (got rms=True)"
        )
    b2 = hp["beta_rms"]
    torch._foreach_mul_(exp_avg_sq, b2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1.0 - b2)
    denom = torch._foreach_div(exp_avg_sq, [1.0 - b2**t for t in steps])
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, hp["eps"])
    return denom


def _squared_norm(grads: list[Tensor], denoms: list[Tensor | None]) -> Tensor:
    r""":math:`\sum_i g_i^2 / d_i` over every tensor (:math:`d_i = 1` where ``denoms[i]`` is None)."""
    plain = [g for g, d in zip(grads, denoms, strict=True) if d is None]
    parts = [n.square() for n in torch._foreach_norm(plain)] if plain else []
    for g, d in zip(grads, denoms, strict=True):
        if d is not None:
            parts.append((g * g / d).sum())
    device = grads[0].device
    return torch.stack([p.to(device=device, dtype=torch.float64) for p in parts]).sum()


def scale_by_induced_metric(
    momentum: float = 0.9,
    xi: float = 0.1,
    beta: float = 0.8,
    rms: bool = False,
    beta_rms: float = 0.99,
    eps: float = 1e-8,
) -> Transform:
    r"""The induced-metric direction (no learning rate, no decay); see :class:`InducedMetric`.

    State: ``exp_avg``, ``metric_ema`` (a scalar per parameter, the same value for all of them
    while they step together) and, with ``rms``, ``exp_avg_sq``.
    """
    return ScaleByInducedMetric(
        momentum=momentum, xi=xi, beta=beta, rms=rms, beta_rms=beta_rms, eps=eps
    )


@register(
    paper="The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's Induced Metric",
    year=2025,
    url="https://arxiv.org/abs/2509.03594",
    state_floats=1,
)
class InducedMetric(GradkitOptimizer):
    r"""The induced-metric optimiser (Harvey, 2025).

    Seeing the loss surface as the graph :math:`(\theta, \sqrt{\xi}\,L(\theta))` in a space one
    dimension higher induces the metric :math:`G = I + \xi\,\nabla L\,\nabla L^\top` on parameter
    space (the metric of loss-landscape pictures). Its natural gradient is, by Sherman-Morrison,

    .. math::
        G^{-1}\nabla L = \frac{\nabla L}{1 + \xi\,\|\nabla L\|^2},

    gradient descent whose step shrinks smoothly where the landscape is steep (a smoothed gradient
    clipping). The method as published (official code, which every experiment used) applies this
    scale to bias-corrected momentum, with the squared norm smoothed by its own EMA:

    .. math::
        s_t &= \beta s_{t-1} + (1-\beta)\,\xi\,\|g_t\|^2,\qquad
        \kappa_t = \frac{1}{1 + |s_t/(1-\beta^t)|}\\
        m_t &= \mu m_{t-1} + (1-\mu) g_t,\qquad
        \theta_t = \theta_{t-1} - \eta\Big(\kappa_t\,\frac{m_t}{1-\mu^t}
        + \lambda\theta_{t-1}\Big)

    With ``momentum=0, beta=0, xi=1`` this is exactly the natural-gradient step
    :math:`-\eta\, g/(1+\|g\|^2)`. **The norm is global**: :math:`\|g_t\|^2` sums over every
    parameter the optimizer steps, across all param groups (the official JAX code takes the norm
    of the whole parameter tree), so one call of the transform sees every group; :math:`\xi`,
    :math:`\beta`, :math:`\mu` are read per group. Weight decay is decoupled and not scaled by
    :math:`\kappa`, as the paper argues is natural and the official code does.

    ``rms=True`` is the paper's preconditioned variant (official ``custom_sgd_rms``): with
    :math:`d_t = \sqrt{v_t/(1-\beta_{rms}^t)} + \epsilon`, :math:`v_t` the EMA of :math:`g^2`,
    the norm becomes :math:`\sum g_t^2/d_t` and the step :math:`\kappa_t m_t/((1-\mu^t) d_t)`.

    Defaults (official code): ``lr=0.1, momentum=0.9, xi=0.1, beta=0.8, weight_decay=0``;
    ``beta_rms=0.99, eps=1e-8`` for ``rms``. State: 1 parameter-sized tensor (2 with ``rms``).

    Official code and our choices:

    * The official PyTorch port takes the norm per param group; the JAX code (used for the paper)
      over the whole model. We follow the JAX code.
    * The paper's loss-dependent variant (``custom_sgd_log``, whose step needs the loss value) is
      not offered.
    * The official momentum buffer is an EMA with Adam-style bias correction (not torch's SGD
      momentum); we match it.

    Chain: ``maximize -> scale_by_induced_metric -> add_decayed_weights -> scale_by_lr``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.1,
        momentum: float = 0.9,
        xi: float = 0.1,
        beta: float = 0.8,
        weight_decay: float = 0.0,
        *,
        rms: bool = False,
        beta_rms: float = 0.99,
        eps: float = 1e-8,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            scale_by_induced_metric(momentum, xi, beta, rms, beta_rms, eps),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, momentum=momentum, xi=xi, beta=beta, weight_decay=weight_decay, rms=rms,
            beta_rms=beta_rms, eps=eps,
        )  # fmt: skip

    # -- native path ----------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        at = next(j for j, t in enumerate(self.transform.transforms) if t.name == "induced_metric")
        return f"{self.transform.namespaces[at]}.{name}"

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        """gk_induced_metric for ``rms=False`` (run by :meth:`_fast_step` for all groups at
        once, never group by group)."""
        if hp["rms"]:
            return None
        args = (hp["lr"], hp["momentum"], hp["weight_decay"], hp["maximize"])
        return NativeSpec("induced_metric", (self._key("exp_avg"),), tuple(float(a) for a in args))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 0  # gk_sumsq reads every gradient before gk_induced_metric writes

    def _fast_step(self, params, work, grads, segments, state=None):
        """All groups at once or none (the metric's norm spans every group): gk_sumsq for the
        squared norms, the per-tensor metric EMA and coefficient here (the readable transform's
        own 0-d tensor ops), then gk_induced_metric for the one-pass update. ``rms=True``,
        compressed state or tensors a kernel can't take run the readable chain."""
        rest = segments
        if not (self.use_native and self._plain) or state is not None:
            return rest
        if any(self.native_spec(seg.hp) is None for seg in segments) or not _native.available():
            return rest
        index = [i for seg in segments for i in range(seg.start, seg.stop)]
        m_key, ema_key = self._key("exp_avg"), self._key("metric_ema")
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in index:
            by_dtype.setdefault(work[i].dtype, []).append(i)
        for idx in by_dtype.values():
            lists = [[work[i] for i in idx], [grads[i] for i in idx]]
            lists.append([self.state[params[i]].get(m_key) for i in idx])
            kernel = _native.kernel("induced_metric")
            if not (_native.eligible(lists) and kernel.ready(lists[0][0].dtype)):
                return rest
        sums, nonfinite = {}, set()
        for idx in by_dtype.values():
            out = torch.zeros(len(idx), _native.OUT_WIDTH, dtype=torch.float64)
            _native.kernel("sumsq").run([[grads[i] for i in idx]], out.new_zeros(len(idx)), (), out)
            sums.update(zip(idx, out[:, 0], strict=True))
            nonfinite.update(idx[j] for j in (~out[:, 0].isfinite()).nonzero().flatten().tolist())
        # the deferred non-finite check (ChainOptimizer._deferred_checks): the sums read every
        # gradient; a skipped group leaves the metric's norm, as if the guard had skipped it
        skipped = [
            seg
            for seg in segments
            if id(seg.hp) in self._checking
            and any(i in nonfinite for i in range(seg.start, seg.stop))
            and self._skip_late(seg.hp, params[seg.start : seg.stop], grads[seg.start : seg.stop])
        ]
        segments = [seg for seg in segments if seg not in skipped]
        kept = {i for seg in segments for i in range(seg.start, seg.stop)}
        # squared norm over every tensor, each norm rounded to its dtype and squared there, as
        # the readable transform's foreach_norm(...).square() does
        norm_sq = torch.zeros((), dtype=torch.float64)
        for idx in by_dtype.values():
            idx = [i for i in idx if i in kept]
            if idx:
                norms = torch.stack([sums[i] for i in idx]).sqrt().to(work[idx[0]].dtype)
                norm_sq += (norms * norms).to(torch.float64).sum()
        coef: dict[int, float] = {}
        for seg in segments:
            for i in range(seg.start, seg.stop):
                entry = self.state[params[i]]
                t = int(entry["step"].item())
                # exact as a float: a 0-d tensor of the parameter's dtype
                coef[i] = float(_metric_coefficient(entry[ema_key], norm_sq, seg.hp, t))
        for seg in segments:
            args = self.native_spec(seg.hp).hp  # type: ignore[union-attr]
            for idx in by_dtype.values():
                mine = [i for i in idx if seg.start <= i < seg.stop]
                if not mine:
                    continue
                lists = [[work[i] for i in mine], [grads[i] for i in mine]]
                lists.append([self.state[params[i]][m_key] for i in mine])
                out = torch.zeros(len(mine), _native.OUT_WIDTH, dtype=torch.float64)
                out[:, 0] = torch.tensor([coef[i] for i in mine], dtype=torch.float64)
                steps = torch.zeros(len(mine), dtype=torch.float64)
                _native.kernel("induced_metric").run(lists, steps, args, out)
        return []
