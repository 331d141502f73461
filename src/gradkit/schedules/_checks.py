"""Argument checks for schedules and controllers (messages name the argument and the value)."""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= {minimum})")
    return value


def check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number)")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    if check_finite(name, value) <= 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be finite and > 0)")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """``value`` in [0, 1]."""
    if not 0.0 <= check_finite(name, value) <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1])")
    return float(value)
