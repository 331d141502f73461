r"""Per-tensor ("layer-wise") trust ratios, shared by LAMB and LARS.

Both papers rescale each tensor's update by a ratio of the weight norm to an update norm:

* LAMB (You et al., 2020, Algorithm 2): :math:`u \leftarrow \phi(\|w\|)/\|u\|\cdot u`, where
  :math:`u = r + \lambda w` already holds the decoupled weight decay;
* LARS (You, Gitman & Ginsburg, 2017, Algorithm 1):
  :math:`u \leftarrow \eta\|w\|/(\|g\| + \beta\|w\|)\cdot(g + \beta w)`, a *sum* of norms in the
  denominator, and the weight decay is added by the ratio itself.

:func:`scale_by_trust_ratio` covers both: with ``add_weight_decay=True`` it adds
:math:`\beta w` and uses the sum of norms (LARS); otherwise it scales the incoming update by the
norm of that update (LAMB, and Optax's ``scale_by_trust_ratio``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, Transform
from gradkit.core.validation import as_number, check_bool, check_nonnegative

# The hyperparameters this transform can read, at their neutral values. An optimizer exposes only
# those its paper has (the ones passed to the constructor); the others stay fixed at these values
# and are not read from the param group, so e.g. LAMB's ``eps`` (Adam's) never leaks in here.
NEUTRAL: dict[str, Any] = {
    "trust_coefficient": 1.0,
    "eps": 0.0,
    "weight_norm_bounds": None,
    "layer_adaptation": True,
}


def check_bounds(hp: Mapping[str, Any], name: str) -> None:
    """``None`` or ``(lower, upper)`` with ``0 <= lower <= upper`` (``upper`` may be inf)."""
    bounds = hp[name]
    if bounds is None:
        return
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"Invalid {name}: {bounds!r} (expected None or (lower, upper))")
    lower, upper = (as_number(f"{name}[{i}]", b) for i, b in enumerate(bounds))
    if not (0.0 <= lower <= upper) or math.isinf(lower):
        raise ValueError(f"Invalid {name}: {bounds!r} (need 0 <= lower <= upper, lower finite)")


def trust_ratios(
    weight_norms: list[Tensor],
    denominators: list[Tensor],
    coefficient: float,
    eps: float,
    bounds: tuple[float, float] | None,
) -> list[Tensor]:
    r""":math:`c\,\phi(\|w\|)/(d + \epsilon)` per tensor, and 1 where :math:`\phi(\|w\|)` or
    :math:`d` is 0 (no host synchronisation: the choice is a ``torch.where``)."""
    phi = weight_norms
    if bounds is not None:
        phi = [n.clamp(bounds[0], bounds[1]) for n in weight_norms]
    ratios = []
    for num, den in zip(phi, denominators, strict=True):
        usable = (num > 0) & (den > 0)
        ratios.append(torch.where(usable, coefficient * num / (den + eps), torch.ones_like(num)))
    return ratios


class ScaleByTrustRatio(GroupTransform):
    """See :func:`scale_by_trust_ratio`."""

    name = "trust_ratio"

    def __init__(self, *, add_weight_decay: bool = False, **defaults: Any) -> None:
        unknown = sorted(set(defaults) - set(NEUTRAL) - {"weight_decay"})
        if unknown:
            raise TypeError(f"scale_by_trust_ratio() got unexpected hyperparameter(s) {unknown}")
        if add_weight_decay:
            defaults.setdefault("weight_decay", 0.0)
        elif "weight_decay" in defaults:
            raise TypeError("weight_decay is only read with add_weight_decay=True")
        self.add_weight_decay = add_weight_decay
        super().__init__(**defaults)

    def _get(self, hp: Mapping[str, Any], key: str) -> Any:
        return hp[key] if key in self.defaults else NEUTRAL[key]

    def validate(self, hp: Mapping[str, Any]) -> None:
        exposed = set(self.defaults)
        for key in ("trust_coefficient", "eps", "weight_decay"):
            if key in exposed:
                check_nonnegative(hp, key)
        if "weight_norm_bounds" in exposed:
            check_bounds(hp, "weight_norm_bounds")
        if "layer_adaptation" in exposed:
            check_bool(hp, "layer_adaptation")

    def update_group(self, updates, state, params, hp, steps, grads):
        wd = hp["weight_decay"] if self.add_weight_decay else 0.0
        direction = torch._foreach_add(updates, params, alpha=wd) if wd != 0 else updates
        if not self._get(hp, "layer_adaptation"):
            return direction
        weight_norms = torch._foreach_norm(params)
        if self.add_weight_decay:
            # LARS: ||g|| + wd ||w||, the sum of the norms (You et al. 2017, eq. 6)
            denominators = torch._foreach_norm(updates)
            if wd != 0:
                torch._foreach_add_(denominators, torch._foreach_mul(weight_norms, wd))
        else:
            denominators = torch._foreach_norm(direction)
        ratios = trust_ratios(
            weight_norms,
            denominators,
            self._get(hp, "trust_coefficient"),
            self._get(hp, "eps"),
            self._get(hp, "weight_norm_bounds"),
        )
        return torch._foreach_mul(direction, ratios)


def scale_by_trust_ratio(
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    weight_norm_bounds: tuple[float, float] | None = None,
    layer_adaptation: bool = True,
    *,
    add_weight_decay: bool = False,
    weight_decay: float | None = None,
) -> Transform:
    r"""Rescale each tensor's update by a layer-wise trust ratio.

    With incoming update :math:`u` of a tensor :math:`w`, coefficient :math:`c` and
    :math:`\phi(z) = \min(\max(z, \gamma_l), \gamma_u)` with
    :math:`(\gamma_l, \gamma_u)` = ``weight_norm_bounds`` (the identity when it is None):

    .. math::
        u \leftarrow \frac{c\,\phi(\|w\|)}{\|u\| + \epsilon}\, u
        \qquad\text{or, with ``add_weight_decay``,}\qquad
        u \leftarrow \frac{c\,\phi(\|w\|)}{\|u\| + \beta\|w\| + \epsilon}\,(u + \beta w)

    with :math:`\beta` the group's ``weight_decay``. The first is LAMB's ratio (put
    :func:`~gradkit.add_decayed_weights` before it) and Optax's ``scale_by_trust_ratio``; the second
    is LARS's local learning rate. Norms are per tensor (2-norm over all its entries). The ratio is
    1 where :math:`\phi(\|w\|) = 0` (e.g. zero-initialized biases) or the denominator is 0, the
    convention of the LAMB/LARS reference implementations (the papers leave it open).
    ``layer_adaptation=False`` in a param group turns the ratio off there (ratio 1, the decay is
    still added), the usual treatment of biases and normalization weights.

    Stateless. Only the hyperparameters passed here are read from the param groups.

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.trust_ratio import scale_by_trust_ratio
        >>> t = gradkit.chain(scale_by_trust_ratio())
        >>> w, zero = torch.tensor([3.0, 4.0]), torch.zeros(2)
        >>> t.update([torch.tensor([0.0, 10.0])], t.init([w]), [w])[0].tolist()  # |w|/|u| = 0.5
        [0.0, 5.0]
        >>> t.update([torch.tensor([1.0, 2.0])], t.init([zero]), [zero])[0].tolist()  # |w| = 0
        [1.0, 2.0]
    """
    defaults: dict[str, Any] = dict(
        trust_coefficient=trust_coefficient,
        eps=eps,
        weight_norm_bounds=weight_norm_bounds,
        layer_adaptation=layer_adaptation,
    )
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    return ScaleByTrustRatio(add_weight_decay=add_weight_decay, **defaults)
