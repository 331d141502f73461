"""Aggregator base classes: a map from a Jacobian matrix ``J`` ([m tasks, n]) to a vector [n].

The design follows TorchJD (https://github.com/TorchJD/torchjd, ``src/torchjd/aggregation/``):
one class per method, ``__repr__`` showing every constructor argument, weighted methods exposing
their task weights. Aggregation never builds an autograd graph (the solvers are not
differentiable), so outputs have ``requires_grad=False``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_matrix(matrix: Tensor) -> None:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"Expected a Jacobian tensor of shape [m, n], got {type(matrix).__name__}")
    if matrix.dim() != 2 or matrix.shape[0] == 0:
        raise ValueError(
            f"Expected a Jacobian of shape [m, n] with m >= 1 tasks, got shape {tuple(matrix.shape)}"
        )


def check_number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise ``ValueError("Invalid <name>: <value> ...")`` unless ``value`` is a finite number in range."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Invalid {name}: {value!r} (expected {kind})")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be finite)")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        right = "]" if high != math.inf else ")"
        raise ValueError(f"Invalid {name}: {value!r} (must be in {left}{low}, {high}{right})")


def gramian(matrix: Tensor) -> Tensor:
    return matrix @ matrix.T


class Aggregator:
    """Maps a Jacobian matrix ``J`` of shape ``[m, n]`` (one row per task) to a direction ``[n]``.

    Subclasses implement :meth:`aggregate`. Call the instance: ``d = aggregator(J)``.
    Stateful aggregators override :meth:`state_dict` / :meth:`load_state_dict`.
    """

    def aggregate(self, matrix: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, matrix: Tensor) -> Tensor:
        check_matrix(matrix)
        with torch.no_grad():
            return self.aggregate(matrix.detach())

    def _arguments(self) -> dict[str, Any]:
        """Constructor arguments, in order, shown by ``__repr__``."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError(f"{type(self).__name__} is stateless; got state {sorted(state_dict)}")


class WeightedAggregator(Aggregator):
    """An aggregator of the form ``d = w(J) @ J``; subclasses implement :meth:`compute_weights`."""

    def compute_weights(self, matrix: Tensor) -> Tensor:
        raise NotImplementedError

    def weights(self, matrix: Tensor) -> Tensor:
        """The task weights ``w`` (shape ``[m]``) with ``aggregator(J) == w @ J``."""
        check_matrix(matrix)
        with torch.no_grad():
            return self.compute_weights(matrix.detach())

    def aggregate(self, matrix: Tensor) -> Tensor:
        return self.compute_weights(matrix) @ matrix
