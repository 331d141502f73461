"""``apply_if_finite``: the non-finite guard for a standalone chain.

Inside an optimizer, :class:`~gradkit.core.NonFiniteGuard` (the ``nonfinite=`` policy) already
skips a group's step before any transform runs. A chain used on its own (``t.update(...)``) has no
adapter around it; ``apply_if_finite(inner)`` gives it the same behaviour with the same check
(:func:`~gradkit.core.nonfinite_indices`): when an incoming update holds NaN/inf, ``inner`` is not
run (its state stays untouched), the updates become zeros, and a counter goes up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.guards import nonfinite_indices
from gradkit.core.transform import Chain, Context, State, Transform, chain


class ApplyIfFinite(Transform):
    name = "apply_if_finite"

    def __init__(self, inner: Transform) -> None:
        self.inner = inner if isinstance(inner, Chain) else chain(inner)
        super().__init__(**self.inner.defaults)
        # the inner chain's state lives here as "inner.<namespace>.<name>": declare its kinds so a
        # compressed storage policy treats it as the inner transforms asked (per_parameter stays
        # False: the finiteness check reduces over every parameter)
        owners = self.inner._owners
        self.nonnegative_state = frozenset(
            f"inner.{ns}.{n}" for ns, t in owners.items() for n in t.nonnegative_state
        )
        self.exact_state = frozenset(
            f"inner.{ns}.{n}" for ns, t in owners.items() for n in t.exact_state
        )

    def validate(self, hp: Mapping[str, Any]) -> None:
        if hasattr(self, "inner"):
            self.inner.validate(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        state = {f"inner.{k}": v for k, v in self.inner.init(params, hp).items()}
        state["nonfinite_count"] = [torch.zeros((), dtype=torch.int64) for _ in params]
        return state

    def update(self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context):
        if nonfinite_indices(updates):
            for count in state["nonfinite_count"]:
                count.add_(1)
            return [torch.zeros_like(u) for u in updates]
        inner_state = {k[len("inner.") :]: v for k, v in state.items() if k.startswith("inner.")}
        return self.inner.run(updates, inner_state, params, ctx, len(self.inner.transforms))

    def __repr__(self) -> str:
        return f"apply_if_finite({self.inner!r})"


def apply_if_finite(inner: Transform) -> Transform:
    """Run ``inner`` only on finite updates; otherwise emit zeros and count (state untouched).

    Example:
        >>> import torch, gradkit
        >>> t = gradkit.chain(gradkit.apply_if_finite(gradkit.scale_by_adam()), gradkit.scale_by_lr(0.1))
        >>> params = [torch.zeros(2)]
        >>> state = t.init(params)
        >>> [u.tolist() for u in t.update([torch.tensor([1.0, float("nan")])], state, params)]
        [[-0.0, -0.0]]
        >>> int(state["apply_if_finite.nonfinite_count"][0]), float(state["apply_if_finite.inner.adam.exp_avg"][0].abs().sum())
        (1, 0.0)
    """
    return ApplyIfFinite(inner)
