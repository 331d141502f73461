r"""Schedule refinement from the gradient norms of a previous run.

Defazio, Cutkosky, Mehta & Mishchenko, "When, Why and How Much? Adaptive Learning Rate Scheduling
by Refinement" (v2: "Optimal Linear Decay Learning Rate Schedules and Further Refinements"), 2023,
arXiv:2310.07831. Official code: https://github.com/facebookresearch/adaptive_scheduling
(``find_schedule.py::find_closed_form_schedule``, median filtering in ``visual.py`` and README).

The paper's Algorithm 1 (schedule refinement for SGD), for a recorded sequence of gradient norms
:math:`\|g_1\|, \dots, \|g_T\|` and a smoothing fraction :math:`\tau`:

.. math::
    \hat g = \operatorname{median\_filter}(\|g\|,\ \text{width} = \tau T,\
             \text{padding} = (\text{nearest}, \text{reflect})),\qquad
    w_t = \hat g_t^{-2},\qquad
    \eta_t = w_t \sum_{p = t+1}^{T} w_p,\qquad
    \text{schedule} = \eta / \max_t \eta_t .

With constant gradient norms this is exactly linear decay; the large gradient norms typical of the
first steps give a warm-up, and norms that grow late in training give rapid final annealing.
For Adam-like (coordinate-wise normalized) updates the paper and the official code use
:math:`\ell_1` norms with :math:`w_t = \hat g_t^{-1}` (``power=1`` here; the official
``find_closed_form_schedule(G, weights=G**-1)`` for its ``*_l1`` runs).

Official code and our choices:

* Filter width: the README's ``2 * (int(tau * n) // 2) + 1`` (always odd) with
  :math:`\tau = 0.1`; ``visual.py`` measures ``n`` on a 10,000-point plotting grid, we use the
  length of the recorded sequence, :math:`\tau T` as in the paper.
* Padding: the official code pads the end by reflection (``np.pad(mode="reflect")``) and lets
  ``scipy.ndimage.median_filter(mode="nearest")`` replicate the first value at the start; we do the
  same with NumPy alone (scipy is not a gradkit dependency; a test checks we match scipy).
* Normalization: the official closed form divides by the last tail sum and the plotting script
  then by the maximum; only the ratio matters, we normalize to a maximum of 1 (the paper's
  "return :math:`\eta/\max\eta`"). The last step has :math:`\eta_T = 0` (empty tail sum).
* A schedule for a run of another length (``total_steps``) linearly interpolates the smoothed norms
  onto that many points before weighting, as ``visual.py`` does with ``np.interp``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradkit.schedules._checks import check_finite, check_fraction, check_int, check_positive
from gradkit.schedules.basic import Schedule

#: rows of the sliding-window matrix processed at once by the median filter (bounds memory)
_MEDIAN_CHUNK_ELEMENTS = 1 << 22


def _as_norms(grad_norms: Iterable[float]) -> np.ndarray:
    norms = np.asarray(
        [float(g) for g in grad_norms] if not isinstance(grad_norms, np.ndarray) else grad_norms,
        dtype=np.float64,
    ).reshape(-1)
    if norms.size < 2:
        raise ValueError(f"Invalid grad_norms: {norms.size} values (need at least 2)")
    bad = ~np.isfinite(norms) | (norms <= 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Invalid grad_norms: value {norms[first]!r} at index {first} (every norm must be "
            "finite and > 0; drop or interpolate skipped steps first)"
        )
    return norms


def filter_width(length: int, smoothing: float) -> int:
    """The odd median-filter width ``2 * (int(smoothing * length) // 2) + 1`` of the official code."""
    return 2 * (int(smoothing * length) // 2) + 1


def median_smooth(grad_norms: Iterable[float], smoothing: float = 0.1) -> np.ndarray:
    """Median filter of width :func:`filter_width`, start padded by 'nearest', end by 'reflect'."""
    check_fraction("smoothing", smoothing)
    norms = _as_norms(grad_norms)
    width = filter_width(norms.size, smoothing)
    half = width // 2
    if half == 0:
        return norms.copy()
    padded = np.concatenate(
        [np.full(half, norms[0]), norms, np.pad(norms, (0, half), mode="reflect")[norms.size :]]
    )
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    rows = max(1, _MEDIAN_CHUNK_ELEMENTS // width)
    return np.concatenate(
        [np.median(windows[i : i + rows], axis=1) for i in range(0, norms.size, rows)]
    )


def refine_weights(weights: np.ndarray) -> np.ndarray:
    r"""The closed form :math:`\eta_t = w_t \sum_{p>t} w_p`, normalized to a maximum of 1."""
    tail = np.cumsum(weights[::-1])[::-1]  # tail[t] = sum_{p >= t} w_p
    eta = np.empty_like(weights)
    eta[:-1] = weights[:-1] * tail[1:]
    eta[-1] = 0.0
    return eta / eta.max()


def refine_schedule(
    grad_norms: Iterable[float],
    smoothing: float = 0.1,
    power: float = 2.0,
    total_steps: int | None = None,
) -> np.ndarray:
    r"""Refined schedule multipliers (maximum 1, last 0) from a previous run's gradient norms.

    Args:
        grad_norms: one norm per optimizer step of the previous run (:math:`\ell_2` for SGD-like
            methods, :math:`\ell_1` for Adam-like methods), all finite and positive.
        smoothing: the paper's :math:`\tau`, the median-filter width as a fraction of the run.
        power: :math:`w_t = \hat g_t^{-\mathrm{power}}`: 2 for SGD (:math:`\ell_2` norms), 1 for
            Adam (:math:`\ell_1` norms).
        total_steps: length of the schedule (default: the number of recorded norms).

    Example:
        >>> refine_schedule([1.0] * 5, smoothing=0.0).round(4).tolist()  # constant norms: linear
        [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    check_positive("power", power)
    smoothed = median_smooth(grad_norms, smoothing)
    if total_steps is not None and check_int("total_steps", total_steps, minimum=2) != len(
        smoothed
    ):
        grid = np.linspace(0.0, 1.0, total_steps)
        smoothed = np.interp(grid, np.linspace(0.0, 1.0, len(smoothed)), smoothed)
    return refine_weights(smoothed**-power)


@dataclass(frozen=True)
class RefinedSchedule(Schedule):
    r"""A fixed table of multipliers, ``peak * multipliers[t]``; 0 after the table ends.

    Build it with :meth:`from_grad_norms` (or :meth:`GradNormRecorder.refined_schedule`); the math
    and the official-code choices are in the module docstring.

    Example:
        >>> s = RefinedSchedule.from_grad_norms([2.0, 2.0, 1.0, 1.0, 1.0], smoothing=0.0)
        >>> [round(s(t), 4) for t in range(6)]
        [0.4062, 0.375, 1.0, 0.5, 0.0, 0.0]
    """

    multipliers: tuple[float, ...] = field(repr=False)
    peak: float = 1.0
    smoothing: float | None = None
    power: float | None = None

    def __post_init__(self) -> None:
        if not self.multipliers:
            raise ValueError("Invalid multipliers: () (expected at least one value)")
        check_finite("peak", self.peak)

    @classmethod
    def from_grad_norms(
        cls,
        grad_norms: Iterable[float],
        smoothing: float = 0.1,
        power: float = 2.0,
        total_steps: int | None = None,
        peak: float = 1.0,
    ) -> RefinedSchedule:
        table = refine_schedule(grad_norms, smoothing, power, total_steps)
        return cls(tuple(table.tolist()), peak=peak, smoothing=smoothing, power=power)

    @property
    def total_steps(self) -> int:
        return len(self.multipliers)

    def value(self, step: float) -> float:
        index = int(step)
        if index >= len(self.multipliers):
            return 0.0
        return self.peak * self.multipliers[index]

    def __repr__(self) -> str:
        return (
            f"RefinedSchedule(total_steps={self.total_steps}, peak={self.peak!r}, "
            f"smoothing={self.smoothing!r}, power={self.power!r})"
        )


def _grads_of(params: Any) -> list[Tensor]:
    if isinstance(params, torch.optim.Optimizer):
        params = [p for group in params.param_groups for p in group["params"]]
    elif isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


class GradNormRecorder:
    r"""Records the global gradient norm of every optimizer step, for :func:`refine_schedule`.

    ``norm_type=2`` (default, for SGD-like methods) or ``1`` (for Adam-like methods, the paper's
    :math:`\ell_1` variant); :meth:`refined_schedule` picks the matching ``power``. Norms stay on
    the device as 0-d tensors until read, so recording does not synchronize a GPU.

    Use :meth:`record` after ``backward()``, or :meth:`attach` to record automatically after every
    ``optimizer.step()`` (a step post-hook, so it also sees gradients computed inside a closure).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> recorder = GradNormRecorder()
        >>> handle = recorder.attach(opt)
        >>> for _ in range(20):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 3)).square().mean().backward()
        ...     opt.step()
        >>> len(recorder), recorder.refined_schedule(smoothing=0.1).total_steps
        (20, 20)
    """

    def __init__(self, norm_type: float = 2.0) -> None:
        if norm_type not in (1, 2):
            raise ValueError(f"Invalid norm_type: {norm_type!r} (choose 1 or 2)")
        self.norm_type = float(norm_type)
        self._norms: list[Tensor | float] = []

    def __len__(self) -> int:
        return len(self._norms)

    def __repr__(self) -> str:
        return f"GradNormRecorder(norm_type={self.norm_type:g}, recorded={len(self)})"

    def record(self, params: Any) -> Tensor:
        """Record (and return) the global norm of the ``.grad`` of ``params`` (or an optimizer's)."""
        grads = _grads_of(params)
        if not grads:
            raise ValueError("GradNormRecorder.record: no parameter has a .grad")
        per_tensor = torch._foreach_norm(grads, self.norm_type)
        device = per_tensor[0].device
        stacked = torch.stack([n.to(device=device, dtype=torch.float32) for n in per_tensor])
        norm = torch.linalg.vector_norm(stacked, self.norm_type).detach()
        self._norms.append(norm)
        return norm

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Record after every ``optimizer.step()``; returns the hook handle (``.remove()``)."""
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.record(opt))

    @property
    def norms(self) -> list[float]:
        self._norms = [float(n) for n in self._norms]
        return list(self._norms)

    def refined_schedule(
        self, smoothing: float = 0.1, total_steps: int | None = None, peak: float = 1.0
    ) -> RefinedSchedule:
        power = 2.0 if self.norm_type == 2 else 1.0
        return RefinedSchedule.from_grad_norms(self.norms, smoothing, power, total_steps, peak)

    def clear(self) -> None:
        self._norms.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"norm_type": self.norm_type, "norms": self.norms}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["norm_type"] != self.norm_type:
            raise ValueError(
                f"Invalid state_dict: norm_type {state_dict['norm_type']!r} != {self.norm_type!r}"
            )
        self._norms = [float(n) for n in state_dict["norms"]]


__all__ = [
    "GradNormRecorder",
    "RefinedSchedule",
    "filter_width",
    "median_smooth",
    "refine_schedule",
    "refine_weights",
]
