"""XGrad: compute each step's gradient at the weights the optimizer is about to reach.

Guan, Li, Shi & Meng, "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction", IEEE
TPAMI 2024, arXiv:2305.18240 (and Guan, "Weight Prediction Boosts the Convergence of AdamW",
PAKDD 2023, arXiv:2302.00195). Official code: https://github.com/guanleics/XGrad (``SGD.py``,
``Adam.py``, ``AdamW.py``: ``load_predicted_weights``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from gradkit.core.validation import check_nonnegative
from gradkit.optim._base import Params, register
from gradkit.optim.adam import Adam, AdamW, adam_denominator, bias_corrections
from gradkit.optim.sgd import SGD

BASES: dict[str, type] = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}


@register(
    paper="XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
    year=2024,
    url="https://arxiv.org/abs/2305.18240",
    state_floats=2,
)
class XGrad(torch.optim.Optimizer):
    r"""XGrad weight prediction (Guan et al., 2024) around gradkit's SGD (momentum), Adam, AdamW.

    Before the forward pass the weights are moved to where ``steps_ahead`` (:math:`s`) more steps of
    the optimizer's own rule would take them, with its current state:

    .. math::
        \hat\theta_{t+s} = \theta_t - s\,\eta\,\Delta_t,\qquad
        \Delta_t = \begin{cases}
            b_t & \text{SGD momentum (its buffer)}\\
            \dfrac{m_t/(1-\beta_1^t)}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
                \;[+\,\lambda\theta_t]
                & \text{Adam [AdamW / decoupled decay]}
        \end{cases}

    (AMSGrad uses the running maximum of :math:`v`). The loss and gradient are computed at
    :math:`\hat\theta`, the weights are restored to :math:`\theta_t`, and the wrapped optimizer
    steps from :math:`\theta_t` with that gradient. At the first step (no state yet) there is
    nothing to predict with and :math:`\hat\theta = \theta`.

    Two ways to use it; both are the same algorithm::

        opt = XGrad(model.parameters(), lr=1e-3, base="AdamW", weight_decay=0.01)
        # 1. a context manager around forward and backward
        opt.zero_grad()
        with opt.predicted_weights():
            loss_fn(model(x), y).backward()
        opt.step()
        # 2. a closure, evaluated at the predicted weights
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)

    ``XGrad.wrap(optimizer, steps_ahead=1)`` wraps an existing ``SGD``/``Adam``/``AdamW`` (or a
    subclass). The wrapper *is* a ``torch.optim.Optimizer`` sharing the wrapped one's
    ``param_groups`` and ``state``, so LR schedulers, ``zero_grad`` and checkpoints work;
    ``steps_ahead`` is a per-group hyperparameter (saved in ``state_dict``, so resume is bit-exact
    with it; the prediction itself is a function of the saved state). ``opt.step()`` without a
    closure, outside the context manager, is the plain base step.

    Cost: one parameter-sized copy of the weights while the prediction is in place (restoring
    :math:`\theta_t` exactly), plus the elementwise prediction; no extra persistent state
    (``state_floats`` is the default base's, AdamW's 2).

    Official code and our choices:

    * The official ``AdamW.load_predicted_weights`` leaves out the decoupled decay term
      :math:`\lambda\theta_t` of AdamW's rule; we include it, since the paper predicts with the
      optimizer's own update rule (the difference is :math:`s\eta^2\lambda`-small per step).
    * The official code predicts only parameters whose ``.grad`` is set (so not after
      ``zero_grad(set_to_none=True)``); we predict every parameter that has optimizer state.
    * Nesterov SGD and SGD without momentum are rejected: the prediction needs the momentum
      buffer as the step (the paper's SGDM).
    * The official SGD is :math:`b_t = \mu b_{t-1} + (1-\tau) g_t` from :math:`b_0 = 0`; gradkit's
      SGD is torch's (first step copies). The prediction rule is the same: the buffer.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        *,
        base: str = "AdamW",
        steps_ahead: float = 1,
        **base_kwargs: Any,
    ) -> None:
        if base not in BASES:
            raise ValueError(
                f"Invalid base: {base!r} (choose one of {', '.join(map(repr, BASES))})"
            )
        self._setup(BASES[base](params, lr=lr, **base_kwargs), steps_ahead)

    @classmethod
    def wrap(cls, optimizer: torch.optim.Optimizer, steps_ahead: float = 1) -> XGrad:
        """Weight prediction around an existing gradkit ``SGD``, ``Adam`` or ``AdamW``."""
        self = cls.__new__(cls)
        self._setup(optimizer, steps_ahead)
        return self

    def _setup(self, optimizer: torch.optim.Optimizer, steps_ahead: float) -> None:
        if not isinstance(optimizer, tuple(BASES.values())):
            raise TypeError(
                f"XGrad wraps gradkit's SGD, Adam or AdamW, got {type(optimizer).__name__}"
            )
        check_nonnegative({"steps_ahead": steps_ahead}, "steps_ahead")
        self.optimizer = optimizer
        self._default_steps_ahead = steps_ahead
        for group in optimizer.param_groups:
            self._prepare_group(group)
        # torch.optim.Optimizer.__init__ minus the parameter handling (that is the base's)
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}
        self._patch_step_function()
        self._predicted: list[tuple[Tensor, Tensor]] | None = None

    # -- shared with the wrapped optimizer --------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return {**self.optimizer.defaults, "steps_ahead": self._default_steps_ahead}

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        del value  # the base owns its defaults

    def _prepare_group(self, group: dict[str, Any]) -> None:
        group.setdefault("steps_ahead", self._default_steps_ahead)
        check_nonnegative(group, "steps_ahead")
        if isinstance(self.optimizer, SGD) and (group["momentum"] == 0 or group["nesterov"]):
            raise ValueError(
                f"Invalid momentum: {group['momentum']!r} (nesterov={group['nesterov']!r}); "
                "XGrad predicts SGD's next step from its momentum buffer, so it needs momentum > 0 "
                "and nesterov=False"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)
        try:
            self._prepare_group(self.optimizer.param_groups[-1])
        except ValueError:
            self.optimizer.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
        for group in self.optimizer.param_groups:
            self._prepare_group(group)

    def __repr__(self) -> str:
        return f"XGrad({self.optimizer!r}, steps_ahead={self._default_steps_ahead!r})"

    # -- the method -------------------------------------------------------------------------
    @contextlib.contextmanager
    def predicted_weights(self) -> Iterator[None]:
        """Inside the block the parameters hold the predicted weights; restored exactly after."""
        if self._predicted is not None:
            raise RuntimeError("predicted_weights() is already active; it can't be nested")
        with torch.no_grad():
            self._predicted = self._move_to_prediction()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in self._predicted:
                    p.copy_(saved)
            self._predicted = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` (forward + backward) at the predicted weights, then step."""
        if self._predicted is not None:
            raise RuntimeError(
                "step() inside predicted_weights(): leave the block first, so the step starts "
                "from the current weights"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad(), self.predicted_weights():
                loss = closure()
        self.optimizer.step()
        return loss

    def _move_to_prediction(self) -> list[tuple[Tensor, Tensor]]:
        saved = []
        for group in self.param_groups:
            params = [p for p in group["params"] if self.state[p]]
            if not params or group["steps_ahead"] == 0:
                continue
            deltas = self.predicted_steps(group, params)
            for p, delta in zip(params, deltas, strict=True):
                saved.append((p, p.detach().clone()))
                p.copy_(p.to(delta.dtype) + delta)  # bf16 parameters: predicted in fp32
        return saved

    def predicted_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        r""":math:`\hat\theta - \theta = -s\eta\Delta` for parameters of ``group`` with state."""
        opt = self.optimizer
        # decoded (fp32) views when the wrapped optimizer stores its state compressed
        states = [{k: opt.read_state(p, k) for k in opt.state[p]} for p in params]
        scale = -float(group["steps_ahead"]) * float(group["lr"])
        if isinstance(self.optimizer, SGD):
            return torch._foreach_mul([s["trace.momentum_buffer"] for s in states], scale)
        return _adam_direction(group, params, states, scale, self._decoupled(group))

    def _decoupled(self, group: dict[str, Any]) -> bool:
        return isinstance(self.optimizer, AdamW) or bool(group.get("decoupled_weight_decay"))


def _adam_direction(group, params, states, scale, decoupled) -> list[Tensor]:
    b1, b2 = group["betas"]
    steps = [int(s["step"].item()) for s in states]
    second_key = "adam.max_exp_avg_sq" if group["amsgrad"] else "adam.exp_avg_sq"
    denom = adam_denominator([s[second_key] for s in states], b2, steps, group["eps"])
    delta = torch._foreach_div([s["adam.exp_avg"] for s in states], denom)
    torch._foreach_div_(delta, bias_corrections(b1, steps))
    wd = group["weight_decay"]
    if decoupled and wd != 0:
        work = [p.to(d.dtype) for p, d in zip(params, delta, strict=True)]
        torch._foreach_add_(delta, work, alpha=wd)
    torch._foreach_mul_(delta, scale)
    return delta
