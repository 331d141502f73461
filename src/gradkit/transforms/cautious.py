r"""Cautious masking: drop the coordinates where the update would climb the current gradient.

Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
arXiv:2411.16085. Official code: https://github.com/kyleliang919/C-Optim (``c_lion.py``,
``c_adamw.py``).

.. math::
    \phi_t = \mathbb{1}(u_t \odot g_t > 0),\qquad
    u_t \leftarrow \frac{\dim(\phi_t)}{\operatorname{nnz}(\phi_t) + 1}\, u_t \odot \phi_t

per parameter tensor, where :math:`u_t` is the descent direction proposed by the optimizer (before
the learning rate, so the parameter moves by :math:`-\eta u_t`) and :math:`g_t` the raw gradient of
this step. A coordinate is kept only if moving along :math:`-u_t` decreases the loss to first
order, so no coordinate ever moves against the current gradient; coordinates with
:math:`u_t g_t = 0` are dropped too. The rescaling keeps the average step size.

Official code and our choice: the mask is the same everywhere (strict ``u * g > 0``, per tensor).
The rescaling varies: the paper's first version and the official ``c_lion.py`` use
``numel / (mask.sum() + 1)`` (implemented here); the paper's later version writes
``1 / (mask.mean() + eps)`` and the official ``c_adamw.py`` now uses
``1 / mask.mean().clamp(min=1e-3)`` (timm's variant). They differ only in how an almost empty mask
is regularized (with ``+ 1`` even a full mask scales by ``dim / (dim + 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradkit.core.transform import GroupTransform, Transform, When
from gradkit.core.validation import check_bool


class Cautious(GroupTransform):
    name = "cautious"
    stage = "update"  # via an optimizer's transforms=: placed after its update rule

    def update_group(self, updates, state, params, hp, steps, grads):
        # the chain's updates descend -g under maximize=True; compare with that gradient
        sign = -1.0 if _maximizing(hp) else 1.0
        agree = torch._foreach_mul(updates, grads)
        out = []
        for u, a in zip(updates, agree, strict=True):
            mask = (a * sign > 0).to(u.dtype)
            scale = u.numel() / (mask.sum() + 1)
            out.append(u * mask * scale)
        return out


def _maximizing(hp: Mapping[str, Any]) -> bool:
    return bool(hp.get("maximize", False))


def cautious() -> Transform:
    r"""Zero the update where it disagrees in sign with the raw gradient; rescale the rest.

    Place it right after the update rule and before ``add_decayed_weights`` / ``scale_by_lr``
    (the official code does not mask the weight decay). It reads the raw gradients of the step from
    the step context, so any extra ``transforms`` that rescale the gradient do not change the mask.
    No state.

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.cautious import cautious
        >>> opt = gradkit.chain(gradkit.trace(0.9), cautious(), gradkit.scale_by_lr(1.0))
        >>> params = [torch.zeros(3)]
        >>> state = opt.init(params)
        >>> _ = opt.update([torch.tensor([1.0, 1.0, 1.0])], state, params)
        >>> u = opt.update([torch.tensor([2.0, -0.5, -0.5])], state, params)[0]
        >>> [round(x, 4) for x in u.tolist()]  # momentum [2.9, 0.4, 0.4]; keep 1 of 3, scale 3/2
        [-4.35, -0.0, -0.0]
    """
    return Cautious()


class _WhenCautious(When):
    def validate(self, hp: Mapping[str, Any]) -> None:
        check_bool(hp, "cautious")
        super().validate(hp)


def cautious_if_flagged(default: bool = False) -> Transform:
    """:func:`cautious` in the param groups whose ``cautious`` hyperparameter is True.

    This is how an optimizer offers ``cautious: bool`` (per group, validated as a bool).
    """
    return _WhenCautious("cautious", Cautious(), True, default)
