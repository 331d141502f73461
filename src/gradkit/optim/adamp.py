"""AdamP and SGDP: momentum optimizers that stop inflating the norm of scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh & Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021, arXiv:2006.08217.
Official code: https://github.com/clovaai/AdamP (``adamp/adamp.py``, ``adamp/sgdp.py``, v0.3.0).

A weight followed by a normalization layer is scale-invariant: its gradient is orthogonal to it.
Momentum then adds a radial component that only grows the norm, which shrinks the effective step
size. Both optimizers detect such weights by the cosine between gradient and weight and remove
the radial component of the update there (:func:`project_radial`, shared by both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import GroupTransform, State, Transform, zeros_state
from gradkit.core.validation import (
    check_betas,
    check_bool,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.optim.lars import missing_state
from gradkit.transforms.basic import scale_by_lr


def _abs_cosine(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Row-wise |cos(x, y)| of two 2-D tensors, with torch's ``cosine_similarity`` eps rule."""
    dot = (x * y).sum(dim=1)
    norms = x.norm(dim=1).clamp_min(eps) * y.norm(dim=1).clamp_min(eps)
    return (dot / norms).abs()


def _radial_part(weight: Tensor, update: Tensor, eps: float) -> Tensor:
    r"""Row-wise :math:`(\hat w \cdot u)\,\hat w` with :math:`\hat w = w / (\|w\| + \epsilon)`."""
    unit = weight / (weight.norm(dim=1, keepdim=True) + eps)
    return unit * (unit * update).sum(dim=1, keepdim=True)


def project_radial(
    param: Tensor, grad: Tensor, update: Tensor, delta: float, eps: float
) -> tuple[Tensor, Tensor | None]:
    r"""AdamP's projection: remove the radial component of ``update`` where ``param`` looks
    scale-invariant.

    The test is tried on two views of the parameter, the channel view (one row per output
    channel, rows of length :math:`n` = fan-in) and then the layer view (one row of length
    :math:`n` = numel). The first view whose rows all satisfy
    :math:`|\cos(g, w)| < \delta/\sqrt{n}` is used: each row of the update loses its component
    along that row of the weight. Parameters with fewer than 2 dimensions are never projected.

    Returns the new update and a 0-d bool tensor saying whether a projection happened (None for
    parameters with fewer than 2 dimensions or no elements). Both views are evaluated and one is
    selected with ``torch.where``, so the projection never waits on the device.
    """
    if param.ndim < 2 or param.numel() == 0:
        return update, None
    shape, rows = param.shape, param.shape[0]
    views = [
        (param.reshape(rows, -1), grad.reshape(rows, -1), update.reshape(rows, -1)),
        (param.reshape(1, -1), grad.reshape(1, -1), update.reshape(1, -1)),
    ]
    hits, radials = [], []
    for w, g, u in views:
        threshold = delta / math.sqrt(w.shape[1])
        hits.append(_abs_cosine(g, w, eps).max() < threshold)
        radials.append(_radial_part(w, u, eps).reshape(shape))
    channel_hit, layer_hit = hits
    radial = torch.where(channel_hit, radials[0], torch.where(layer_hit, radials[1], 0.0))
    return update - radial, channel_hit | layer_hit


class ProjectScaleInvariant(GroupTransform):
    r"""Apply :func:`project_radial` and AdamP's decoupled weight decay.

    The decay depends on the projection (it is multiplied by ``wd_ratio`` where a projection
    happened), which is why it lives here rather than in ``add_decayed_weights``:

    .. math:: u \leftarrow \Pi(u) + \frac{\lambda\,r}{c}\,\theta,\qquad
        r = \begin{cases}\text{wd\_ratio} & \text{projected}\\ 1 & \text{otherwise}\end{cases}

    with :math:`c = 1` (AdamP) or :math:`c = 1 - \mu` (SGDP, ``momentum_scaled_decay=True``:
    the official code divides by one minus the momentum). The cosine test uses the incoming
    gradient ``grads`` (the parameter's ``.grad``), not the update.
    """

    name = "projection"

    def __init__(self, *, momentum_scaled_decay: bool = False, **defaults: Any) -> None:
        self.momentum_scaled_decay = momentum_scaled_decay
        super().__init__(**defaults)

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "delta")
        check_nonnegative(hp, "wd_ratio")
        check_nonnegative(hp, "weight_decay")
        check_positive(hp, "eps")
        if self.momentum_scaled_decay:
            check_unit_interval(hp, "momentum")

    def update_group(self, updates, state, params, hp, steps, grads):
        delta, eps, wd = hp["delta"], hp["eps"], hp["weight_decay"]
        if self.momentum_scaled_decay:
            wd = wd / (1.0 - hp["momentum"])
        out = []
        for p, g, u in zip(params, grads, updates, strict=True):
            u, projected = project_radial(p, g, u, delta, eps)
            if wd != 0 and projected is None:
                u = torch.add(u, p, alpha=wd)
            elif wd != 0:
                coef = torch.where(projected, p.new_full((), wd * hp["wd_ratio"]), wd)
                u = u + coef * p
            out.append(u)
        return out


def project_scale_invariant(
    delta: float = 0.1, wd_ratio: float = 0.1, weight_decay: float = 0.0, eps: float = 1e-8
) -> Transform:
    """AdamP's projection of the radial component plus its ``wd_ratio``-scaled decoupled decay
    (see :class:`ProjectScaleInvariant`). Stateless."""
    return ProjectScaleInvariant(delta=delta, wd_ratio=wd_ratio, weight_decay=weight_decay, eps=eps)


class ScaleByAdamP(GroupTransform):
    r"""Adam's bias-corrected direction, optionally with AdamP's Nesterov numerator.

    .. math:: u_t = \frac{1}{1-\beta_1^t}\,
        \frac{m_t \text{ or } \beta_1 m_t + (1-\beta_1) g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
    """

    name = "adamp"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_bool(hp, "nesterov")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return zeros_state(params, "exp_avg", "exp_avg_sq")

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        numerator = exp_avg
        if hp["nesterov"]:
            numerator = torch._foreach_mul(exp_avg, b1)
            torch._foreach_add_(numerator, updates, alpha=1.0 - b1)
        out = torch._foreach_div(numerator, adam_denominator(exp_avg_sq, b2, steps, hp["eps"]))
        torch._foreach_div_(out, bias_corrections(b1, steps))
        return out


class ScaleBySGDP(GroupTransform):
    r"""SGDP's momentum, with the official code's zero-initialized buffer.

    .. math:: b_t = \mu b_{t-1} + (1-\tau) g_t,\ b_0 = 0,\qquad
        u_t = g_t + \mu b_t\ (\text{nesterov})\ \text{or}\ b_t

    Unlike torch.optim.SGD the first step does not copy :math:`g_1` into the buffer, so
    :math:`b_1 = (1-\tau) g_1`. With ``momentum=0`` no buffer is kept and :math:`u_t = (1-\tau) g_t`
    (dampening still applies, as in the official code).
    """

    name = "sgdp"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "momentum")
        check_nonnegative(hp, "dampening")
        check_bool(hp, "nesterov")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        if hp["momentum"] == 0:
            return {}
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        momentum, keep = hp["momentum"], 1.0 - hp["dampening"]
        if momentum == 0:
            return torch._foreach_mul(updates, keep)
        buffers = state.get("momentum_buffer")
        if buffers is None or any(b is None for b in buffers):
            raise ValueError(
                "momentum was 0 when this optimizer's state was created, so no momentum buffer "
                f"exists; it can't be switched on later (got momentum={momentum!r})"
            )
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, updates, alpha=keep)
        if hp["nesterov"]:
            return torch._foreach_add(updates, buffers, alpha=momentum)
        return buffers


_OFFICIAL_NOTES = r"""
    The projection :math:`\Pi` (:func:`project_radial`): for parameters with at least 2
    dimensions, if every output channel has :math:`|\cos(g, w_c)| < \delta/\sqrt{\text{fan-in}}`,
    each channel of the update loses its component along :math:`w_c`; otherwise, if
    :math:`|\cos(g, w)| < \delta/\sqrt{\text{numel}}` for the whole tensor, the update loses its
    component along :math:`w`; otherwise it is unchanged. 1-D parameters (biases, norm gains) are
    never projected. The projection, the cosine test and the decay all use the weights before
    the step.

    Official code and our choices (we follow the official code, v0.3.0):

    * The paper's condition (eq. 11) lacks the absolute value; the authors confirmed |cos| is
      intended (clovaai/AdamP#6), as in their code and here.
    * ``wd_ratio`` and the decoupled weight decay are not in the paper's algorithm boxes; they
      come from the official code: the decay is :math:`\eta\lambda r\theta` with :math:`r` =
      ``wd_ratio`` on projected parameters and 1 elsewhere.
    * Cosine similarity uses torch's current ``cosine_similarity`` convention
      :math:`x\cdot y / (\max(\|x\|,\epsilon)\max(\|y\|,\epsilon))`; the unit weight is
      :math:`w/(\|w\| + \epsilon)`, as official. The same ``eps`` serves both.
    * We never modify ``p.grad``, and the projection adds no host-device synchronization (both
      views are computed and one is selected on the device; the official code syncs twice per
      parameter).

    The default step on CPU runs a native two-pass kernel (``gk_adamp`` / ``gk_sgdp``): pass 1
    updates the state and accumulates, per output channel, :math:`g\cdot w, \|g\|^2, \|w\|^2,
    w\cdot u` (the layer view adds the channels up); pass 2 picks the view and applies the step.
"""


class _NativeProjection(GradkitOptimizer):
    """Runs the projection kernels, which need each parameter's number of output channels."""

    def _run_native(self, spec, lists, steps, seg):
        del seg
        out = torch.zeros(len(lists[0]), _native.OUT_WIDTH, dtype=torch.float64)
        # rows of the channel view; 0 = never projected (fewer than 2 dimensions, or empty)
        out[:, 0] = torch.tensor(
            [p.shape[0] if p.ndim >= 2 and p.numel() > 0 else 0 for p in lists[0]],
            dtype=torch.float64,
        )
        _native.kernel(spec.kernel).run(lists, steps, spec.hp, out)
        if out[0, -1] < 0:
            raise MemoryError(f"{type(self).__name__}: no memory for the per-channel sums")


@register(
    paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    year=2021,
    url="https://arxiv.org/abs/2006.08217",
    state_floats=2,
)
class AdamP(_NativeProjection):
    __doc__ = (
        r"""AdamP (Heo et al., 2021): Adam with the radial component projected out on
    scale-invariant weights.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        p_t &= \frac{m_t \text{ (or } \beta_1 m_t + (1-\beta_1) g_t \text{ with nesterov)}}
            {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}\\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\,\Pi_{\theta_{t-1}}(p_t)
            - \eta\lambda r\,\theta_{t-1}

    Defaults (official): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, delta=0.1,
    wd_ratio=0.1, nesterov=False``. State: 2 parameter-sized tensors. The bias correction, with
    :math:`\epsilon` added after it, is taken from the official code (our reference
    implementation for what the paper's boxes leave open); the Nesterov numerator uses the same
    :math:`1/(1-\beta_1^t)`.

    Chain: ``maximize -> ScaleByAdamP -> project_scale_invariant -> scale_by_lr``.
    """
        + _OFFICIAL_NOTES
    )

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ScaleByAdamP(betas=betas, eps=eps, nesterov=nesterov),
            project_scale_invariant(delta, wd_ratio, weight_decay, eps),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta,
            wd_ratio=wd_ratio, nesterov=nesterov,
        )  # fmt: skip

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        b1, b2 = hp["betas"]
        wd = hp["weight_decay"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], wd, wd * hp["wd_ratio"], hp["delta"],
                hp["nesterov"], hp["maximize"])  # fmt: skip
        return NativeSpec("adamp", ("adamp.exp_avg", "adamp.exp_avg_sq"), tuple(map(float, args)))


@register(
    paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    year=2021,
    url="https://arxiv.org/abs/2006.08217",
    state_floats=0,
)
class SGDP(_NativeProjection):
    __doc__ = (
        r"""SGDP (Heo et al., 2021): SGD with momentum and the radial component projected
    out on scale-invariant weights.

    .. math::
        b_t &= \mu b_{t-1} + (1-\tau) g_t,\ b_0 = 0,\qquad
        p_t = g_t + \mu b_t \text{ (nesterov) or } b_t\\
        \theta_t &= \theta_{t-1} - \eta\,\Pi_{\theta_{t-1}}(p_t)
            - \frac{\eta\lambda r}{1-\mu}\,\theta_{t-1}

    Defaults (official): ``lr`` required, ``momentum=0, dampening=0, weight_decay=0,
    nesterov=False, eps=1e-8, delta=0.1, wd_ratio=0.1``; the README recipe is
    ``SGDP(params, lr=0.1, weight_decay=1e-5, momentum=0.9, nesterov=True)``. State: none at the
    defaults, one parameter-sized tensor with momentum.

    SGDP-specific choices (official code): the momentum buffer starts at **zero**, so
    :math:`b_1 = (1-\tau) g_1`, unlike torch.optim.SGD which copies :math:`g_1`; the decoupled
    decay is divided by :math:`1-\mu` (so ``momentum`` must be < 1) to match the effective step
    of the momentum buffer; dampening applies even with ``momentum=0``; nesterov with dampening
    is accepted, as official (torch rejects it).

    Chain: ``maximize -> ScaleBySGDP -> project_scale_invariant -> scale_by_lr``.
    """
        + _OFFICIAL_NOTES
    )

    def __init__(
        self,
        params: Params,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        projection = ProjectScaleInvariant(
            momentum_scaled_decay=True,
            delta=delta, wd_ratio=wd_ratio, weight_decay=weight_decay, eps=eps, momentum=momentum,
        )  # fmt: skip
        core = [
            ScaleBySGDP(momentum=momentum, dampening=dampening, nesterov=nesterov),
            projection,
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio,
        )  # fmt: skip

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        momentum = float(hp["momentum"])
        keys = ("sgdp.momentum_buffer",) if momentum != 0 else ()
        if missing_state(self, hp, keys):
            return None  # momentum switched on later: the readable chain raises a clear error
        wd = hp["weight_decay"] / (1.0 - momentum)
        args = (float(hp["lr"]), momentum, 1.0 - hp["dampening"], hp["eps"], wd,
                wd * hp["wd_ratio"], hp["delta"], hp["nesterov"], hp["maximize"])  # fmt: skip
        return NativeSpec("sgdp", keys, tuple(map(float, args)))
