"""Hyperparameter checks whose messages name the argument and the value (torch.optim style)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def as_number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: {value!r} (expected a number or a 1-element tensor)")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (expected a number)")
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: {value!r} (NaN)")
    return float(value)


def check_nonnegative(hp: Mapping[str, Any], name: str) -> None:
    value = as_number(name, hp[name])
    if value < 0 or math.isinf(value):
        raise ValueError(f"Invalid {name}: {hp[name]!r} (must be finite and >= 0)")


def check_lr(hp: Mapping[str, Any], name: str = "lr") -> None:
    value = as_number("learning rate", hp[name])
    if value < 0 or math.isinf(value):
        raise ValueError(f"Invalid learning rate: {hp[name]!r} ({name} must be finite and >= 0)")


def check_positive(hp: Mapping[str, Any], name: str) -> None:
    value = as_number(name, hp[name])
    if not value > 0 or math.isinf(value):
        raise ValueError(f"Invalid {name}: {hp[name]!r} (must be finite and > 0)")


def check_unit_interval(
    hp: Mapping[str, Any], name: str, *, closed_right: bool = False, open_left: bool = False
) -> None:
    """``name`` in [0, 1) (or [0, 1] with ``closed_right``; (0, ...) with ``open_left``)."""
    value = as_number(name, hp[name])
    ok_left = value > 0 if open_left else value >= 0
    ok_right = value <= 1 if closed_right else value < 1
    if not (ok_left and ok_right):
        interval = ("(" if open_left else "[") + "0, 1" + ("]" if closed_right else ")")
        raise ValueError(f"Invalid {name}: {hp[name]!r} (must be in {interval})")


def check_betas(hp: Mapping[str, Any], count: int, name: str = "betas") -> None:
    betas = hp[name]
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid {name}: {betas!r} (expected a tuple of {count} numbers)")
    for i, beta in enumerate(betas):
        value = as_number(f"beta parameter at index {i}", beta)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta!r} (must be in [0, 1))")


def check_bool(hp: Mapping[str, Any], name: str) -> None:
    if not isinstance(hp[name], bool):
        raise ValueError(f"Invalid {name}: {hp[name]!r} (expected True or False)")


def check_choice(hp: Mapping[str, Any], name: str, choices: tuple[Any, ...]) -> None:
    if hp[name] not in choices:
        raise ValueError(
            f"Invalid {name}: {hp[name]!r} (choose one of {', '.join(map(repr, choices))})"
        )
