"""PNG plots for the bench report (matplotlib, Agg backend; imported only when plotting).

- validation curves per workload: metric vs training time and vs step, the best run per optimizer,
  the target as a dashed line (the curves AlgoPerf's time-to-target is read from);
- performance profiles ``rho_s(tau)`` as step functions over tau in [1, 4] (AlgoPerf's
  ``plot_performance_profiles``: x "ratio to best", y "proportion of workloads");
- time-to-target bars per workload with a bootstrap interval over seeds, misses marked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradkit.bench import scoring

if TYPE_CHECKING:
    from gradkit.bench.records import RunRecord

DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(names))}


def representative_run(records: Sequence[RunRecord]) -> RunRecord:
    """The run to draw for one optimizer: the fastest to reach the target, else the one with the
    lowest final value (NaN counts as worst)."""
    if not records:
        raise ValueError("Invalid records: empty (need at least one run)")

    def key(r: RunRecord) -> tuple[float, float]:
        final = r.final_value if math.isfinite(r.final_value) else math.inf
        return (scoring.reach(r, "time"), final)

    return min(records, key=key)


def _label(name: str) -> str:
    """Text as matplotlib should print it: a ``$`` in a user's name is not mathtext."""
    return name.replace("$", r"\$")


def _use_log_scale(values: Sequence[float]) -> bool:
    finite = np.asarray([v for v in values if math.isfinite(v) and v > 0])
    return finite.size > 1 and finite.max() / finite.min() > 100


def plot_curves(records: Sequence[RunRecord], workload: str, path: Path) -> Path:
    """Validation metric vs training seconds and vs step, one line per optimizer (its
    :func:`representative_run`), with the target."""
    plt = _pyplot()
    runs = [r for r in records if r.workload == workload]
    if not runs:
        raise ValueError(f"Invalid workload: {workload!r} has no runs")
    optimizers = sorted({r.optimizer for r in runs})
    colors = _colors(optimizers)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    all_values: list[float] = [runs[0].target]
    for name in optimizers:
        best = representative_run([r for r in runs if r.optimizer == name])
        all_values += best.values
        axes[0].plot(best.train_time, best.values, color=colors[name], label=_label(name), lw=1.5)
        axes[1].plot(best.steps, best.values, color=colors[name], lw=1.5)
    for ax, xlabel in zip(axes, ("training time (s, evaluation excluded)", "step"), strict=True):
        ax.axhline(runs[0].target, color="black", ls="--", lw=1, label="target")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if _use_log_scale(all_values):
            ax.set_yscale("log")
    axes[0].set_ylabel(f"{runs[0].metric} (lower is better)")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{_label(workload)}: best run per optimizer")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.88, wspace=0.06)
    return _save(fig, path)


def plot_profiles(profiles: Mapping[str, np.ndarray], taus: Sequence[float], path: Path) -> Path:
    """AlgoPerf performance profiles as step curves."""
    plt = _pyplot()
    colors = _colors(list(profiles))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, profile in sorted(profiles.items()):
        ax.step(taus, profile, where="post", color=colors[name], label=_label(name), lw=1.5)
    ax.set_xlabel("ratio of time-to-target to the best optimizer (tau)")
    ax.set_ylabel("proportion of workloads")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(taus[0], taus[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Performance profiles (AlgoPerf)")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    return _save(fig, path)


def plot_time_to_target(
    records: Sequence[RunRecord],
    path: Path,
    measure: scoring.Measure = "time",
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """One panel per workload: per-workload time (median over studies of the best trial) as a
    bar, with a bootstrap 95% interval of the median over seeds when there are 2+ seeds; a miss
    is written as "miss" instead of a bar."""
    plt = _pyplot()
    workloads = sorted({r.workload for r in records})
    optimizers = sorted({r.optimizer for r in records})
    colors = _colors(optimizers)
    # fixed margins in inches (tight_layout costs seconds per figure on a busy 2-core machine)
    label_in = 0.2 + 0.075 * max(len(o) for o in optimizers)
    width, height = label_in + 3.2 * len(workloads), 0.3 * len(optimizers) + 1.4
    fig, axes = plt.subplots(1, len(workloads), figsize=(width, height), squeeze=False, sharey=True)
    for ax, workload in zip(axes[0], workloads, strict=True):
        _bars(ax, records, workload, optimizers, colors, measure, n_boot, seed)
    unit = "training seconds" if measure == "time" else "steps"
    fig.suptitle(f"{unit} to target (bar: median over studies; line: 95% CI over seeds)")
    fig.subplots_adjust(
        left=label_in / width, right=0.98, bottom=0.45 / height, top=1 - 0.6 / height, wspace=0.12
    )
    return _save(fig, path)


def _bars(
    ax: Any,
    records: Sequence[RunRecord],
    workload: str,
    optimizers: list[str],
    colors: dict[str, Any],
    measure: scoring.Measure,
    n_boot: int,
    seed: int,
) -> None:
    finite = []
    for y, name in enumerate(optimizers):
        value = scoring.workload_time(records, workload, name, measure)
        per_seed = list(scoring.seed_times(records, workload, name, measure).values())
        if not math.isfinite(value):
            ax.text(0, y, " miss", va="center", fontsize=8, color="gray")
            continue
        finite.append(value)
        ax.barh(y, value, color=colors[name])
        if len(per_seed) > 1:
            low, high = scoring.bootstrap_median_ci(per_seed, n_boot=n_boot, seed=seed)
            high = min(high, 1e300)
            ax.plot([low, high], [y, y], color="black", lw=1)
    ax.set_yticks(range(len(optimizers)), [_label(o) for o in optimizers], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(_label(workload), fontsize=9)
    ax.set_ylim(len(optimizers) - 0.5, -0.5)  # first optimizer on top, labels inside the axes
    if finite:
        ax.set_xlim(0, 1.3 * max(finite))
    ax.grid(axis="x", alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
