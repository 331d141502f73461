"""MARS-AdamW: AdamW on a variance-reduced, clipped gradient estimate.

Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models", arXiv:2411.10438, 2024 (ICML 2025). Official code: https://github.com/AGI-Arena/MARS
(``MARS/optimizers/mars.py``, training loop ``MARS/train_mars.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.guards import NonFiniteGradientError, nonfinite_indices
from gradkit.core.optimizer import LOW_PRECISION
from gradkit.core.transform import GroupTransform, Segment, State, Transform, zeros_state
from gradkit.core.validation import (
    check_betas,
    check_bool,
    check_lr,
    check_nonnegative,
    check_positive,
)
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.transforms.basic import scale_by_lr


def uses_mars(param: Tensor, hp: Mapping[str, Any]) -> bool:
    """Whether ``param`` gets the MARS update (2-D, or any shape with ``optimize_1d``) rather than
    the AdamW fallback."""
    return bool(hp["optimize_1d"]) or param.ndim == 2


def _adam_direction(
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    inputs: list[Tensor],
    betas: tuple[float, float],
    eps: float,
    steps: list[int],
) -> list[Tensor]:
    r"""Update the moments with ``inputs``; return :math:`\hat m/(\sqrt{\hat v}+\epsilon)`."""
    b1, b2 = betas
    update_moments(exp_avg, exp_avg_sq, inputs, b1, b2)
    out = torch._foreach_div(exp_avg, adam_denominator(exp_avg_sq, b2, steps, eps))
    torch._foreach_div_(out, bias_corrections(b1, steps))
    return out


def _pick(items: Sequence[Any], index: list[int]) -> list[Any]:
    return [items[i] for i in index]


def _check_correction_buffers(last: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    if any(buf.shape != g.shape for buf, g in zip(last, grads, strict=True)):
        raise ValueError(
            "optimize_1d was False when this optimizer's state was created, so some "
            "parameters have no MARS buffers; it can't be switched on later"
        )


class ScaleByMARS(GroupTransform):
    """See :class:`MARS`. State: ``exp_avg``, ``exp_avg_sq``, ``last_grad`` (plus ``next_grad``,
    ``next_grad_step``, ``last_grad_step`` with ``exact=True``); parameters on the AdamW fallback
    keep an empty ``last_grad`` / ``next_grad``."""

    name = "mars"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_nonnegative(hp, "weight_decay")
        check_nonnegative(hp, "gamma")
        check_bool(hp, "exact")
        check_bool(hp, "optimize_1d")
        check_lr(hp, "lr_1d")
        try:
            check_betas(hp, 2, "betas_1d")
        except ValueError as err:
            raise ValueError(f"Invalid betas_1d: {hp['betas_1d']!r} ({err})") from None
        check_nonnegative(hp, "weight_decay_1d")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        def correction_buffer(p: Tensor) -> Tensor:
            return torch.zeros_like(p) if uses_mars(p, hp) else p.new_empty(0)

        state = {
            **zeros_state(params, "exp_avg", "exp_avg_sq"),
            "last_grad": [correction_buffer(p) for p in params],
        }
        if hp["exact"]:
            state["next_grad"] = [correction_buffer(p) for p in params]
            # step counts at which the stored gradients were recorded (-1: never); CPU scalars
            for key in ("next_grad_step", "last_grad_step"):
                state[key] = [torch.tensor(-1.0, dtype=torch.float64) for _ in params]
        return state

    def update_group(self, updates, state, params, hp, steps, grads):
        mars = [i for i, p in enumerate(params) if uses_mars(p, hp)]
        fallback = [i for i, p in enumerate(params) if not uses_mars(p, hp)]
        out: list[Tensor] = list(updates)
        if mars:
            sub = {k: _pick(v, mars) for k, v in state.items()}
            directions = self._mars(
                _pick(updates, mars), sub, _pick(params, mars), hp, _pick(steps, mars)
            )
            for i, d in zip(mars, directions, strict=True):
                out[i] = d
        if fallback:
            sub = {k: _pick(v, fallback) for k, v in state.items()}
            directions = self._adamw(
                _pick(updates, fallback), sub, _pick(params, fallback), hp, _pick(steps, fallback)
            )
            for i, d in zip(fallback, directions, strict=True):
                out[i] = d
        return out

    def _mars(self, grads, state, params, hp, steps) -> list[Tensor]:
        b1 = hp["betas"][0]
        last = state["last_grad"]
        _check_correction_buffers(last, grads)
        # c_t = g_t + gamma * b1 / (1 - b1) * (g_t - g_prev); none at t = 1 (x_0 = x_1)
        scale = hp["gamma"] * b1 / (1.0 - b1)
        coefs = [0.0 if t == 1 else scale for t in steps]
        c = torch._foreach_sub(grads, last)
        torch._foreach_mul_(c, coefs)
        torch._foreach_add_(c, grads)
        if hp["exact"] and hp.get("nonfinite", "apply") != "apply":
            # a non-finite recorded gradient (recorded under nonfinite="skip") is not used
            finite = [n.isfinite() for n in torch._foreach_norm(last, float("inf"))]
            c = [torch.where(f, ci, g) for f, ci, g in zip(finite, c, grads, strict=True)]
        norms = torch._foreach_norm(c)
        torch._foreach_clamp_min_(norms, 1.0)
        torch._foreach_div_(c, norms)  # unit norm if larger (per tensor), without a host sync
        out = _adam_direction(
            state["exp_avg"], state["exp_avg_sq"], c, hp["betas"], hp["eps"], steps
        )
        if hp["weight_decay"] != 0:
            torch._foreach_add_(out, params, alpha=hp["weight_decay"])
        if hp["exact"]:
            self._rotate(state, steps)
        else:
            # a copy: the official code keeps a reference to p.grad, which in-place zeroing empties
            torch._foreach_copy_(last, grads)
        return out

    @staticmethod
    def _rotate(state: State, steps: list[int]) -> None:
        """The gradient recorded before step t becomes the previous-parameter gradient of t + 1."""
        for i, t in enumerate(steps):
            if state["next_grad_step"][i].item() == t - 1:
                state["last_grad"][i].copy_(state["next_grad"][i])
                state["last_grad_step"][i].fill_(t - 1)

    @staticmethod
    def _adamw(grads, state, params, hp, steps) -> list[Tensor]:
        out = _adam_direction(
            state["exp_avg"], state["exp_avg_sq"], grads, hp["betas_1d"], hp["eps"], steps
        )
        if hp["weight_decay_1d"] != 0:
            torch._foreach_add_(out, params, alpha=hp["weight_decay_1d"])
        # lr_1d follows the group's learning-rate schedule: lr_1d * lr / initial_lr
        base = hp.get("initial_lr", hp["lr"])
        torch._foreach_mul_(out, hp["lr_1d"] / base if base > 0 else 0.0)
        return out


def scale_by_mars(
    betas: tuple[float, float] = (0.95, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gamma: float = 0.025,
    optimize_1d: bool = False,
    lr_1d: float = 3e-3,
    betas_1d: tuple[float, float] = (0.9, 0.95),
    weight_decay_1d: float = 0.1,
) -> Transform:
    r"""MARS-AdamW's direction, approximate form, with its decoupled weight decays (no ``-lr``).

    Follow it with :func:`~gradkit.scale_by_lr`. The exact form needs
    :meth:`MARS.record_next_grad`, so it is only available through :class:`MARS`.
    """
    return ScaleByMARS(
        betas=betas, eps=eps, weight_decay=weight_decay, gamma=gamma, exact=False,
        optimize_1d=optimize_1d, lr_1d=lr_1d, betas_1d=betas_1d, weight_decay_1d=weight_decay_1d,
    )  # fmt: skip


@register(
    paper="MARS: Unleashing the Power of Variance Reduction for Training Large Models",
    year=2024,
    url="https://arxiv.org/abs/2411.10438",
    state_floats=3,
)
class MARS(GradkitOptimizer):
    r"""MARS-AdamW (Yuan et al., 2024): AdamW on a scaled recursive-momentum gradient estimate.

    For each 2-D parameter (every parameter with ``optimize_1d=True``):

    .. math::
        c_t &= g_t + \gamma\,\frac{\beta_1}{1-\beta_1}\,\big(g_t - \tilde g_{t-1}\big),\qquad
        \tilde c_t = c_t / \max(1, \|c_t\|)\\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\tilde c_t,\qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde c_t^2\\
        x_{t+1} &= x_t - \eta_t\Big(\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}
        + \lambda x_t\Big)

    where :math:`g_t = \nabla f(x_t, \xi_t)` and :math:`\|\cdot\|` is the 2-norm of the whole
    tensor. :math:`\tilde g_{t-1}` is

    * **approximate form** (default, MARS-approx): the previous step's gradient
      :math:`\nabla f(x_{t-1}, \xi_{t-1})`, one extra buffer;
    * **exact form** (``exact=True``): the gradient of the *current* batch at the *previous*
      parameters, :math:`\nabla f(x_{t-1}, \xi_t)`. It costs a second backward pass per step:
      before each ``step()``, compute the gradient of the **next** batch at the current parameters
      and call :meth:`record_next_grad`; the next step uses it (see the example). Two buffers.

    At :math:`t = 1` there are no previous parameters and the correction is 0 (:math:`c_1 = g_1`,
    clipped), the paper's :math:`x_0 = x_1`. Parameters that are not 2-D (biases, norms, and also
    conv kernels, as in the official code) get AdamW with ``betas_1d``, ``lr_1d`` and
    ``weight_decay_1d`` instead, unless ``optimize_1d=True``.

    Defaults (official code): ``lr=3e-3, betas=(0.95, 0.99), eps=1e-8, weight_decay=0,
    gamma=0.025, optimize_1d=False, lr_1d=3e-3, betas_1d=(0.9, 0.95), weight_decay_1d=0.1``.
    State: 3 parameter-sized tensors for MARS parameters (4 in exact mode), 2 for the fallback.

    Official code and our choices:

    * **Aliased previous gradient.** In the approximate form the official code stores
      ``state['last_grad'] = grad``, a reference to ``p.grad``: with in-place ``zero_grad``
      (``set_to_none=False``) the "previous" gradient is the current one at the next step and MARS
      silently becomes AdamW on the clipped gradient. We store a copy.
    * **First step.** The official code starts from ``last_grad = 0``, so
      :math:`c_1 = (1 + \gamma\beta_1/(1-\beta_1))\,g_1` (1.475 :math:`g_1` at the defaults) before
      clipping; timm uses :math:`c_1 = g_1` without clipping. We apply no correction at
      :math:`t = 1` and clip as at every step.
    * **Per-group 1-D hyperparameters.** The official code reads ``betas_1d``, ``lr_1d``,
      ``weight_decay_1d``, ``gamma``, ``eps`` and ``optimize_1d`` from the constructor only, so a
      "no decay" param group still decays its biases with ``weight_decay_1d=0.1``. Here every one
      is a param-group hyperparameter. As in the official code (``lr_1d_factor = lr_1d / lr``), the
      1-D learning rate follows the group's schedule: it is ``lr_1d * lr / initial_lr`` where a
      torch LR scheduler has recorded ``initial_lr``, and ``lr_1d`` otherwise.
    * **Clipping** divides by :math:`\max(1, \|c_t\|)` (equal to the official ``if norm > 1``
      without a host synchronisation, as the official fused version does).
    * **Exact form protocol.** The official code needs two calls per step
      (``update_previous_grad()`` before, ``update_last_grad()`` after ``step()``); here
      :meth:`record_next_grad` is the only one, ``step()`` does the rest, and a step that would
      use a missing recording raises ``RuntimeError`` instead of silently using a stale one. The
      recorded gradient is ``p.grad`` as it is (negated under ``maximize``); gradient transforms
      passed in ``transforms=[...]`` are not applied to it, so clip ``p.grad`` yourself (as the
      official training loop does for both backward passes) if you clip.
    * Only the AdamW instance is implemented (no ``mars-lion``, ``mars-shampoo``, ``amsgrad``).

    Chain: ``maximize -> scale_by_mars -> scale_by_lr``.

    Example (exact form; the approximate form is the usual ``backward(); step()`` loop):
        >>> import torch
        >>> from gradkit.optim.mars import MARS
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 1)
        >>> batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(5)]
        >>> def backward(batch):
        ...     x, y = batch
        ...     torch.nn.functional.mse_loss(model(x), y).backward()
        >>> opt = MARS(model.parameters(), lr=1e-2, exact=True)
        >>> for batch, next_batch in zip(batches, [*batches[1:], None]):
        ...     if next_batch is not None:
        ...         opt.zero_grad()
        ...         backward(next_batch)    # the next batch at the current parameters x_t:
        ...         opt.record_next_grad()  # the next step's grad at its previous parameters
        ...     opt.zero_grad()
        ...     backward(batch)
        ...     _ = opt.step()
    """

    def __init__(
        self,
        params: Params,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gamma: float = 0.025,
        exact: bool = False,
        optimize_1d: bool = False,
        lr_1d: float = 3e-3,
        betas_1d: tuple[float, float] = (0.9, 0.95),
        weight_decay_1d: float = 0.1,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        self._mars = ScaleByMARS(
            betas=betas, eps=eps, weight_decay=weight_decay, gamma=gamma, exact=exact,
            optimize_1d=optimize_1d, lr_1d=lr_1d, betas_1d=betas_1d,
            weight_decay_1d=weight_decay_1d,
        )  # fmt: skip
        super().__init__(
            params, [self._mars, scale_by_lr(lr)], maximize=maximize, transforms=transforms,
            nonfinite=nonfinite, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            state_dtype=state_dtype,
            gamma=gamma, exact=exact, optimize_1d=optimize_1d, lr_1d=lr_1d, betas_1d=betas_1d,
            weight_decay_1d=weight_decay_1d,
        )  # fmt: skip
        index = next(i for i, t in enumerate(self.transform.transforms) if t is self._mars)
        self._prefix = self.transform.namespaces[index] + "."
        self._warned_record = False

    def native_spec(self, hp):
        if hp["exact"]:
            return None  # the exact form's recorded-gradient bookkeeping stays readable
        b1, b2 = hp["betas"]
        keys = tuple(self._prefix + k for k in ("exp_avg", "exp_avg_sq", "last_grad"))
        args = (hp["lr"], b1, b2, hp["eps"], hp["weight_decay"], hp["gamma"], hp["maximize"], 0)
        return NativeSpec("mars", keys, tuple(float(a) for a in args))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 0  # ||c|| of every MARS tensor before any write (1-D tensors: checked first)

    def _run_native(self, spec, lists, steps, seg):
        """MARS tensors through ``gk_mars`` (two passes: the norm of the corrected gradient, then
        the update); the others through ``gk_adam`` with the 1-D hyperparameters."""
        hp = seg.hp
        mars = [j for j, w in enumerate(lists[0]) if uses_mars(w, hp)]
        rest = [j for j, w in enumerate(lists[0]) if not uses_mars(w, hp)]
        # a deferred non-finite check (ChainOptimizer._deferred_checks): the AdamW-fallback
        # gradients (vectors, a small share) are read here, the MARS ones by gk_mars's first pass
        check = id(hp) in self._checking
        grads = lists[1]
        bad_rest = check and rest and nonfinite_indices([grads[j] for j in rest])
        if bad_rest and self._skip_late(hp, self._native_params, grads):
            return
        if mars:
            sub = [_pick(ts, mars) for ts in lists]
            _check_correction_buffers(sub[4], sub[1])
            if self._run_checked(spec, sub, steps[mars], seg) is None:
                return  # skipped: nothing was written
        if rest:
            b1, b2 = hp["betas_1d"]
            base = hp.get("initial_lr", hp["lr"])
            lr = float(hp["lr"]) * (hp["lr_1d"] / base if base > 0 else 0.0)
            args = (lr, b1, b2, hp["eps"], hp["weight_decay_1d"], 0.0, hp["maximize"], 0.0)
            sub = [_pick(ts, rest) for ts in lists[:4]]  # no last_grad on the AdamW fallback
            _native.kernel("adam").run(sub, steps[rest], tuple(float(a) for a in args))

    def _exact_params(self, group: dict[str, Any]) -> list[Tensor]:
        if not group["exact"]:
            return []
        return [p for p in group["params"] if p.grad is not None and uses_mars(p, group)]

    def _key(self, p: Tensor, name: str) -> Tensor:
        try:
            return self.state[p][self._prefix + name]
        except KeyError:
            raise ValueError(
                "exact was False when this parameter's MARS state was created, so it has no "
                "exact-mode buffers; exact can't be switched on later"
            ) from None

    @torch.no_grad()
    def record_next_grad(self) -> None:
        """Record ``p.grad`` as the next step's gradient at its previous parameters (exact form).

        Call it after back-propagating the **next** batch at the **current** parameters, before
        ``zero_grad()`` and the current batch's backward pass and ``step()``; see the class
        example. Only groups with ``exact=True`` and their MARS (2-D) parameters are recorded.
        A non-finite gradient raises under ``nonfinite="raise"``; under ``"skip"`` it is recorded
        with a warning and the step that would use it applies no correction to that tensor.
        """
        for index, group in enumerate(self.param_groups):
            params = self._exact_params(group)
            if not params:
                continue
            grads = [-p.grad if group["maximize"] else p.grad for p in params]
            self._check_recorded(index, group, params, grads)
            work = [p.float() if p.dtype in LOW_PRECISION else p for p in params]
            self._init_state(params, work, [Segment(0, len(params), group)])
            for p, g in zip(params, grads, strict=True):
                self._key(p, "next_grad")  # raises a clear error when exact mode was off
                buffer = self.read_state(p, self._prefix + "next_grad")  # fp32 (decoded) view
                buffer.copy_(g)
                self.write_state(p, self._prefix + "next_grad", buffer)
                self._key(p, "next_grad_step").fill_(self.state[p]["step"])

    def _check_recorded(
        self, index: int, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        if group["nonfinite"] == "apply":
            return
        bad = nonfinite_indices(grads)
        if not bad:
            return
        position = bad[0]
        message = f"non-finite gradient in param_groups[{index}] (tensor {position} recorded)"
        if group["nonfinite"] == "raise":
            raise NonFiniteGradientError(f"{message} in record_next_grad(); nothing was recorded")
        if not self._warned_record:
            self._warned_record = True
            warnings.warn(
                f"{message}: the next step applies no MARS correction to the affected tensors. "
                "This warning is shown once.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _check_recordings(self) -> None:
        for group in self.param_groups:
            for p in self._exact_params(group):
                if not self.state[p]:
                    continue  # first step: no correction needed
                done = int(self.state[p]["step"].item())
                if self._key(p, "last_grad_step").item() != done - 1:
                    raise RuntimeError(
                        f"MARS(exact=True): no gradient at the previous parameters for step "
                        f"{done + 1} of a parameter of shape {tuple(p.shape)}; call "
                        "record_next_grad() after back-propagating the next batch, before each "
                        "step() (see the MARS docstring), or use exact=False"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_recordings()
        super().step()
        return loss
