r"""Safe step sizes for softmax cross-entropy: the "Ghosts of Softmax" radius.

Sao, "Ghosts of Softmax: Complex Singularities That Limit Safe Step Sizes in Cross-Entropy",
arXiv:2603.13552 (2026); reference code github.com/piyush314/ghosts-of-softmax
(``experiments/lrspike/run.py::compute_rho_jvp``).

Move the parameters along a unit direction :math:`u` by a step length :math:`\tau`. To first
order every logit moves linearly, :math:`z_k(\tau) \approx z_k + a_k\tau` with directional
derivatives :math:`a_k = \nabla z_k \cdot u` (one Jacobian-vector product). The cross-entropy
:math:`\log\sum_j e^{z_j} - z_y` is then analytic in :math:`\tau` except where
:math:`\sum_j e^{z_j + a_j\tau} = 0`, so those complex zeros bound the radius within which its
Taylor series along :math:`u` can be trusted:

* multiclass lower bound :math:`\rho_a = \pi / \Delta_a`, :math:`\Delta_a = \max_k a_k - \min_k a_k`
  (:func:`softmax_radius`, the minimum over the samples of the batch);
* two classes, exactly :math:`\rho^* = \sqrt{\delta^2 + \pi^2} / \Delta_a` with logit gap
  :math:`\delta = z_1 - z_2` (:func:`binary_exact_radius`).

The paper reports no failure while :math:`r = \tau/\rho_a < 1` and collapse once :math:`r \ge 1`;
:class:`SafeStep` wraps any optimizer and shortens its proposed step to :math:`\tau \le \rho_a`.

Cheaper proxies in the reference repository (:math:`\pi/(\max z - \min z)` from the logits alone,
:math:`(\pi/2)/\|\nabla\|`) are *not* :math:`\rho_a`; :func:`logit_range_radius` is the first of
them, under its own name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def logit_directional_derivatives(
    model: torch.nn.Module, inputs: Any, direction: Sequence[Tensor], *, train: bool = False
) -> Tensor:
    """:math:`a = J_z u`: how fast each logit moves along ``direction`` (one forward-mode JVP).

    ``direction`` has one tensor per ``model.parameters()`` entry (the parameters' order). The
    model runs in eval mode unless ``train=True`` (batch norm and dropout are the caller's
    choice); its mode is restored afterwards. Returns a tensor shaped like the logits.
    """
    from torch.func import functional_call, jvp

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    tangents = {n: d.detach().to(params[n].dtype) for n, d in zip(names, direction, strict=True)}
    was_training = model.training
    model.train(train)
    try:
        _, derivatives = jvp(lambda p: functional_call(model, p, (inputs,)), (params,), (tangents,))
    finally:
        model.train(was_training)
    return derivatives


def softmax_radius(
    model: torch.nn.Module, inputs: Any, direction: Sequence[Tensor], *, train: bool = False
) -> float:
    r""":math:`\rho_a = \pi / \max_i (\max_k a_{ik} - \min_k a_{ik})` along ``direction``.

    ``direction`` is normalised to unit length first, so the radius is a distance in parameter
    space (compare it with the step length :math:`\|\Delta\theta\|`). Logits may have any leading
    shape (``[B, C]``, ``[B, T, V]``): every leading position is one sample. Returns ``inf`` for a
    direction that does not move the logits.
    """
    norm = math.sqrt(sum(float(d.double().square().sum()) for d in direction))
    if norm == 0.0:
        return math.inf
    unit = [d / norm for d in direction]
    a = logit_directional_derivatives(model, inputs, unit, train=train)
    spread = (a.amax(dim=-1) - a.amin(dim=-1)).max()
    return math.pi / float(spread) if float(spread) > 0 else math.inf


def binary_exact_radius(logit_gap: float, delta_a: float) -> float:
    r"""Two classes: the exact radius :math:`\sqrt{\delta^2+\pi^2}/\Delta_a` (zero of
    :math:`e^{z_1+a_1\tau}+e^{z_2+a_2\tau}` nearest to 0); ``inf`` when :math:`\Delta_a = 0`."""
    if delta_a < 0:
        raise ValueError(f"Invalid delta_a: {delta_a!r} (a spread, must be >= 0)")
    return math.inf if delta_a == 0 else math.hypot(logit_gap, math.pi) / delta_a


def logit_range_radius(logits: Tensor) -> float:
    r"""The cheap proxy :math:`\pi / \max_i(\max_k z_{ik} - \min_k z_{ik})` from logits alone.

    Not :math:`\rho_a`: it ignores the direction of the step (named apart on purpose).
    """
    spread = (logits.amax(dim=-1) - logits.amin(dim=-1)).max()
    return math.pi / float(spread) if float(spread) > 0 else math.inf


class SafeStep:
    r"""Wrap an optimizer so that no step is longer than ``ratio`` times the softmax radius.

    ``step(inputs)``: runs the wrapped optimizer's step, measures the step it took,
    :math:`\Delta\theta` (length :math:`\tau`), computes :math:`\rho_a` along it at the
    parameters *before* the step on the batch ``inputs`` (one JVP), and if
    :math:`\tau > \text{ratio}\cdot\rho_a` shortens the step to that length:
    :math:`\theta \leftarrow \theta_{\text{old}} + \frac{\text{ratio}\,\rho_a}{\tau}\Delta\theta`.
    The optimizer's own state (moments) is what its step made of the gradients; only the applied
    step is scaled, as the reference controller scales the learning rate.

    Costs one copy of the parameters and one forward-mode pass per step. The last step's
    numbers are in ``last``: the proposed length ``tau``, ``rho``, ``r = tau/rho``, the ``scale``
    applied and the resulting ``applied_r`` (at most ``ratio``).

    Example:
        >>> import torch, gradkit
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> opt = gradkit.SafeStep(torch.optim.SGD(model.parameters(), lr=1e3), model)
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> torch.nn.functional.cross_entropy(model(x), y).backward()
        >>> opt.step(x)
        >>> opt.last["r"] > 1.0, opt.last["applied_r"] <= 1.0 + 1e-9
        (True, True)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module,
        *,
        ratio: float = 1.0,
        train: bool = False,
    ) -> None:
        if not ratio > 0 or math.isinf(ratio):
            raise ValueError(f"Invalid ratio: {ratio!r} (must be finite and > 0)")
        self.optimizer, self.model, self.ratio, self.train = optimizer, model, ratio, train
        self.last: dict[str, float] = {}

    def _params(self) -> list[Tensor]:
        return list(self.model.parameters())

    @torch.no_grad()
    def step(self, inputs: Any, closure: Callable[[], Any] | None = None) -> Any:
        params = self._params()
        before = [p.detach().clone() for p in params]
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        delta = [p.detach() - b for p, b in zip(params, before, strict=True)]
        tau = math.sqrt(sum(float(d.double().square().sum()) for d in delta))
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
        with torch.enable_grad():
            rho = softmax_radius(self.model, inputs, delta, train=self.train)
        scale = min(1.0, self.ratio * rho / tau) if tau > 0 else 1.0
        for p, b, d in zip(params, before, delta, strict=True):
            p.copy_(b + scale * d)
        r = tau / rho if rho > 0 else math.inf
        self.last = {"tau": tau, "rho": rho, "r": r, "scale": scale, "applied_r": scale * r}
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def __repr__(self) -> str:
        return f"SafeStep({self.optimizer!r}, ratio={self.ratio!r})"
