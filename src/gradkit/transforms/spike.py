r"""Gradient-spike handling from SPAM and Stable-SPAM, as composable transforms.

* SPAM — Huang, Zhu, Jin, Liu, Wang & Liu, "SPAM: Spike-Aware Adam with Momentum Reset for Stable
  LLM Training", ICLR 2025, arXiv:2501.06842. Official code:
  https://github.com/TianjinYellow/SPAM-Optimizer (``galore_torch/SPAM.py``, commit e8185fb).
* Stable-SPAM — Huang, Hu, Zhang, Jin, Li, Shen, Chen, Liu, Wen, Wang & Liu, "Stable-SPAM: How to
  Train in 4-Bit More Stably than 16-Bit Adam", 2025, arXiv:2502.17055. Official code:
  https://github.com/TianjinYellow/StableSPAM (``galore_torch/stablespam.py``, commit 6a66da1).

The pieces, left to right in a chain:

* :func:`spam_clip` — SPAM's spike-aware clipping against an EMA of the squared gradient:
  :math:`g_i \leftarrow \operatorname{sign}(g_i)\sqrt{\theta v_{t-1,i}}` where
  :math:`g_i^2 > \theta v_{t-1,i}`.
* :func:`ada_clip` — Stable-SPAM's AdaClip: per tensor, entries above a bias-corrected EMA of the
  running maximum :math:`\max_i |g_i|` are rescaled.
* :func:`ada_gn` — Stable-SPAM's AdaGN: per tensor, :math:`g \leftarrow g/\|g\| \cdot \hat m/
  (\sqrt{\hat v} + \epsilon)` with EMAs of the gradient norm and of its square.
* :func:`momentum_reset` — wraps the update rule (``scale_by_adam()``, ...) and zeroes its state
  every ``reset_interval`` steps, optionally restarting the step count it sees (bias correction).
* :func:`post_reset_warmup` — SPAM's cosine warm-up of the update after each reset (an
  ``"update"``-stage multiplier, placed before weight decay and the learning rate).

A momentum reset has to reach the update rule's own state, which a transform in ``transforms=[...]``
cannot do; so it is a wrapper (``momentum_reset(scale_by_adam())``) used when building a chain, and
the ready optimizers :class:`gradkit.optim.spam.SPAM` / :class:`~gradkit.optim.spam.StableSPAM`
wrap their Adam moments with it. The other four go anywhere: ``transforms=[ada_clip(), ada_gn()]``
on any gradkit optimizer, or inside any ``chain``.

Step counts are the per-parameter counts of the step context (1-based); the official code keeps
one global counter, which is the same thing whenever every parameter gets a gradient every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import (
    Context,
    GroupTransform,
    Segment,
    State,
    Transform,
    adopt_state_of,
    zeros_state,
)
from gradkit.core.validation import (
    check_bool,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)

WARMUP_START = 0.01
"""SPAM's post-reset warm-up starts at ``1 - 0.99`` (official ``CosineDecay(0.99, N)``)."""


# -- shared rules ---------------------------------------------------------------------------
def check_count(hp: Mapping[str, Any], name: str) -> None:
    """``name`` is a non-negative integer (a number of steps)."""
    value = hp[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 0)")


def is_reset_step(step: int, interval: int) -> bool:
    """A momentum reset happens at steps ``interval, 2*interval, ...`` (never when 0)."""
    return interval > 0 and step % interval == 0


def steps_since_reset(step: int, interval: int) -> int:
    """The 1-based step count restarted at each reset: 1 on a reset step (as the official
    Stable-SPAM's ``state['step'] = 1``), the plain count before the first reset."""
    if interval <= 0 or step < interval:
        return step
    return step % interval + 1


def zero_at_resets_(state: State, steps: Sequence[int], interval: int) -> None:
    """Zero, in place, every state tensor of the parameters whose step is a reset step."""
    due = [i for i, t in enumerate(steps) if is_reset_step(t, interval)]
    stale = [ts[i] for ts in state.values() for i in due if ts[i] is not None]
    if stale:
        torch._foreach_zero_(stale)


def spam_clip_active(step: int, delay: int, interval: int) -> bool:
    """SPAM clips only ``delay`` steps after the last reset (the official ``grad_accu_steps``):
    right after a reset ``v = 0`` and every entry would be clipped to zero."""
    return (step % interval if interval > 0 else step) >= delay


def clip_spikes(
    updates: Sequence[Tensor], exp_avg_sq: Sequence[Tensor], steps: Sequence[int], hp: Mapping
) -> list[Tensor]:
    r"""SPAM's rule against the *previous* second moment :math:`v_{t-1}` (not bias corrected):
    :math:`g_i \leftarrow \operatorname{sign}(g_i)\sqrt{\theta v_{t-1,i}}` where
    :math:`g_i^2 > \theta v_{t-1,i}`. ``spam_threshold = 0`` turns it off (as the official code)."""
    theta = hp["spam_threshold"]
    out = list(updates)
    if theta == 0:
        return out
    delay, interval = hp["spam_clip_delay"], hp["reset_interval"]
    for i, (g, v, t) in enumerate(zip(updates, exp_avg_sq, steps, strict=True)):
        if spam_clip_active(t, delay, interval):
            bound = v * theta
            out[i] = torch.where(g * g > bound, g.sign() * bound.sqrt(), g)
    return out


def warmup_factor(step: int, interval: int, warmup_steps: int) -> float:
    r"""SPAM's cosine warm-up after a reset, ``c = step mod interval`` steps after it:
    :math:`s(c) = 1 - 0.99\,\tfrac12\big(1 + \cos\frac{\pi c}{N + 1}\big)` for :math:`c < N`, else 1
    (official ``1 - CosineDecay(0.99, N).get_dr(c)``; 1 before the first reset)."""
    if interval <= 0 or step < interval:
        return 1.0
    c = step % interval
    if c >= warmup_steps:
        return 1.0
    return 1.0 - (1.0 - WARMUP_START) * 0.5 * (1.0 + math.cos(math.pi * c / (warmup_steps + 1)))


# -- SPAM -----------------------------------------------------------------------------------
class SpamClip(GroupTransform):
    name = "spam_clip"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "spam_threshold")
        check_unit_interval(hp, "spam_beta2")
        check_count(hp, "spam_clip_delay")
        check_count(hp, "reset_interval")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return zeros_state(params, "exp_avg_sq")

    def update_group(self, updates, state, params, hp, steps, grads):
        zero_at_resets_(state, steps, hp["reset_interval"])
        exp_avg_sq = state["exp_avg_sq"]
        out = clip_spikes(updates, exp_avg_sq, steps, hp)
        b2 = hp["spam_beta2"]
        torch._foreach_mul_(exp_avg_sq, b2)
        torch._foreach_addcmul_(exp_avg_sq, out, out, 1.0 - b2)
        return out


def spam_clip(
    spam_threshold: float = 5000.0,
    spam_beta2: float = 0.999,
    spam_clip_delay: int = 20,
    reset_interval: int = 0,
) -> Transform:
    r"""SPAM's spike-aware clipping, usable before any update rule.

    .. math::
        \tilde g_{t,i} = \begin{cases}\operatorname{sign}(g_{t,i})\sqrt{\theta\, v_{t-1,i}} &
        g_{t,i}^2 > \theta\, v_{t-1,i}\\ g_{t,i} & \text{otherwise}\end{cases},\qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\tilde g_t^2

    :math:`v` is the EMA of the *clipped* squared gradient — exactly Adam's second moment in SPAM,
    which the ready :class:`~gradkit.optim.spam.SPAM` reads instead of keeping a copy. Standalone
    this transform keeps its own ``exp_avg_sq`` (one parameter-sized tensor). Clipping starts
    ``spam_clip_delay`` steps after the start and after each reset (``step mod reset_interval``),
    and ``v`` is zeroed on reset steps, as SPAM zeroes it with the moments (``reset_interval=0``:
    never). Give it the same ``reset_interval`` as the :func:`momentum_reset` around the update
    rule (a chain insists: both read the group's ``reset_interval``). It reads the run's step
    count, so do not wrap it in ``momentum_reset`` (a restarted count would shift the window).

    Pitfall of the published rule (kept as is): where :math:`v_{t-1} = 0` — the first active
    step with ``spam_clip_delay <= 1``, or a coordinate whose gradient was exactly zero since the
    last reset (an embedding row not seen yet) — every nonzero gradient is clipped to 0, so ``v``
    stays 0 and that coordinate does not move until the next reset. Keep ``spam_clip_delay >= 2``.

    Defaults from the official code: ``threshold=5000``, ``grad_accu_steps=20``.

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.spike import spam_clip
        >>> clip = gradkit.chain(spam_clip(spam_threshold=4.0, spam_beta2=0.5, spam_clip_delay=2))
        >>> params = [torch.zeros(2)]
        >>> state = clip.init(params)
        >>> _ = clip.update([torch.tensor([1.0, 1.0])], state, params)  # v = [0.5, 0.5]
        >>> clip.update([torch.tensor([-3.0, 1.0])], state, params)[0].tolist()  # bound sqrt(2)
        [-1.4142135381698608, 1.0]
    """
    return SpamClip(
        spam_threshold=spam_threshold,
        spam_beta2=spam_beta2,
        spam_clip_delay=spam_clip_delay,
        reset_interval=reset_interval,
    )


class MomentumReset(GroupTransform):
    """Zero ``inner``'s state every ``reset_interval`` steps; see :func:`momentum_reset`."""

    def __init__(self, inner: Transform, reset_interval: int, reset_step_count: bool) -> None:
        if len(inner.leaves()) != 1:
            raise TypeError("momentum_reset() wraps a single transform, not a chain")
        self.inner = inner
        adopt_state_of(self, inner)
        self.stage = inner.stage
        if inner.defaults.get("reset_interval", reset_interval) != reset_interval:
            raise ValueError(
                f"Invalid reset_interval: {reset_interval!r}; the wrapped {inner.name} declares "
                f"reset_interval={inner.defaults['reset_interval']!r} (give both the same value)"
            )
        defaults = {**inner.defaults, "reset_interval": reset_interval}
        super().__init__(**defaults, reset_step_count=reset_step_count)

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_count(hp, "reset_interval")
        check_bool(hp, "reset_step_count")
        if hasattr(self, "inner"):
            self.inner.validate(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return self.inner.init(params, hp)

    def update_group(self, updates, state, params, hp, steps, grads):
        interval = hp["reset_interval"]
        zero_at_resets_(state, steps, interval)
        if hp["reset_step_count"]:
            steps = [steps_since_reset(t, interval) for t in steps]
        ctx = Context([Segment(0, len(updates), hp)], list(steps), grads)
        return self.inner.update(updates, state, params, ctx)

    def __repr__(self) -> str:
        return f"momentum_reset({self.inner!r}, reset_interval={self.defaults['reset_interval']!r})"


class PendingMomentumReset(Transform):
    """``momentum_reset()`` without an inner transform: passed through an optimizer's
    ``transforms=``, it wraps each transform of that optimizer's update rule (stage ``"wrap"``)."""

    name = "momentum_reset"
    stage = "wrap"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_count(hp, "reset_interval")
        check_bool(hp, "reset_step_count")

    def wrap(self, inner: Transform) -> Transform:
        return MomentumReset(
            inner, self.defaults["reset_interval"], self.defaults["reset_step_count"]
        )

    def update(self, updates, state, params, ctx):
        raise TypeError(
            "momentum_reset() needs the transform whose state it resets: "
            "momentum_reset(scale_by_adam(), ...) in a chain, or pass momentum_reset() through an "
            "optimizer's transforms=[...] to wrap its update rule"
        )


def momentum_reset(
    inner: Transform | None = None, reset_interval: int = 500, reset_step_count: bool = True
) -> Transform:
    r"""Run ``inner`` (an update rule such as ``scale_by_adam()``) with its state zeroed every
    ``reset_interval`` steps: SPAM's and Stable-SPAM's momentum reset.

    On steps :math:`t` with :math:`t \bmod \Delta T = 0` every state tensor of ``inner`` (for Adam
    :math:`m` and :math:`v`) is set to zero *before* ``inner`` runs, so the reset step's update is
    built from the current gradient alone. With ``reset_step_count=True`` ``inner`` also sees its
    step count restart (1 on the reset step), so Adam's bias correction starts over — what the
    official Stable-SPAM does with ``state['step'] = 1``. With ``False`` (official SPAM) the count
    runs on, and Adam's first update after a reset is :math:`(1-\beta_1)\sqrt{1-\beta_2^t}/
    \sqrt{1-\beta_2}\,\operatorname{sign}(g)` (about :math:`2\operatorname{sign}(g)` at
    :math:`t = 500`); SPAM damps that with :func:`post_reset_warmup`.
    The state keeps ``inner``'s names (``"adam.exp_avg"``). ``reset_interval=0`` never resets.
    Without ``inner``, ``momentum_reset()`` goes into any optimizer's ``transforms=[...]`` and
    wraps each transform of its update rule (``gradkit.optim.AdamW(p, transforms=[
    momentum_reset(reset_interval=500)])``).

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.spike import momentum_reset
        >>> opt = gradkit.chain(momentum_reset(gradkit.trace(0.9), reset_interval=2))
        >>> params = [torch.zeros(1)]
        >>> state = opt.init(params)
        >>> [round(opt.update([torch.ones(1)], state, params)[0].item(), 4) for _ in range(3)]
        [1.0, 1.0, 1.9]
    """
    if inner is None:
        return PendingMomentumReset(
            reset_interval=reset_interval, reset_step_count=reset_step_count
        )
    return MomentumReset(inner, reset_interval, reset_step_count)


class PostResetWarmup(GroupTransform):
    name = "reset_warmup"
    stage = "update"  # via an optimizer's transforms=: after the update rule, before decay and lr

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_count(hp, "reset_interval")
        check_count(hp, "reset_warmup_steps")

    def update_group(self, updates, state, params, hp, steps, grads):
        interval, n = hp["reset_interval"], hp["reset_warmup_steps"]
        factors = [warmup_factor(t, interval, n) for t in steps]
        if all(f == 1.0 for f in factors):
            return updates
        return torch._foreach_mul(updates, factors)


def post_reset_warmup(reset_interval: int = 500, reset_warmup_steps: int = 150) -> Transform:
    r"""SPAM's cosine warm-up of the update over the ``N = reset_warmup_steps`` steps after each
    momentum reset (multiplies the update; no state).

    .. math::
        u \leftarrow s(c)\,u,\quad c = t \bmod \Delta T,\quad
        s(c) = 1 - 0.99\cdot\tfrac12\Big(1+\cos\frac{\pi c}{N+1}\Big)\ (c < N),\ s = 1\ (c \ge N)

    and :math:`s = 1` before the first reset. So the reset step is scaled by 0.01 and the factor
    rises to 1 over ``N`` steps. The formula is the official code's (``1 - CosineDecay(0.99, N)``,
    a ``CosineAnnealingLR`` with ``T_max = N + 1``); the paper says only "cosine warm-up". It is an
    ``"update"``-stage transform, so like the official code it does not scale the weight decay.
    Defaults: ``DeltaT=500``, ``warmup_steps=150`` (official README and code).
    """
    return PostResetWarmup(reset_interval=reset_interval, reset_warmup_steps=reset_warmup_steps)


# -- Stable-SPAM ----------------------------------------------------------------------------
def _scalar_state(params: Sequence[Tensor], *names: str) -> State:
    return {n: [torch.zeros((), dtype=p.dtype, device=p.device) for p in params] for n in names}


class AdaClip(GroupTransform):
    name = "ada_clip"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "ada_clip_gamma3")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return _scalar_state(params, "max_avg")

    def update_group(self, updates, state, params, hp, steps, grads):
        theta = hp["ada_clip_gamma3"]
        live = [i for i, u in enumerate(updates) if u.numel()]
        if not live:
            return list(updates)
        g = [updates[i] for i in live]
        max_avg = [state["max_avg"][i] for i in live]
        g_max = torch._foreach_norm(g, float("inf"))
        torch._foreach_lerp_(max_avg, g_max, 1.0 - theta)
        out = list(updates)
        for j, i in enumerate(live):
            bound = max_avg[j] / (1.0 - theta ** steps[i])
            # entries above the bound are scaled by bound / max|g| (so the largest lands on it)
            scale = bound / g_max[j].clamp_min(torch.finfo(g_max[j].dtype).tiny)
            out[i] = torch.where(g[j].abs() > bound, g[j] * scale, g[j])
        return out


def ada_clip(ada_clip_gamma3: float = 0.999) -> Transform:
    r"""Stable-SPAM's AdaClip: adaptive spike clipping against a running maximum, per tensor.

    .. math::
        g_{\max} = \max_i |g_{t,i}|,\quad m^{\max}_t = \gamma_3 m^{\max}_{t-1} + (1-\gamma_3)\,
        g_{\max},\quad \hat m^{\max}_t = \frac{m^{\max}_t}{1-\gamma_3^t},\quad
        g_{t,i} \leftarrow g_{t,i}\,\frac{\hat m^{\max}_t}{g_{\max}}\ \text{where}\ |g_{t,i}| >
        \hat m^{\max}_t

    (the paper's and code's :math:`\theta = \gamma_3`, default 0.999). The clipped entries are all
    scaled by the same factor, so the largest lands on the threshold and the others below it (the
    map is not monotone: an entry just above the threshold ends below an unclipped one just under
    it) — that is the published rule. State: ``max_avg`` (one scalar per tensor). The bias
    correction uses the parameter's own step count, never restarted (see
    :class:`gradkit.optim.spam.StableSPAM` for the official code's shared counter).
    """
    return AdaClip(ada_clip_gamma3=ada_clip_gamma3)


class AdaGN(GroupTransform):
    name = "ada_gn"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "ada_gn_gamma1")
        check_unit_interval(hp, "ada_gn_gamma2")
        check_positive(hp, "ada_gn_eps")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return _scalar_state(params, "norm_avg", "norm_sq_avg")

    def update_group(self, updates, state, params, hp, steps, grads):
        g1, g2, eps = hp["ada_gn_gamma1"], hp["ada_gn_gamma2"], hp["ada_gn_eps"]
        norm_avg, norm_sq_avg = state["norm_avg"], state["norm_sq_avg"]
        norms = torch._foreach_norm(updates)
        torch._foreach_lerp_(norm_avg, norms, 1.0 - g1)
        torch._foreach_mul_(norm_sq_avg, g2)
        torch._foreach_addcmul_(norm_sq_avg, norms, norms, 1.0 - g2)
        out = []
        for u, n, m, v, t in zip(updates, norms, norm_avg, norm_sq_avg, steps, strict=True):
            target = (m / (1.0 - g1**t)) / ((v / (1.0 - g2**t)).sqrt() + eps)
            # a zero gradient stays zero (official: normalize only when the norm is > 0)
            scale = torch.where(n > 0, target / n.clamp_min(torch.finfo(n.dtype).tiny), 1.0)
            out.append(u * scale)
        return out


def ada_gn(
    ada_gn_gamma1: float = 0.7, ada_gn_gamma2: float = 0.9, ada_gn_eps: float = 1e-8
) -> Transform:
    r"""Stable-SPAM's AdaGN: adaptive gradient-norm normalization, per tensor.

    .. math::
        n_t = \|g_t\|_2,\quad m_t = \gamma_1 m_{t-1} + (1-\gamma_1) n_t,\quad
        v_t = \gamma_2 v_{t-1} + (1-\gamma_2) n_t^2,\quad
        g_t \leftarrow \frac{g_t}{n_t}\cdot\frac{m_t/(1-\gamma_1^t)}{\sqrt{v_t/(1-\gamma_2^t)}+\epsilon}

    so each tensor's gradient keeps its direction and gets the norm
    :math:`\hat m_t/\sqrt{\hat v_t} \le 1` (mean over root-mean-square of its recent norms): about
    1 while the norms are steady, smaller while a spike inflates :math:`\hat v`. The output's
    scale no longer depends on the gradient's, so an Adam after it keeps :math:`v` at the
    normalized scale near an optimum (use a smaller learning rate than plain Adam's there). Defaults :math:`\gamma_1 = 0.7`, :math:`\gamma_2 = 0.9`
    (official README and code; the code comments list 0.85 / 0.99999 for BF16 runs),
    :math:`\epsilon = 10^{-8}` (the code reuses Adam's ``eps``). A zero gradient passes unchanged.
    State: ``norm_avg``, ``norm_sq_avg`` (one scalar each per tensor).
    """
    return AdaGN(ada_gn_gamma1=ada_gn_gamma1, ada_gn_gamma2=ada_gn_gamma2, ada_gn_eps=ada_gn_eps)


__all__ = [
    "AdaClip",
    "AdaGN",
    "MomentumReset",
    "PostResetWarmup",
    "SpamClip",
    "ada_clip",
    "ada_gn",
    "clip_spikes",
    "momentum_reset",
    "post_reset_warmup",
    "spam_clip",
    "warmup_factor",
]
