r"""SPAM and Stable-SPAM: Adam with gradient-spike handling and periodic momentum resets.

Huang, Zhu, Jin, Liu, Wang & Liu, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
Training", ICLR 2025, arXiv:2501.06842. Official code: https://github.com/TianjinYellow/SPAM-Optimizer
(``galore_torch/SPAM.py``, commit e8185fb).

Huang, Hu, Zhang, Jin, Li, Shen, Chen, Liu, Wen, Wang & Liu, "Stable-SPAM: How to Train in 4-Bit
More Stably than 16-Bit Adam", 2025, arXiv:2502.17055. Official code:
https://github.com/TianjinYellow/StableSPAM (``galore_torch/stablespam.py``, commit 6a66da1).

Both are chains of the generic pieces in :mod:`gradkit.transforms.spike`; this module adds the one
piece that has to live inside the update rule, SPAM's clip against Adam's own second moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gradkit.core.transform import Transform
from gradkit.core.validation import check_nonnegative
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import ScaleByAdam, scale_by_adam
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.spike import (
    ada_clip,
    ada_gn,
    check_count,
    clip_spikes,
    momentum_reset,
    post_reset_warmup,
)


class ScaleBySpamAdam(ScaleByAdam):
    """Adam whose incoming gradient is first spike-clipped against its own ``exp_avg_sq``."""

    name = "spam"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        check_nonnegative(hp, "spam_threshold")
        check_count(hp, "spam_clip_delay")
        check_count(hp, "reset_interval")

    def update_group(self, updates, state, params, hp, steps, grads):
        clipped = clip_spikes(updates, state["exp_avg_sq"], steps, hp)
        return super().update_group(clipped, state, params, hp, steps, grads)


def scale_by_spam(
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    spam_threshold: float = 5000.0,
    spam_clip_delay: int = 20,
    reset_interval: int = 500,
) -> Transform:
    r"""Adam moments fed with SPAM's spike-clipped gradient (no reset, no learning rate).

    .. math::
        \tilde g_{t,i} = \operatorname{sign}(g_{t,i})\sqrt{\theta v_{t-1,i}}\ \text{where}\
        g_{t,i}^2 > \theta v_{t-1,i},\quad m_t, v_t \leftarrow \text{Adam}(\tilde g_t),\quad
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    Equal to ``chain(spam_clip(...), scale_by_adam(...))`` with one second moment instead of two.
    ``reset_interval`` only times the clip delay here; wrap it in
    ``momentum_reset(..., reset_step_count=False)`` to reset (it expects the run's step count, as
    the official code). State: ``exp_avg``, ``exp_avg_sq``.
    """
    return ScaleBySpamAdam(
        betas=betas,
        eps=eps,
        amsgrad=False,
        spam_threshold=spam_threshold,
        spam_clip_delay=spam_clip_delay,
        reset_interval=reset_interval,
    )


@register(
    paper="SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training",
    year=2025,
    url="https://arxiv.org/abs/2501.06842",
    state_floats=2,
)
class SPAM(GradkitOptimizer):
    r"""SPAM (Huang et al., ICLR 2025): Adam with spike-aware clipping, momentum reset every
    :math:`\Delta T` steps and a cosine warm-up of the update after each reset.

    .. math::
        m, v \leftarrow 0 \ \text{if}\ t \bmod \Delta T = 0,\qquad
        \tilde g_{t,i} = \operatorname{sign}(g_{t,i})\sqrt{\theta v_{t-1,i}}\ \text{where}\
        g_{t,i}^2 > \theta v_{t-1,i},

        m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde g_t^2,\quad
        \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\, s_t\,
        \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    with the warm-up factor :math:`s_t` of :func:`~gradkit.transforms.spike.post_reset_warmup`
    (0.01 on a reset step, rising to 1 over ``reset_warmup_steps``; 1 before the first reset). The
    clip compares with :math:`v_{t-1}` — the second moment *before* this step's update, not bias
    corrected, and (on a reset step) already zeroed — and is active only when
    :math:`t \bmod \Delta T \ge` ``spam_clip_delay``.

    Defaults (official code and README): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
    spam_threshold=5000`` (``threshold``), ``reset_interval=500`` (``DeltaT``),
    ``reset_warmup_steps=150`` (``warmup_steps`` / ``--warmup_epoch``), ``spam_clip_delay=20``
    (``grad_accu_steps``), ``weight_decay=0``. ``spam_threshold=0`` disables the clip and
    ``reset_interval=0`` the resets (as in the official code).

    Chain: ``maximize -> momentum_reset(scale_by_spam, reset_step_count=False) ->
    post_reset_warmup -> add_decayed_weights -> scale_by_lr``. Without extra ``transforms`` the
    whole step (reset, clip, Adam, warm-up, decay) runs as one native pass (``gk_spam``).

    Official code vs paper, and our choices:

    * Reset step. Moments are zeroed at steps :math:`t \equiv 0 \pmod{\Delta T}` before the
      update (the code: ``(total_step + 1) % DeltaT == 0``), but the bias-correction step count is
      *not* restarted, so the first update after a reset is about :math:`2\,\operatorname{sign}(g)`
      — the warm-up (scale 0.01 on that step) is what tames it. We follow the code: the count runs
      on (``reset_step_count=False``) and the warm-up is on. A restarted count is one flag away
      (``momentum_reset(..., reset_step_count=True)`` in a custom chain).
    * Clip delay. The clip is skipped for ``grad_accu_steps = 20`` steps after the start and after
      each reset (right after a reset :math:`v = 0`, so every entry would be clipped to 0). This
      is in the code, not in the paper's description of the clip; we keep it.
    * Warm-up formula. The paper says "cosine warm-up" over :math:`N` steps; the code uses
      ``1 - CosineDecay(0.99, N)``, i.e. :math:`s(c) = 1 - 0.99(1+\cos(\pi c/(N+1)))/2` for
      :math:`c < N`. We use the code's formula; the warm-up scales the Adam update only.
    * :math:`\epsilon`. The code adds ``eps`` to :math:`\sqrt{v_t}` and folds the bias corrections
      into the step size (``lr * sqrt(bc2) / bc1``), so its effective :math:`\epsilon` is
      :math:`\epsilon/\sqrt{1-\beta_2^t}`. We put :math:`\epsilon` on the bias-corrected root as
      the paper's Adam does (and :class:`~gradkit.optim.Adam`), default ``1e-6`` as the code.
    * Weight decay. The code applies ``p -= lr * wd * p`` *after* the update (to the updated
      parameter) and not scaled by the warm-up. We decay first, torch AdamW's order
      (:math:`\theta(1-\eta\lambda) - \eta s_t u_t`), also unscaled by the warm-up; the two differ
      by :math:`\eta^2\lambda s_t u_t`. Default 0 as the code and the paper's runs.
    * Counters. The code keeps one global step counter in ``self.state["total_step"]`` (which
      broke checkpoint/Lookahead ports, kozistr/pytorch_optimizer#342); we use each parameter's
      own step count (identical when every parameter gets a gradient each step), so resets of a
      parameter that skipped steps follow its own count. ``state_dict`` resume is exact.
    * The code mutates ``p.grad`` in place when clipping; we never modify gradients.
    * Kept as published: where :math:`v_{t-1} = 0` once the clip window is open (a coordinate
      whose gradient was exactly 0 since the last reset) every gradient is clipped to 0, so the
      coordinate stays frozen until the next reset; ``spam_clip_delay <= 1`` freezes everything.
    * Not implemented: the sparse-momentum variant (``density < 1``, random masks re-drawn at each
      reset) and ``correct_bias=False``.

    Checked against the official ``SPAM.py`` (run locally, not vendored): with ``eps`` negligible
    and no weight decay, parameters agree to 3e-13 over 90 float64 steps spanning three resets,
    warm-ups and clipped spikes.

    gradkit extras: ``transforms=[...]`` adds gradient transforms before the update rule;
    ``nonfinite="skip" | "raise" | "apply"`` (see :class:`gradkit.ChainOptimizer`).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        spam_threshold: float = 5000.0,
        reset_interval: int = 500,
        reset_warmup_steps: int = 150,
        spam_clip_delay: int = 20,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            momentum_reset(
                scale_by_spam(betas, eps, spam_threshold, spam_clip_delay, reset_interval),
                reset_interval,
                reset_step_count=False,
            ),
            post_reset_warmup(reset_interval, reset_warmup_steps),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            spam_threshold=spam_threshold, reset_interval=reset_interval,
            reset_warmup_steps=reset_warmup_steps, spam_clip_delay=spam_clip_delay,
        )  # fmt: skip

    def native_spec(self, hp):
        if hp.get("amsgrad", False):
            return None
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], hp["weight_decay"], hp["maximize"],
                hp["spam_threshold"], hp["spam_clip_delay"], hp["reset_interval"],
                hp["reset_warmup_steps"], hp["reset_step_count"])  # fmt: skip
        return NativeSpec(
            "spam", ("spam.exp_avg", "spam.exp_avg_sq"), tuple(float(a) for a in args)
        )


@register(
    paper="Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
    year=2025,
    url="https://arxiv.org/abs/2502.17055",
    state_floats=2,
)
class StableSPAM(GradkitOptimizer):
    r"""Stable-SPAM (Huang et al., 2025): AdaClip, then AdaGN, then Adam with momentum reset.

    Per parameter tensor, with its step count :math:`t`:

    .. math::
        g_{\max} = \max_i|g_{t,i}|,\quad m^{\max}_t = \gamma_3 m^{\max}_{t-1} + (1-\gamma_3)
        g_{\max},\quad g_{t,i} \leftarrow g_{t,i}\frac{\hat m^{\max}_t}{g_{\max}}\ \text{where}\
        |g_{t,i}| > \hat m^{\max}_t = \frac{m^{\max}_t}{1-\gamma_3^t}

        n_t = \|g_t\|,\quad \mu_t = \gamma_1\mu_{t-1} + (1-\gamma_1)n_t,\quad
        \nu_t = \gamma_2\nu_{t-1} + (1-\gamma_2)n_t^2,\quad
        g_t \leftarrow \frac{g_t}{n_t}\,\frac{\mu_t/(1-\gamma_1^t)}{\sqrt{\nu_t/(1-\gamma_2^t)}
        +\epsilon}

        m, v \leftarrow 0\ \text{if}\ t \bmod \Delta T = 0,\quad k = \text{steps since the reset},
        \quad \theta_t = \theta_{t-1}(1-\eta\lambda) - \eta\,\frac{m_t/(1-\beta_1^k)}
        {\sqrt{v_t/(1-\beta_2^k)}+\epsilon}

    Defaults (official code): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0``,
    ``ada_gn_gamma1=0.7`` (``gamma1``), ``ada_gn_gamma2=0.9`` (``gamma2``), ``ada_clip_gamma3=0.999``
    (``gamma3``, the paper's :math:`\theta`), ``reset_interval=1000`` (``update_proj_gap``; the
    README's 4-bit scripts use 500). ``eps`` also sets AdaGN's :math:`\epsilon` (group key
    ``ada_gn_eps``), as the code uses one ``eps`` for both.

    Chain: ``maximize -> ada_clip -> ada_gn -> momentum_reset(scale_by_adam) ->
    add_decayed_weights -> scale_by_lr``; state ``adam.exp_avg``, ``adam.exp_avg_sq`` and three
    scalars per tensor (``ada_clip.max_avg``, ``ada_gn.norm_avg``, ``ada_gn.norm_sq_avg``).
    Without extra ``transforms`` it runs natively (``gk_stable_spam``): a read of the gradient for
    :math:`g_{\max}`, a second for the clipped gradient's norm (it depends on :math:`g_{\max}`),
    then one pass for the update. In float32 the kernel sums the norm in double; torch's float32
    norm can be ~1e-6 off when one entry dominates, so the two paths agree to that.

    Official code vs paper, and our choices:

    * Reset step. The code sets ``state['exp_avg']`` to fresh zeros and ``state['step'] = 1`` but
      this step's update still uses the local references to the *old* moments with step-1 bias
      corrections (so scaled by :math:`\sqrt{1-\beta_2}/(1-\beta_1) \approx 0.32` relative to
      the uncorrected ratio :math:`m/\sqrt{v}`); the zeros take effect the next step, at step
      count 2. The paper resets before the update. We follow the paper: on a reset step the
      moments are zeroed before the update and the bias correction restarts at 1
      (``reset_step_count=True``), so later steps have the code's counts.
    * Shared step counter. The code bias-corrects AdaClip's and AdaGN's EMAs (never reset) with the
      same ``state['step']`` it restarts at each reset. After a reset the AdaClip threshold is then
      divided by :math:`1-\gamma_3^k` for small :math:`k` (about 500 times too large right after a
      reset, and never less than 1.58 times with resets every 1000 steps), which switches the
      clip off, and AdaGN's ratio is skewed. We bias-correct them with the parameter's own,
      never-restarted step count (the paper's equations).
    * No post-reset warm-up: unlike SPAM, the official Stable-SPAM has none (the restarted bias
      correction plays that role); add ``post_reset_warmup`` through ``transforms=`` if wanted.
    * Not implemented: the optional ``total_T`` cosine schedule (off by default in the code) that
      scales :math:`\gamma_1` and :math:`\beta_1` from 1 down to ``eta_min=0.5`` over training, and
      ``amsgrad`` (accepted by the code, unused in its scripts).
    * The code writes the clipped gradient into ``p.grad``; we never modify gradients. Weight decay
      is decoupled and applied before the update, as in the code (``p *= 1 - lr * wd``).

    Checked against the official ``stablespam.py`` (run locally, not vendored): identical to 2e-16
    over 90 float64 steps without resets; with resets the runs part at the first reset step, as
    the two choices above say they must.

    gradkit extras: ``transforms=[...]`` adds gradient transforms before AdaClip;
    ``nonfinite="skip" | "raise" | "apply"`` (see :class:`gradkit.ChainOptimizer`).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        ada_gn_gamma1: float = 0.7,
        ada_gn_gamma2: float = 0.9,
        ada_clip_gamma3: float = 0.999,
        reset_interval: int = 1000,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ada_clip(ada_clip_gamma3),
            ada_gn(ada_gn_gamma1, ada_gn_gamma2, eps),
            momentum_reset(scale_by_adam(betas, eps), reset_interval, reset_step_count=True),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, ada_gn_gamma1=ada_gn_gamma1,
            ada_gn_gamma2=ada_gn_gamma2, ada_clip_gamma3=ada_clip_gamma3,
            reset_interval=reset_interval,
        )  # fmt: skip

    def native_spec(self, hp):
        if hp.get("amsgrad", False):
            return None
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], hp["weight_decay"], hp["maximize"],
                hp["ada_gn_gamma1"], hp["ada_gn_gamma2"], hp["ada_clip_gamma3"], hp["ada_gn_eps"],
                hp["reset_interval"], hp["reset_step_count"], 0.0)  # fmt: skip
        return NativeSpec("stable_spam", STABLE_SPAM_STATE, tuple(float(a) for a in args))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 0  # max |g| of every tensor (AdaClip) before any write

    def _run_native(self, spec, lists, steps, seg):
        # max |g| of every tensor (AdaClip), then the clipped gradient's norm (AdaGN), the update
        self._run_checked(spec, lists, steps, seg)


STABLE_SPAM_STATE = ("adam.exp_avg", "adam.exp_avg_sq", "ada_clip.max_avg", "ada_gn.norm_avg",
                     "ada_gn.norm_sq_avg")  # fmt: skip
