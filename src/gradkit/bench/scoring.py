"""AlgoPerf scoring: time-to-target, performance profiles, the benchmark score, speedups.

Follows "Benchmarking Neural Network Training Algorithms" (Dahl et al. 2023, arXiv:2306.07179)
and its scoring code (mlcommons/algorithmic-efficiency, ``scoring/performance_profile.py`` and
``scoring/score_submissions.py``, read at commit 2c90454, Sep 2025). Pure Python and numpy.

**Per-workload time** (external tuning ruleset). With ``t_{i,j}`` the time-to-target of trial
``i`` in study ``j`` (``inf`` for a miss),

.. math::

    t_{s,w} = \\operatorname{median}_j \\min_i t_{i,j},

where a missed study takes part in the median as ``inf``. A trial run with several seeds counts
with the median over its seeds (see "Seeds and studies" below).

**Performance profile.** With ratios ``r_{s,w} = t_{s,w} / \\min_s t_{s,w}``,

.. math::

    \\rho_s(\\tau) = \\frac{1}{n} \\left|\\{w : r_{s,w} \\le \\tau\\}\\right|,

``n`` = number of workloads (all of them, including workloads nobody solved). As in AlgoPerf a
time more than 4x the workload's best is set to ``inf`` before dividing, and a workload that every
optimizer missed counts for nobody (AlgoPerf gets ``inf/inf = nan`` there, and ``nan <= tau`` is
false).

**Benchmark score.** ``B_s = 1/(r_max - 1) \\int_1^{r_max} \\rho_s(\\tau) d\\tau`` with
``r_max = 4``; AlgoPerf evaluates it with the trapezoid rule on 100 evenly spaced taus in [1, 4]
(our :data:`DEFAULT_TAUS`) and divides by the tau range. :func:`exact_benchmark_score` gives the
exact area of the step function; the two differ by less than one grid step.

**Time or steps.** Every function takes ``measure="time"`` (training seconds, evaluation
excluded: AlgoPerf's score) or ``measure="steps"`` (steps-to-target: hardware-independent, the
better signal on a shared machine, as in modded-nanogpt's optimization track).

**Reaching the target.** A run's time-to-target is the one the runner stored: the training
time at the first evaluation with ``value <= target``; ``None`` is a miss (``inf``). Our runner
stores ``None`` for diverged and failed runs (:meth:`RunRecord.reached`), so they are misses even
if they touched the target before diverging; AlgoPerf latches the goal instead, but it also does
not stop a run at a NaN loss.

**Seeds and studies** (as :mod:`gradkit.bench.tuning` produces them): study ``k`` draws the same
configurations for every seed, so ``(study, trial)`` names one configuration and its runs over
seeds are repetitions; its time is their median. Pass the records of one suite and one mode
(tuned or defaults-only) at a time: both number their trials from 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from gradkit.bench.records import RunRecord

Measure = Literal["time", "steps"]

MAX_TAU = 4.0
"""AlgoPerf's ``r_max``: the profile is integrated over tau in [1, 4]."""

DEFAULT_TAUS = np.linspace(1.0, MAX_TAU, 100)
"""AlgoPerf's grid: 100 linearly spaced taus on [1, 4] (``score_submissions.py``)."""


def _check_measure(measure: str) -> None:
    if measure not in ("time", "steps"):
        raise ValueError(f"Invalid measure: {measure!r} (must be 'time' or 'steps')")


def reach(record: RunRecord, measure: Measure = "time") -> float:
    """The record's time-to-target (seconds) or steps-to-target; ``inf`` if it missed."""
    _check_measure(measure)
    value = record.time_to_target if measure == "time" else record.steps_to_target
    return math.inf if value is None else float(value)


def best_trial_time(records: Sequence[RunRecord], measure: Measure = "time") -> float:
    """The fastest time-to-target among ``records`` (one study's trials); ``inf`` if none reached.

    >>> from types import SimpleNamespace as R
    >>> best_trial_time([R(time_to_target=None), R(time_to_target=3.0), R(time_to_target=5.0)])
    3.0
    """
    return min((reach(r, measure) for r in records), default=math.inf)


def _trial_time(records: Sequence[RunRecord], measure: Measure) -> float:
    """One configuration's time: the median over its seeds (a single seed: that run's time)."""
    return float(np.median([reach(r, measure) for r in records]))


def study_time(records: Sequence[RunRecord], measure: Measure = "time") -> float:
    """Best trial of one study: ``min`` over trials of the trial time (median over seeds)."""
    by_trial: dict[int, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_trial[r.trial].append(r)
    return min((_trial_time(rs, measure) for rs in by_trial.values()), default=math.inf)


def workload_time(
    records: Iterable[RunRecord], workload: str, optimizer: str, measure: Measure = "time"
) -> float:
    """AlgoPerf's per-workload time: median over studies of the best trial's time-to-target.

    A missed study is ``inf`` and takes part in the median; no records at all is ``inf`` too.

    >>> from types import SimpleNamespace as R
    >>> rs = [R(workload="w", optimizer="o", study=s, trial=t, seed=0, time_to_target=v)
    ...       for s, t, v in [(0, 0, 4.0), (0, 1, 2.0), (1, 0, None), (2, 0, 3.0)]]
    >>> workload_time(rs, "w", "o")  # studies: 2.0, inf, 3.0
    3.0
    """
    by_study: dict[int, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.workload == workload and r.optimizer == optimizer:
            by_study[r.study].append(r)
    if not by_study:
        return math.inf
    return float(np.median([study_time(rs, measure) for rs in by_study.values()]))


def times_table(
    records: Sequence[RunRecord], measure: Measure = "time"
) -> dict[str, dict[str, float]]:
    """``times[optimizer][workload]`` for every optimizer and workload seen in ``records``.

    An optimizer with no run on a workload gets ``inf`` there (it did not reach the target).
    """
    optimizers = sorted({r.optimizer for r in records})
    workloads = sorted({r.workload for r in records})
    return {o: {w: workload_time(records, w, o, measure) for w in workloads} for o in optimizers}


def _table(times: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    optimizers = list(times)
    workloads = sorted({w for row in times.values() for w in row})
    table = np.array(
        [[float(times[o].get(w, math.inf)) for w in workloads] for o in optimizers], dtype=float
    ).reshape(len(optimizers), len(workloads))
    if np.isnan(table).any() or (table < 0).any():
        raise ValueError("Invalid times: entries must be >= 0 or inf (no NaN, no negatives)")
    return optimizers, workloads, table


def performance_ratios(
    times: Mapping[str, Mapping[str, float]], max_ratio: float = MAX_TAU
) -> dict[str, dict[str, float]]:
    """``r[optimizer][workload] = t / min_s t`` with AlgoPerf's cut: ratios above ``max_ratio``
    become ``inf``, and so does every ratio on a workload nobody solved.

    A best time of exactly 0 (target met at the first evaluation, step 0) makes the ratio 1 for
    the optimizers at 0 and ``inf`` for the others.
    """
    optimizers, workloads, table = _table(times)
    ratios = np.full_like(table, math.inf)
    for k in range(len(workloads)):
        column = table[:, k]
        best = column.min(initial=math.inf)
        if not math.isfinite(best):
            continue
        if best == 0.0:
            ratios[:, k] = np.where(column == 0.0, 1.0, math.inf)
            continue
        column = np.where(column > max_ratio * best, math.inf, column)
        ratios[:, k] = column / best
    return {
        o: dict(zip(workloads, ratios[i].tolist(), strict=True)) for i, o in enumerate(optimizers)
    }


def _check_taus(taus: Sequence[float] | np.ndarray, min_size: int = 1) -> np.ndarray:
    grid = np.asarray(taus, dtype=float)
    if (
        grid.ndim != 1
        or grid.size < min_size
        or not np.all(np.diff(grid) > 0)
        or not grid[0] >= 1.0
    ):
        raise ValueError(
            f"Invalid taus: {grid.tolist()} (need at least {min_size} strictly increasing "
            "values >= 1)"
        )
    return grid


def performance_profiles(
    times: Mapping[str, Mapping[str, float]],
    taus: Sequence[float] | np.ndarray = DEFAULT_TAUS,
    *,
    max_ratio: float = MAX_TAU,
) -> dict[str, np.ndarray]:
    """AlgoPerf performance profiles ``rho_s(tau)``, one array over ``taus`` per optimizer.

    ``times[optimizer][workload]`` (``inf`` = miss; a workload an optimizer lacks counts as
    ``inf``). The denominator is the number of workloads in the table.

    >>> t = {"a": {"w1": 1.0, "w2": 5.0}, "b": {"w1": 2.0, "w2": 2.0}}
    >>> {k: v.tolist() for k, v in performance_profiles(t, [1.0, 2.0]).items()}
    {'a': [0.5, 0.5], 'b': [0.5, 1.0]}
    """
    grid = _check_taus(taus)
    ratios = performance_ratios(times, max_ratio)
    profiles = {}
    for optimizer, row in ratios.items():
        r = np.array(list(row.values()), dtype=float)
        n = max(r.size, 1)
        profiles[optimizer] = (r[None, :] <= grid[:, None]).sum(axis=1) / n
    return profiles


def benchmark_score(
    profile: Sequence[float] | np.ndarray, taus: Sequence[float] | np.ndarray = DEFAULT_TAUS
) -> float:
    """AlgoPerf's benchmark score: trapezoid area under ``profile`` over ``taus``, divided by the
    tau range (``compute_leaderboard_score(normalize=True)``), so it lies in [0, 1].

    >>> benchmark_score([0.0, 1.0, 1.0], [1.0, 2.5, 4.0])  # (0.75 + 1.5) / 3
    0.75
    """
    grid = _check_taus(taus, min_size=2)
    values = np.asarray(profile, dtype=float)
    if values.shape != grid.shape:
        raise ValueError(f"Invalid profile: shape {values.shape} does not match taus {grid.shape}")
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 has only trapz
    return float(trapezoid(values, grid) / (grid[-1] - grid[0]))


def exact_benchmark_score(ratios: Mapping[str, float], max_tau: float = MAX_TAU) -> float:
    """The exact area (normalised) under one optimizer's step-function profile over [1, max_tau].

    Each workload with ratio ``r <= max_tau`` contributes ``(max_tau - r) / (max_tau - 1) / n``.
    :func:`benchmark_score` on AlgoPerf's 100-point grid approximates this.

    >>> exact_benchmark_score({"w1": 1.0, "w2": 2.5, "w3": float("inf")})  # (1 + 0.5 + 0) / 3
    0.5
    """
    if max_tau <= 1.0:
        raise ValueError(f"Invalid max_tau: {max_tau} (must be > 1)")
    if not ratios:
        return 0.0
    parts = [max(0.0, max_tau - max(r, 1.0)) / (max_tau - 1.0) for r in ratios.values()]
    return sum(parts) / len(parts)


def benchmark_scores(
    times: Mapping[str, Mapping[str, float]], taus: Sequence[float] | np.ndarray = DEFAULT_TAUS
) -> dict[str, float]:
    """``{optimizer: AlgoPerf benchmark score}`` from a times table (see :func:`times_table`)."""
    return {o: benchmark_score(p, taus) for o, p in performance_profiles(times, taus).items()}


# --- speedup versus a baseline, with a bootstrap over seeds ---------------------------------


@dataclass(frozen=True)
class Speedup:
    """Baseline time / optimizer time on one workload, seed-matched, with a bootstrap CI.

    ``estimate`` is the median over matched seeds of ``t_baseline(seed) / t_optimizer(seed)``
    (> 1: the optimizer is faster). A miss is ``inf`` time, so the seed's ratio is 0 when the
    optimizer missed and ``inf`` when only the baseline missed; a seed where both missed has no
    ratio and is dropped (``n_both_missed``). So with misses the estimate is a bound, not a
    measurement: AlgoPerf's ``compute_speedups.py`` instead replaces ``inf`` by the time budget
    + 1 s; we keep ``inf`` because a diverged run's budget is not a time it would have needed.
    ``low``/``high``: percentile bootstrap interval of the median (seeds resampled with
    replacement). ``nan`` everywhere when no seed is usable.
    """

    estimate: float
    low: float
    high: float
    n_seeds: int
    n_both_missed: int
    ratios: tuple[float, ...]
    confidence: float


def seed_times(
    records: Iterable[RunRecord], workload: str, optimizer: str, measure: Measure = "time"
) -> dict[int, float]:
    """``{seed: per-workload time using only that seed's runs}`` (median over studies of the best
    trial, as in :func:`workload_time`)."""
    by_seed: dict[int, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.workload == workload and r.optimizer == optimizer:
            by_seed[r.seed].append(r)
    return {s: workload_time(rs, workload, optimizer, measure) for s, rs in by_seed.items()}


def bootstrap_median_ci(
    values: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median; deterministic given ``seed``.

    The interval ends are order statistics of the resampled medians (``method="inverted_cdf"``,
    no interpolation), so ``inf`` values give ``inf`` ends, never NaN.
    """
    if n_boot < 1:
        raise ValueError(f"Invalid n_boot: {n_boot} (must be a positive integer)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Invalid confidence: {confidence} (must be in (0, 1))")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, data.size, size=(n_boot, data.size))]
    medians = np.median(samples, axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(low), float(high)


def speed_ratio(base: float, other: float) -> float:
    """``base / other`` for times-to-target: 0 if only ``other`` missed, ``inf`` if only
    ``base`` missed, ``nan`` if both missed, 1 if both are 0.

    >>> speed_ratio(6.0, 3.0), speed_ratio(6.0, float("inf")), speed_ratio(float("inf"), 3.0)
    (2.0, 0.0, inf)
    """
    if math.isinf(base) and math.isinf(other):
        return math.nan
    if other == 0.0:
        return 1.0 if base == 0.0 else math.inf
    return base / other


def speedup(
    records: Sequence[RunRecord],
    workload: str,
    optimizer: str,
    baseline: str = "AdamW",
    *,
    measure: Measure = "time",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Speedup:
    """Seed-matched speedup of ``optimizer`` over ``baseline`` on one workload (see
    :class:`Speedup` for what a miss does)."""
    base = seed_times(records, workload, baseline, measure)
    mine = seed_times(records, workload, optimizer, measure)
    matched = sorted(set(base) & set(mine))
    all_ratios = [speed_ratio(base[s], mine[s]) for s in matched]
    ratios = [x for x in all_ratios if not math.isnan(x)]
    dropped = len(all_ratios) - len(ratios)
    if not ratios:
        return Speedup(math.nan, math.nan, math.nan, 0, dropped, (), confidence)
    estimate = float(np.median(ratios))
    low, high = bootstrap_median_ci(ratios, n_boot=n_boot, confidence=confidence, seed=seed)
    return Speedup(estimate, low, high, len(ratios), dropped, tuple(ratios), confidence)


def speedup_vs_baseline(
    records: Sequence[RunRecord],
    baseline: str = "AdamW",
    *,
    measure: Measure = "time",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[tuple[str, str], Speedup]:
    """``{(optimizer, workload): Speedup}`` for every non-baseline optimizer on every workload
    the baseline also ran. Empty if the baseline has no runs."""
    workloads = sorted({r.workload for r in records if r.optimizer == baseline})
    optimizers = sorted({r.optimizer for r in records} - {baseline})
    out = {}
    for o in optimizers:
        for w in workloads:
            if any(r.optimizer == o and r.workload == w for r in records):
                out[(o, w)] = speedup(
                    records,
                    w,
                    o,
                    baseline,
                    measure=measure,
                    n_boot=n_boot,
                    confidence=confidence,
                    seed=seed,
                )
    return out
