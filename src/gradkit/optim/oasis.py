"""OASIS: adaptive diagonal scaling from Hessian-vector products, with an automatic step size.

Jahani, Rusakov, Shi, Richtárik, Mahoney & Takáč, "Doubly Adaptive Scaled Algorithm for Machine
Learning Using Second-Order Information", ICLR 2022, arXiv:2109.05198 (Algorithm 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_bool, check_lr, check_positive, check_unit_interval
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim._curvature import DiagonalHessianOptimizer, hutchinson_diagonal

__all__ = ["OASIS", "ScaleByOASIS", "hutchinson_diagonal", "scale_by_oasis"]


def _total(tensors: list[Tensor]) -> float:
    return math.fsum(t.sum().item() for t in tensors)


def _scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


class ScaleByOASIS(GroupTransform):
    """See :class:`OASIS`. State: ``hessian``, ``hessian_step``; with ``adaptive_lr`` also
    ``prev_param``, ``prev_grad`` and the CPU scalars ``step_size`` and ``theta``."""

    name = "oasis"
    exact_state = frozenset({"prev_param", "prev_grad"})  # differences are used
    per_parameter = False  # the adaptive step size sums over the group

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_lr(hp)
        check_unit_interval(hp, "beta2")
        check_positive(hp, "alpha")
        check_bool(hp, "adaptive_lr")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {
            "hessian": [torch.zeros_like(p) for p in params],
            "hessian_step": [torch.tensor(-1.0, dtype=torch.float32) for _ in params],
        }
        if hp["adaptive_lr"]:
            state["prev_param"] = [torch.zeros_like(p) for p in params]
            state["prev_grad"] = [torch.zeros_like(p) for p in params]
            state["step_size"] = [_scalar(hp["lr"]) for _ in params]
            state["theta"] = [_scalar(math.inf) for _ in params]
        return state

    def update_group(self, updates, state, params, hp, steps, grads):
        scaling = torch._foreach_abs(state["hessian"])
        torch._foreach_clamp_min_(scaling, hp["alpha"])  # |D|_alpha
        out = torch._foreach_div(updates, scaling)
        if not hp["adaptive_lr"]:
            torch._foreach_mul_(out, -hp["lr"])
            return out
        if "prev_param" not in state:
            raise ValueError(
                "adaptive_lr was False when this optimizer's state was created, so it has no "
                "previous iterate; adaptive_lr can't be switched on later"
            )
        eta, theta = self._step_size(updates, state, params, hp, steps, scaling)
        etas = [hp["lr"] if t == 1 else eta for t in steps]
        torch._foreach_mul_(out, [-e for e in etas])
        torch._foreach_copy_(state["prev_param"], params)
        torch._foreach_copy_(state["prev_grad"], updates)
        for t, e, s, th in zip(steps, etas, state["step_size"], state["theta"], strict=True):
            s.fill_(e)
            th.fill_(math.inf if t == 1 else theta)
        return out

    @staticmethod
    def _step_size(updates, state, params, hp, steps, scaling) -> tuple[float, float]:
        r""":math:`\eta_k = \min(\sqrt{1+\theta_{k-1}}\,\eta_{k-1},\
        \|w_k-w_{k-1}\|_{\hat D}/(2\|g_k-g_{k-1}\|^*_{\hat D}))` over the group's parameters past
        their first step, and :math:`\theta_k = \eta_k/\eta_{k-1}`."""
        later = [i for i, t in enumerate(steps) if t > 1]
        if not later:
            return float(hp["lr"]), math.inf
        eta_prev = state["step_size"][later[0]].item()
        theta_prev = state["theta"][later[0]].item()
        pick = lambda xs: [xs[i] for i in later]  # noqa: E731
        dw = torch._foreach_sub(pick(params), pick(state["prev_param"]))
        dg = torch._foreach_sub(pick(updates), pick(state["prev_grad"]))
        d = pick(scaling)
        num = torch._foreach_mul(dw, dw)
        torch._foreach_mul_(num, d)  # ||dw||^2 in the D-norm
        den = torch._foreach_mul(dg, dg)
        torch._foreach_div_(den, d)  # ||dg||^2 in the dual norm
        return _next_step_size(_total(num), _total(den), eta_prev, theta_prev)


def _next_step_size(
    num_sum: float, den_sum: float, eta_prev: float, theta_prev: float
) -> tuple[float, float]:
    """(eta_k, theta_k) from the group's squared norms of w_k - w_{k-1} (D-norm) and
    g_k - g_{k-1} (dual norm), shared by the readable and the native path."""
    grow = math.sqrt(1.0 + theta_prev) * eta_prev
    bound = 0.5 * math.sqrt(num_sum / den_sum) if num_sum > 0 and den_sum > 0 else math.inf
    eta = min(grow, bound)
    if not math.isfinite(eta):  # no curvature seen yet and no growth limit: keep the step
        eta = eta_prev
    theta = eta / eta_prev if eta_prev > 0 else math.inf
    return eta, theta


def scale_by_oasis(
    lr: float = 1.0, beta2: float = 0.99, alpha: float = 1e-5, adaptive_lr: bool = True
) -> Transform:
    r"""The whole OASIS step (it applies its own step size; do not follow it with ``scale_by_lr``).

    :math:`u = -\eta_k\,|D_k|_\alpha^{-1} g_k`; see :class:`OASIS`. The estimates :math:`D_k`
    only arrive through :meth:`OASIS.update_hessian`.
    """
    return ScaleByOASIS(lr=lr, beta2=beta2, alpha=alpha, adaptive_lr=adaptive_lr)


@register(
    paper="Doubly Adaptive Scaled Algorithm for Machine Learning Using Second-Order Information",
    year=2022,
    url="https://arxiv.org/abs/2109.05198",
    state_floats=3,
)
class OASIS(DiagonalHessianOptimizer, GradkitOptimizer):
    r"""OASIS (Jahani et al., ICLR 2022): Hutchinson-diagonal scaling and an adaptive step size.

    Algorithm 1 of the paper, with :math:`g_k = \nabla F(w_k)` (or a minibatch gradient):

    .. math::
        D_k &= \beta_2 D_{k-1} + (1-\beta_2)\, z_k \odot \nabla^2 F(w_k) z_k,\qquad
        (\hat D_k)_{ii} = \max(|D_k|_{ii}, \alpha)\\
        \eta_k &= \min\Big(\sqrt{1+\theta_{k-1}}\,\eta_{k-1},\
        \frac{\|w_k - w_{k-1}\|_{\hat D_k}}{2\,\|g_k - g_{k-1}\|^*_{\hat D_k}}\Big),\qquad
        \theta_k = \eta_k / \eta_{k-1}\\
        w_{k+1} &= w_k - \eta_k\, \hat D_k^{-1} g_k

    with :math:`\|x\|_D^2 = x^\top D x`, :math:`\|x\|_D^{*2} = x^\top D^{-1} x`, and the first
    step :math:`w_1 = w_0 - \eta_0 \hat D_0^{-1} g_0`, :math:`\theta_0 = +\infty`. ``lr`` is
    :math:`\eta_0`; later step sizes are automatic (a local Lipschitz estimate in the
    :math:`\hat D`-norm, Malitsky & Mishchenko's rule). With ``adaptive_lr=False`` the step is
    :math:`\eta_k = ` ``lr`` (the paper's fixed-learning-rate variant; schedulers apply).

    Feed the curvature before each step with :meth:`update_hessian`, e.g. the estimate of
    :func:`hutchinson_diagonal` at the current parameters. The first estimate, given before the
    first step, *is* :math:`D_0` (the paper's warm start; average several probes there with
    ``samples=``); later ones enter the EMA. Without estimates :math:`\hat D = \alpha I` and the
    method is Malitsky-Mishchenko adaptive gradient descent with first step ``lr / alpha``.

    Defaults: ``lr=1.0`` (:math:`\eta_0`; the step adapts afterwards), ``beta2=0.99``,
    ``alpha=1e-5``. The paper tunes :math:`\beta_2` and :math:`\alpha` per problem; these are the
    values of the OASIS function in the Takáč group's public logistic-regression code (the
    authors', from a follow-up paper), not an official OASIS release, which we did not find.
    State: 3 parameter-sized tensors (:math:`D`, :math:`w_{k-1}`, :math:`g_{k-1}`), 1 with
    ``adaptive_lr=False``.

    Our choices where the paper is silent:

    * The norms and :math:`\eta_k` are over all parameters of a param group (the paper's single
      vector :math:`w`); each group adapts its own step size. A parameter's first step uses
      ``lr``; the step-size state is stored (identically) with each parameter.
    * When the Lipschitz estimate is undefined (:math:`w_k = w_{k-1}` or :math:`g_k = g_{k-1}`)
      the bound is :math:`+\infty`; if then :math:`\eta_k` would be infinite (only possible at
      :math:`k = 1`, where :math:`\theta_0 = \infty`) it stays :math:`\eta_{k-1}`.
    * In the stochastic setting the paper evaluates both gradients of the difference on the same
      minibatch :math:`I_k`; a ``step()`` only sees :math:`g_k`, so :math:`g_{k-1}` is the previous
      step's gradient (exact for full-batch training, which is how we test it).
    * No weight-decay argument: put a regularizer in the loss, so that the gradient and the
      Hessian estimate both see it (the paper's experiments add :math:`\frac\lambda2\|w\|^2`).

    Chain: ``maximize -> scale_by_oasis``.

    Example (full batch, one Hutchinson probe per step):
        >>> import torch
        >>> from gradkit.optim.oasis import OASIS, hutchinson_diagonal
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(64, 5), torch.randint(0, 2, (64,)).float()
        >>> w = torch.zeros(5, requires_grad=True)
        >>> def loss_fn():
        ...     bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)
        ...     return bce + 1e-2 * w.square().sum() / 2
        >>> opt = OASIS([w])
        >>> for _ in range(50):
        ...     opt.update_hessian(hutchinson_diagonal(loss_fn, [w], generator=opt.hessian_generator()))
        ...     opt.zero_grad()
        ...     loss_fn().backward()
        ...     _ = opt.step()
        >>> bool(w.grad.norm() < 1e-3)
        True
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1.0,
        beta2: float = 0.99,
        alpha: float = 1e-5,
        adaptive_lr: bool = True,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        self._hessian_owner = scale_by_oasis(lr, beta2, alpha, adaptive_lr)
        super().__init__(
            params, [self._hessian_owner], maximize=maximize, transforms=transforms,
            nonfinite=nonfinite, lr=lr, beta2=beta2, alpha=alpha, adaptive_lr=adaptive_lr,
            state_dtype=state_dtype,
        )  # fmt: skip

    def _hessian_beta(self, group: Mapping[str, Any]) -> float:
        return float(group["beta2"])

    def _warm_start(self, group: Mapping[str, Any]) -> bool:
        return True

    # -- native path: gk_oasis_sums, the step size here, gk_oasis_step --------------------------
    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        keys = ("hessian", "prev_param", "prev_grad") if hp["adaptive_lr"] else ("hessian",)
        args = (hp["lr"], hp["alpha"], hp["maximize"], hp["adaptive_lr"])
        return NativeSpec(
            "oasis_step", tuple(self._hessian_key(k) for k in keys), tuple(float(a) for a in args)
        )

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        # gk_oasis_sums reads every gradient ((g - g_prev)^2 / D) before gk_oasis_step writes
        return 1 if spec.hp[3] else None

    def _fast_step(self, params, work, grads, segments, state=None):
        # Readable path for a group mixing float32 and float64 (the step size sums over the
        # whole group, a kernel call takes one dtype) and for one switched to adaptive_lr after
        # its state was made (the readable path raises the error that explains it).
        prev = self._hessian_key("prev_param")

        def readable(seg) -> bool:
            if len({w.dtype for w in work[seg.start : seg.stop]}) > 1:
                return True
            return seg.hp["adaptive_lr"] and any(
                prev not in self.state[p] for p in params[seg.start : seg.stop]
            )

        slow = [s for s in segments if readable(s)]
        if not slow:
            return super()._fast_step(params, work, grads, segments, state)
        fast = [s for s in segments if s not in slow]
        rest = super()._fast_step(params, work, grads, fast, state) if fast else []
        return sorted([*rest, *slow], key=lambda s: s.start)

    def _run_native(self, spec, lists, steps, seg):
        lr, alpha, maximize, adaptive = spec.hp
        if not adaptive:
            _native.kernel("oasis_step").run(lists, steps, (-lr, alpha, maximize, 0.0))
            return
        entries = [self.state[p] for p in self._native_params]
        size_key, theta_key = self._hessian_key("step_size"), self._hessian_key("theta")
        later = [j for j, t in enumerate(steps.tolist()) if t > 1]
        first = [j for j, t in enumerate(steps.tolist()) if t <= 1]
        check = id(seg.hp) in self._checking  # deferred non-finite check: the sums read every g
        if check and first and self._skip_late(seg.hp, self._native_params, lists[1]):
            return
        if later:
            sub = [[ts[j] for j in later] for ts in lists]
            sums = torch.zeros(len(later), _native.OUT_WIDTH, dtype=torch.float64)
            _native.kernel("oasis_sums").run(sub, steps[later], (alpha, maximize), sums)
            finite = bool(first) or bool(sums[:, 1].isfinite().all())  # first: checked above
            if check and not finite and self._skip_late(seg.hp, self._native_params, lists[1]):
                return
            eta_prev = entries[later[0]][size_key].item()
            theta_prev = entries[later[0]][theta_key].item()
            eta, theta = _next_step_size(
                math.fsum(sums[:, 0].tolist()), math.fsum(sums[:, 1].tolist()), eta_prev,
                theta_prev,
            )  # fmt: skip
            _native.kernel("oasis_step").run(sub, steps[later], (-eta, alpha, maximize, 1.0))
            for j in later:
                entries[j][size_key].fill_(eta)
                entries[j][theta_key].fill_(theta)
        if first:  # a parameter's first step uses lr (theta_0 = inf)
            sub = [[ts[j] for j in first] for ts in lists]
            _native.kernel("oasis_step").run(sub, steps[first], (-lr, alpha, maximize, 1.0))
            for j in first:
                entries[j][size_key].fill_(lr)
                entries[j][theta_key].fill_(math.inf)
