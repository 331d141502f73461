"""The record of one benchmark run: what the runner produces and scoring/reports consume.

A :class:`RunRecord` is plain data (no torch): it round-trips through JSON, so the tuning
database (Optuna trial user attributes) holds everything a report needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATUSES = ("ok", "diverged", "failed")


@dataclass
class RunRecord:
    """One training run of ``optimizer`` on ``workload`` with one seed and one configuration.

    Times are cumulative *training* seconds: evaluation is excluded from the clock, as in
    AlgoPerf's ``submission_runner.py`` (Dahl et al. 2023, arXiv:2306.07179). ``values`` is the
    workload's validation metric (lower is better) at each evaluation step.

    Example:
        >>> r = RunRecord("w", "AdamW", 0, 0, 0, {"lr": 1e-3}, "ok", None, "val_error", 0.1,
        ...               [10], [0.5], [0.05], [1.2], 10, 0.5, 0.05, 0, 0, 0.5)
        >>> RunRecord.from_json(r.to_json()) == r
        True
    """

    workload: str
    optimizer: str
    study: int
    trial: int
    seed: int
    hparams: dict[str, Any]
    status: str
    error: str | None
    metric: str
    target: float
    steps: list[int]
    train_time: list[float]
    values: list[float]
    train_loss: list[float]
    steps_to_target: int | None
    time_to_target: float | None
    final_value: float
    peak_memory_bytes: int
    state_bytes: int
    total_train_time: float
    suite: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (schedule, device, torch version); not used for scoring."""

    def reached(self) -> bool:
        """Whether the run reached its target (a diverged or failed run never does)."""
        return self.status == "ok" and self.steps_to_target is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite floats become the strings ``"nan"``/``"inf"``/``"-inf"``
        (JSON has no such numbers), tuples become lists."""
        return _encode(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_json`; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: _decode(v) for k, v in data.items() if k in names})


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
