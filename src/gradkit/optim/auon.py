"""AuON: unit-norm momentum updates rescaled by the RMS of their hyperbolic cosine.

Dipan Maity, "AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates",
arXiv:2509.24320 (2025). Official code: https://github.com/ryyzn9/AuON (``auon/optimizer.py``;
the paper's experiments ran the earlier single-file ``Auon_Adam_train.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import Transform
from gradkit.core.validation import check_bool, check_positive
from gradkit.optim._base import GradkitOptimizer, Params, register
from gradkit.optim.muon import MatrixOrAdamW, batched_newton_schulz, lr_ratio
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.orthogonalize import ORIGINAL

RMS_EPS = 1e-8  # the paper's constant in U = X / (rms + 1e-8)


def cosh_rms_scale(direction: Tensor, gamma: float) -> Tensor:
    r""":math:`X / (\sqrt{\mathrm{mean}(\cosh(\gamma X)^2)} + 10^{-8})`: one global shrink that
    grows with how spiky :math:`X` is (``cosh`` is only used to measure, never applied)."""
    rms = torch.cosh(direction * gamma).square().mean().sqrt()
    return direction / (rms + RMS_EPS)


class ScaleByAuON(MatrixOrAdamW):
    name = "auon"
    nonnegative_state = frozenset({"exp_avg_sq"})
    flag = "use_auon"

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        check_positive(hp, "eps")
        check_positive(hp, "gamma")
        check_bool(hp, "hybrid")
        steps = hp["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
            raise ValueError(f"Invalid ns_steps: {steps!r} (expected an integer in [1, 100))")

    def matrix_update(self, updates, buffers, hp):
        momenta = self.momentum(updates, buffers, hp)
        matrices = [u.reshape(u.shape[0], -1) for u in momenta]
        if hp["hybrid"]:  # in the parameter's dtype, same-shape matrices batched
            directions = batched_newton_schulz(
                matrices, hp["ns_steps"], ORIGINAL, hp["eps"], dtype=None
            )
        else:
            norms = torch._foreach_add(torch._foreach_norm(matrices), hp["eps"])
            directions = torch._foreach_div(matrices, norms)
        out = []
        for u, direction in zip(momenta, directions, strict=True):
            scaled = cosh_rms_scale(direction, hp["gamma"]).reshape(u.shape)
            out.append(scaled.mul_(lr_ratio(u.shape, hp["adjust_lr_fn"])))
        return out


def scale_by_auon(
    momentum: float = 0.95,
    nesterov: bool = True,
    gamma: float = 1.0,
    hybrid: bool = False,
    ns_steps: int = 1,
    eps: float = 1e-7,
    adjust_lr_fn: str | None = None,
    use_auon: bool | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.95),
    adam_eps: float = 1e-10,
) -> Transform:
    """AuON's direction for matrices, Adam's for the rest (no decay, no ``-lr``); see
    :class:`AuON`."""
    return ScaleByAuON(
        momentum=momentum, nesterov=nesterov, gamma=gamma, hybrid=hybrid, ns_steps=ns_steps,
        eps=eps, adjust_lr_fn=adjust_lr_fn, use_auon=use_auon, adam_betas=adam_betas,
        adam_eps=adam_eps,
    )  # fmt: skip


@register(
    paper="AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates",
    year=2025,
    url="https://arxiv.org/abs/2509.24320",
    state_floats=1,
)
class AuON(GradkitOptimizer):
    r"""AuON (Maity, 2025): Muon's momentum, bounded without orthogonalizing it.

    For each matrix parameter :math:`W\in\mathbb{R}^{m\times n}` (n-D weights flattened to
    ``(shape[0], -1)`` as in Muon), with :math:`N = mn`:

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t,\quad
        \tilde B_t = (1-\mu) G_t + \mu B_t\ (\text{nesterov; else } B_t),\quad
        X_t = \frac{\tilde B_t}{\|\tilde B_t\|_F + \epsilon}

    .. math::
        U_t = \frac{X_t}{\sqrt{\tfrac1N \sum_{ij}\cosh(\gamma X_{t,ij})^2} + 10^{-8}},\qquad
        W_t = (1-\eta\lambda) W_{t-1} - \eta\,\sqrt{\max(1, m/n)}\; U_t .

    :math:`\|X\|_F \approx 1` bounds :math:`\|X\|_2 \le 1` (the spectral-norm trust region of
    the paper's section 2.3) in :math:`O(mn)` time; the RMS of :math:`\cosh` is at least 1 and
    grows with heavy tails, so spiky updates are shrunk more, while signs and ratios inside
    :math:`X` are kept (section 3.1). ``hybrid=True`` is Hybrid-AuON (section 3.2):
    :math:`X_t` is instead ``ns_steps`` (default 1, the paper's single) quintic Newton-Schulz
    iterations of :math:`\tilde B_t` with the original coefficients, in the parameter's dtype,
    followed by the same cosh-RMS scaling. Non-matrix parameters go to AdamW, routed by the
    group key ``use_auon`` exactly as :class:`~gradkit.optim.muon.Muon`'s ``use_muon`` (the
    paper trains embeddings, norms and vectors with AdamW).

    **The rule implemented, and why.** It is the paper's equations (arXiv v1, section 3.1:
    ``update = G/(||G|| + 1e-7)``, ``rms = ||cosh(update)||_F / sqrt(N)``,
    ``U = update/(rms + 1e-8)``), which is also what the official code the paper's experiments
    ran (``Auon_Adam_train.py``, Oct 2025) computes, with its EMA-Nesterov momentum 0.95 and its
    Muon-style ``sqrt(max(1, m/n))`` learning-rate factor. ``gamma`` (default 1, i.e. the paper)
    generalises the current official code's temperature inside ``cosh``.

    Defaults: ``lr=0.055`` (the paper's tuned language-model rate), ``momentum=0.95``,
    ``nesterov=True``, ``weight_decay=0``, ``gamma=1``; AdamW fallback ``adam_betas=(0.9, 0.95),
    adam_eps=1e-10`` as in :class:`~gradkit.optim.muon.Muon`. Give the AdamW parameters their
    own group and ``lr`` (the official script uses 0.1x the AuON rate for them).

    Where the official code deviates (the January 2026 ``auon/optimizer.py``):

    * it divides the **un-normalised** momentum by the RMS, ``update = G/(r + 1e-8)`` with
      ``r`` computed from the normalised ``G``, so the step scales with the gradient instead of
      being unit-norm as the paper (and the method's name) says — we follow the paper;
    * ``gamma=1.5`` inside ``cosh`` (we default to the paper's 1; pass ``gamma=1.5`` for it);
    * no ``sqrt(max(1, m/n))`` factor, and default ``lr=0.24`` (the earlier code had the factor;
      we keep it);
    * Hybrid-AuON runs 5 Newton-Schulz steps (the paper: one; ``ns_steps`` selects) and also
      applies the cosh scaling to vectors (we route vectors to AdamW);
    * the Nesterov blend is written into ``p.grad`` in place (``grad.lerp_``), corrupting the
      caller's gradient — gradkit never modifies gradients;
    * a zero momentum skips the step after weight decay was applied; here a zero momentum gives a
      zero update (the ``eps`` terms) and the decay is applied as on any step.

    State: ``auon.momentum_buffer`` (matrices) or ``auon.exp_avg`` / ``auon.exp_avg_sq`` (AdamW
    parameters); the other keys hold empty tensors.

    Example:
        >>> import torch
        >>> from gradkit.optim.auon import AuON
        >>> w = torch.nn.Parameter(torch.randn(8, 4))
        >>> opt = AuON([w], lr=0.05)
        >>> w.pow(2).sum().backward()
        >>> _ = opt.step()
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.055,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        gamma: float = 1.0,
        nesterov: bool = True,
        hybrid: bool = False,
        ns_steps: int = 1,
        eps: float = 1e-7,
        *,
        adjust_lr_fn: str | None = None,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
        use_auon: bool | None = None,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        direction = scale_by_auon(
            momentum, nesterov, gamma, hybrid, ns_steps, eps, adjust_lr_fn, use_auon,
            adam_betas, adam_eps,
        )  # fmt: skip
        core = [direction, add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, momentum=momentum, weight_decay=weight_decay, gamma=gamma,
            nesterov=nesterov, hybrid=hybrid, ns_steps=ns_steps, eps=eps,
            adjust_lr_fn=adjust_lr_fn, adam_betas=adam_betas, adam_eps=adam_eps,
            use_auon=use_auon,
        )  # fmt: skip
