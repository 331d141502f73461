"""Step guards: the one mechanism that decides, before anything is touched, whether a param
group's step runs.

Every :class:`~gradkit.core.ChainOptimizer` runs its guards on the groups that have gradients,
before any state is created or changed. A guard returns the groups to skip and why; a skipped
group keeps its parameters and state untouched, its ``group["<guard>_skips"]`` counter goes up, the
reason is appended to ``optimizer.skip_log`` and a warning is emitted once per guard.

Built in: :class:`NonFiniteGuard` (always first; the ``nonfinite=`` policy of every optimizer).
Optional: :class:`SpikeGuard` (loss / gradient-norm z-scores over a window), added with
``optimizer.add_guard(SpikeGuard())``. Guards with state save it in ``optimizer.state_dict()``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def nonfinite_indices(tensors: Sequence[Tensor]) -> list[int]:
    """Indices of the tensors holding a NaN or inf.

    One vectorized 2-norm per tensor (NaN/inf iff an entry is, or its squares overflow), then an
    exact ``isfinite`` re-check of the flagged ones only: torch's ``ord=inf`` foreach norm is ~10x
    slower on CPU, and a huge finite gradient must not be mistaken for a non-finite one.
    """
    nonempty = [i for i, t in enumerate(tensors) if t.numel()]
    if not nonempty:
        return []
    native = _native_nonfinite([tensors[i] for i in nonempty])
    if native is not None:
        return [nonempty[j] for j in native]
    norms = torch._foreach_norm([tensors[i] for i in nonempty])
    flagged = (~torch.stack(norms).isfinite()).nonzero().flatten().tolist()
    return [nonempty[j] for j in flagged if not bool(tensors[nonempty[j]].isfinite().all())]


def _native_nonfinite(tensors: list[Tensor]) -> list[int] | None:
    """The native one-pass check (a read of every gradient at memory speed; torch's foreach
    2-norm runs at about a third of that on CPU), or None where it does not apply."""
    from gradkit import _native

    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    if not all(_native.eligible([[tensors[i] for i in idx]]) for idx in by_dtype.values()):
        return None
    if not _native.available():
        return None
    bad = []
    for idx in by_dtype.values():
        out = torch.zeros(len(idx), _native.OUT_WIDTH, dtype=torch.float64)
        _native.kernel("nonfinite").run(
            [[tensors[i] for i in idx]], out.new_zeros(len(idx)), (), out
        )
        bad += [idx[j] for j in out[:, 0].nonzero().flatten().tolist()]
    return sorted(bad)


@dataclass
class GroupGrads:
    """A param group that has gradients this step, as the guards see it."""

    index: int
    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    _sq_norm: float | None = field(default=None, repr=False)

    def squared_norm(self) -> float:
        """Sum of squared gradient entries (computed once per step, shared by guards)."""
        if self._sq_norm is None:
            grads = [g for g in self.grads if g.numel()]
            norms = torch._foreach_norm(grads) if grads else []
            self._sq_norm = float(sum(float(n) ** 2 for n in norms))
        return self._sq_norm


class StepGuard:
    """Base class: ``check`` returns ``{group index: reason}`` for the groups to skip."""

    name: str = "guard"

    def check(self, groups: list[GroupGrads], loss: float | None) -> dict[int, str]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class NonFiniteGradientError(FloatingPointError):
    """Raised under ``nonfinite="raise"`` when a gradient holds NaN or inf."""


class NonFiniteGuard(StepGuard):
    """The ``nonfinite=`` policy of each group: ``"skip"``, ``"raise"`` or ``"apply"``."""

    name = "nonfinite"

    def check(self, groups: list[GroupGrads], loss: float | None) -> dict[int, str]:
        skip = {}
        for gg in groups:
            policy = gg.group["nonfinite"]
            if policy == "apply":
                continue
            bad = nonfinite_indices(gg.grads)
            if not bad:
                continue
            if policy == "raise":
                raise NonFiniteGradientError(
                    f"non-finite gradient in {param_label(gg.group, gg.index, gg.params[bad[0]])}; "
                    "nothing was updated (pass nonfinite='skip' to skip such steps)"
                )
            skip[gg.index] = f"non-finite gradient in param group {gg.index}"
        return skip


class SpikeGuard(StepGuard):
    r"""Skip a step whose loss or global gradient norm is a spike: a z-score above ``threshold``.

    For each monitored quantity :math:`x` (``"grad_norm"``: the global gradient norm over the
    groups being stepped; ``"loss"``: the closure's loss or the last :meth:`observe_loss`), with
    mean :math:`\mu` and standard deviation :math:`\sigma` of the last ``window`` *accepted*
    values, the step is skipped for every group when :math:`(x - \mu)/\sigma > ` ``threshold``
    (one-sided: only upward spikes), once at least ``min_history`` values were seen. Skipped
    values do not enter the window, so a burst of spikes cannot make itself look normal. The
    reason names the quantity, its value, z and the window statistics.

    Args:
        threshold: z-score above which a step is skipped (default 6).
        window: number of accepted values kept (default 100).
        min_history: values needed before the guard can fire (default 20).
        monitor: which of ``"grad_norm"`` and ``"loss"`` to watch.
    """

    name = "spike"

    def __init__(
        self,
        threshold: float = 6.0,
        window: int = 100,
        min_history: int = 20,
        monitor: Sequence[str] = ("grad_norm", "loss"),
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"Invalid threshold: {threshold!r} (must be > 0)")
        if window < 2:
            raise ValueError(f"Invalid window: {window!r} (must be >= 2)")
        if not 2 <= min_history <= window:
            raise ValueError(f"Invalid min_history: {min_history!r} (must be in [2, window])")
        bad = [m for m in monitor if m not in ("grad_norm", "loss")]
        if bad or not monitor:
            raise ValueError(f"Invalid monitor: {monitor!r} (choose from 'grad_norm', 'loss')")
        self.threshold, self.window, self.min_history = threshold, window, min_history
        self.monitor = tuple(monitor)
        self.history: dict[str, deque[float]] = {m: deque(maxlen=window) for m in self.monitor}
        self._pending_loss: float | None = None

    def observe_loss(self, loss: float | Tensor) -> None:
        """Give the guard this step's loss when ``step()`` is called without a closure."""
        self._pending_loss = float(loss)

    def check(self, groups: list[GroupGrads], loss: float | None) -> dict[int, str]:
        values = {}
        if "grad_norm" in self.monitor and groups:
            values["grad_norm"] = math.sqrt(sum(gg.squared_norm() for gg in groups))
        loss = loss if loss is not None else self._pending_loss
        self._pending_loss = None
        if "loss" in self.monitor and loss is not None:
            values["loss"] = float(loss)
        reasons = [r for key, x in values.items() if (r := self._spike(key, x))]
        if reasons:
            return {gg.index: "; ".join(reasons) for gg in groups}
        for key, x in values.items():
            self.history[key].append(x)
        return {}

    def _spike(self, key: str, x: float) -> str | None:
        seen = self.history[key]
        if len(seen) < self.min_history:
            return None
        mean = sum(seen) / len(seen)
        std = math.sqrt(sum((v - mean) ** 2 for v in seen) / (len(seen) - 1))
        std = max(std, 1e-6 * abs(mean) + 1e-12)
        z = (x - mean) / std
        if not (z > self.threshold or math.isnan(x)):
            return None
        return (
            f"{key} spike: {x:.4g} is z={z:.1f} > {self.threshold:g} "
            f"(window of {len(seen)}: mean {mean:.4g}, std {std:.4g})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {key: list(values) for key, values in self.history.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, values in state.items():
            self.history[key] = deque(values, maxlen=self.window)

    def __repr__(self) -> str:
        return (
            f"SpikeGuard(threshold={self.threshold!r}, window={self.window!r}, "
            f"min_history={self.min_history!r}, monitor={self.monitor!r})"
        )


def param_label(group: dict[str, Any], index: int, param: Tensor) -> str:
    position = next(i for i, q in enumerate(group["params"]) if q is param)
    names = group.get("param_names")
    shape = tuple(param.shape)
    if names:
        return f"parameter {names[position]!r} (group {index}, shape {shape})"
    return f"param_groups[{index}]['params'][{position}] (shape {shape})"
