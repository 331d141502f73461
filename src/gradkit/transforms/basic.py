"""Generic building blocks shared by every optimizer: scaling, sign flip, weight decay, momentum.

Each factory returns a :class:`~gradkit.core.Transform` whose hyperparameters are read from the
param group at every step (the factory's arguments are only defaults), so torch's param groups
and LR schedulers drive them.

Transforms never modify their incoming ``updates`` in place (the first ones are the gradients,
which belong to the user); they may return their own state tensors, which later transforms in
turn do not modify.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_bool, check_lr, check_nonnegative


class _Scale(GroupTransform):
    name = "scale"

    def __init__(self, factor: float) -> None:
        self.factor = factor
        super().__init__()

    def update_group(self, updates, state, params, hp, steps, grads):
        return torch._foreach_mul(updates, self.factor)

    def __repr__(self) -> str:
        return f"scale({self.factor!r})"


def scale(factor: float) -> Transform:
    """Multiply updates by a constant: ``u <- factor * u`` (``scale(-1)`` flips the sign)."""
    return _Scale(factor)


class _Maximize(GroupTransform):
    name = "maximize"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_bool(hp, "maximize")

    def update_group(self, updates, state, params, hp, steps, grads):
        return torch._foreach_neg(updates) if hp["maximize"] else updates


def maximize(maximize: bool = False) -> Transform:
    """Negate the gradient when the group's ``maximize`` is True (torch's ``maximize=True``)."""
    return _Maximize(maximize=maximize)


class ScaleByLR(GroupTransform):
    name = "lr"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_lr(hp)

    def update_group(self, updates, state, params, hp, steps, grads):
        return torch._foreach_mul(updates, -hp["lr"])


def scale_by_lr(lr: float = 1e-3) -> Transform:
    """``u <- -lr * u``: the descent step. ``lr`` is the group's ``"lr"``, so schedulers drive it."""
    return ScaleByLR(lr=lr)


class AddDecayedWeights(GroupTransform):
    name = "weight_decay"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "weight_decay")

    def rate(self, hp: Mapping[str, Any]) -> float:
        """The decay this transform adds in a group (the adapter fuses it into the apply)."""
        return hp["weight_decay"]

    def update_group(self, updates, state, params, hp, steps, grads):
        wd = hp["weight_decay"]
        return torch._foreach_add(updates, params, alpha=wd) if wd != 0 else updates


def add_decayed_weights(weight_decay: float = 0.0) -> Transform:
    r"""Add ``weight_decay * p`` to the updates: :math:`u \leftarrow u + \lambda\, p`.

    Where it sits in the chain decides what it means. Placed **after** an adaptive transform and
    before ``scale_by_lr`` it is decoupled weight decay (AdamW: :math:`p \leftarrow p - \eta(u +
    \lambda p)`); placed **first** it is coupled L2 regularization (the decay goes through the
    preconditioner, as in torch's ``Adam(weight_decay=...)`` and ``SGD``). :func:`add_l2` is the
    same transform under the name that says so.
    """
    return AddDecayedWeights(weight_decay=weight_decay)


def add_l2(weight_decay: float = 0.0) -> Transform:
    """Coupled L2 regularization, ``g <- g + weight_decay * p``: put it first in a chain."""
    return AddDecayedWeights(weight_decay=weight_decay)


class _Trace(GroupTransform):
    name = "trace"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_nonnegative(hp, "momentum")
        check_nonnegative(hp, "dampening")
        check_bool(hp, "nesterov")
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError(
                f"Invalid nesterov: True needs momentum > 0 and dampening == 0 "
                f"(got momentum={hp['momentum']!r}, dampening={hp['dampening']!r})"
            )

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        if hp["momentum"] == 0:
            return {}
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        momentum = hp["momentum"]
        if momentum == 0:
            return updates
        buffers = state.get("momentum_buffer")
        if buffers is None or any(b is None for b in buffers):
            raise ValueError(
                "momentum was 0 when this optimizer's state was created, so no momentum buffer "
                f"exists; it can't be switched on later (got momentum={momentum!r})"
            )
        first = [s == 1 for s in steps]
        if all(first):
            torch._foreach_copy_(buffers, updates)
        else:
            _momentum_update(buffers, updates, first, momentum, 1 - hp["dampening"])
        if hp["nesterov"]:
            return torch._foreach_add(updates, buffers, alpha=momentum)
        return buffers


def _momentum_update(
    buffers: list[Tensor], updates: list[Tensor], first: list[bool], momentum: float, keep: float
) -> None:
    later = [i for i, f in enumerate(first) if not f]
    for i, f in enumerate(first):
        if f:
            buffers[i].copy_(updates[i])
    bufs = [buffers[i] for i in later]
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, [updates[i] for i in later], alpha=keep)


def trace(momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False) -> Transform:
    r"""Heavy-ball momentum with torch.optim.SGD's exact semantics.

    .. math::
        b_1 = u_1,\qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, u_t,\qquad
        u \leftarrow \begin{cases} u_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases}

    with momentum :math:`\mu`, dampening :math:`\tau`. The first step copies the update into the
    buffer (no dampening), as torch does. With ``momentum=0`` it is the identity and keeps no state.
    State: ``momentum_buffer``.
    """
    return _Trace(momentum=momentum, dampening=dampening, nesterov=nesterov)
