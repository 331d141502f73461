"""Synthetic :class:`RunRecord` builders for scoring/report/claims tests (no training).

A run's curve is linear in the step from ``start`` to ``end``; time is ``seconds_per_step * step``.
``reach_step`` (or ``None`` for a miss) fixes where the curve first meets the target, so each
test states the time-to-target it relies on instead of deriving it from noise.
"""

from __future__ import annotations

from typing import Any

from gradkit.bench.records import RunRecord


def make_run(
    optimizer: str,
    workload: str,
    reach_step: int | None,
    *,
    seconds_per_step: float = 0.01,
    study: int = 0,
    trial: int = 0,
    seed: int = 0,
    hparams: dict[str, Any] | None = None,
    max_steps: int = 100,
    eval_every: int = 10,
    target: float = 0.1,
    status: str = "ok",
) -> RunRecord:
    """A run that first reaches ``target`` at evaluation step ``reach_step`` (a multiple of
    ``eval_every``), or never (``None``: final value stays above the target)."""
    steps = list(range(eval_every, max_steps + 1, eval_every))
    if reach_step is None:
        values = [1.0 - 0.5 * s / max_steps for s in steps]  # ends at 0.5 > target
    else:
        if reach_step not in steps:
            raise ValueError(f"reach_step {reach_step} is not an evaluation step of {steps}")
        values = [
            target + 1e-3 + 0.5 * (reach_step - s) / max_steps
            if s < reach_step
            else target * (1 - (s - reach_step) / (4 * max_steps))
            for s in steps
        ]
    times = [seconds_per_step * s for s in steps]
    first = next((i for i, v in enumerate(values) if v <= target), None)
    return RunRecord(
        workload=workload,
        optimizer=optimizer,
        study=study,
        trial=trial,
        seed=seed,
        hparams=dict(hparams or {"lr": 1e-3}),
        status=status,
        error=None if status == "ok" else "loss became nan",
        metric="val_error",
        target=target,
        steps=steps,
        train_time=times,
        values=values,
        train_loss=[v * 2 for v in values],
        steps_to_target=None if first is None else steps[first],
        time_to_target=None if first is None else times[first],
        final_value=values[-1],
        peak_memory_bytes=1000,
        state_bytes=800,
        total_train_time=times[-1],
        suite="test",
    )
