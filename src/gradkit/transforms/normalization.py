r"""Gradient normalization: unit norm per tensor, and gradient centralization.

References:
    * Optax ``normalize_by_update_norm`` (the per-tensor unit-norm rescaling and its ``eps``).
    * Yong, Huang, Hua & Zhang, "Gradient Centralization: A New Optimization Technique for Deep
      Neural Networks", ECCV 2020, arXiv:2004.01461; official code
      github.com/Yonghongwei/Gradient-Centralization.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradkit.core.transform import GroupTransform, Transform
from gradkit.core.validation import check_bool, check_positive


class Normalize(GroupTransform):
    name = "normalize"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "normalize_eps")

    def update_group(self, updates, state, params, hp, steps, grads):
        if not updates:
            return updates
        denom = torch._foreach_norm(updates)
        torch._foreach_add_(denom, float(hp["normalize_eps"]))
        return torch._foreach_div(updates, denom)


def normalize(eps: float = 1e-6) -> Transform:
    r"""Rescale each tensor to unit 2-norm: :math:`u_i \leftarrow u_i / (\|u_i\|_2 + \epsilon)`.

    Only the direction of each parameter's update is kept (the learning rate then sets the step
    length per tensor). A zero update stays zero. ``eps`` (hyperparameter ``normalize_eps``,
    > 0) as Optax's ``normalize_by_update_norm``. No state.
    """
    return Normalize(normalize_eps=eps)


class Centralize(GroupTransform):
    name = "centralize"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_bool(hp, "gc_conv_only")

    def update_group(self, updates, state, params, hp, steps, grads):
        min_ndim = 4 if hp["gc_conv_only"] else 2
        return [
            u - u.mean(dim=tuple(range(1, u.ndim)), keepdim=True) if u.ndim >= min_ndim else u
            for u in updates
        ]


def centralize(conv_only: bool = False) -> Transform:
    r"""Gradient centralization (Yong et al. 2020): remove the mean of each output unit.

    For a weight with ``ndim > 1`` (PyTorch layout ``(out, in, ...)``), each output unit's gradient
    :math:`g_i` (a row of a matrix, a filter of a conv weight) becomes

    .. math::
        g_i \leftarrow g_i - \frac{1}{M}\sum_{j=1}^{M} g_{i,j}

    where :math:`j` runs over the :math:`M` entries of the unit (every dim but the first). This is
    the projection of the gradient onto the hyperplane :math:`\mathbf{1}^\top w_i = \text{const}`
    (the paper's :math:`P = I - e e^\top`). Vectors and scalars (biases, norms) pass through,
    as in the official code. ``conv_only=True`` (hyperparameter ``gc_conv_only``) restricts it to
    tensors with ``ndim > 3`` — the official ``gc_conv_only`` option; the default applies it to
    conv and fully connected layers alike (the paper's recommended setting). No state.

    Place it first (``stage = "gradient"``): the official Adam/SGD variants centralize the raw
    gradient before momentum and adaptive scaling.
    """
    return Centralize(gc_conv_only=conv_only)
