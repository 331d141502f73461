"""AlgoPerf's external-tuning ruleset on Optuna, resumable.

For every (workload, optimizer) the optimizer's search space is sampled by ``studies``
independent studies of ``trials`` trials each, drawn quasi-randomly
(``optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=sampler_seed + study)``;
no pruning: every trial runs to its step budget, or to its target with ``stop_at_target``).
This follows Dahl et al., "Benchmarking Neural Network Training Algorithms" (arXiv:2306.07179,
2023; ``algoperf/halton.py`` in https://github.com/mlcommons/algorithmic-efficiency), which
draws 3 studies x 5 trials from a Halton sequence. Optuna's QMC sampler draws the *first* trial
of a study with its independent (random, seeded) sampler, then follows the Halton sequence; with
``include_defaults`` the first trial is the spec's defaults instead.

Seeds: ``seeds`` runs every configuration with seeds ``0..seeds-1``; each seed has its own study
with the same sampler seed, so the same Halton points are drawn for every seed.

Resume: a study is done when ``trials`` of its trials hold a run record. Finished trials (an
``"ok"``, ``"diverged"`` or ``"failed"`` run alike) are never recomputed. A trial left RUNNING by
a dead process on this machine (process id gone) is failed and re-queued with the same
parameters at once; one from another machine after the heartbeat grace period. Re-queued trials
keep their ``config_index``, which becomes the record's ``trial``. (A process killed in the
milliseconds while Optuna writes a trial's parameters one by one leaves some unwritten; the re-run
keeps those written and draws the rest anew.)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gradkit.bench.records import RunRecord
from gradkit.bench.runner import train
from gradkit.bench.storage import (
    CONFIG_ATTR,
    DEFAULTS_ATTR,
    RECORD_ATTR,
    RETRY_ATTR,
    WORKER_ATTR,
    StudyKey,
    enqueue_retry,
    load_records,
    quiet_optuna_warnings,
    record_of,
    worker_identity,
    worker_is_dead,
)


@dataclass(frozen=True)
class SweepConfig:
    """What to run: ``defaults_only`` means one trial per study, the spec's defaults."""

    workloads: tuple[str, ...]
    optimizers: tuple[str, ...]
    suite: str = "custom"
    seeds: int = 1
    studies: int = 1
    trials: int = 5
    defaults_only: bool = False
    include_defaults: bool = False
    stop_at_target: bool = False
    sampler_seed: int = 0
    tune: tuple[str, ...] | None = None
    """Search only these hyperparameters (others at the spec's defaults); ``None``: all."""

    def __post_init__(self) -> None:
        for name in ("seeds", "studies", "trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")
        if not self.workloads or not self.optimizers:
            raise ValueError("Invalid sweep: needs at least one workload and one optimizer")

    @property
    def mode(self) -> str:
        """Part of the study name: runs stopped at the target are kept apart from full runs."""
        mode = "defaults" if self.defaults_only else "tuned"
        if self.tune and not self.defaults_only:
            mode += "-" + "+".join(self.tune)
        return mode + ("-stop" if self.stop_at_target else "")

    @property
    def trials_per_study(self) -> int:
        return 1 if self.defaults_only else self.trials

    def study_keys(self) -> list[StudyKey]:
        studies = 1 if self.defaults_only else self.studies
        return [
            StudyKey(self.suite, w, o, self.mode, k, s)
            for w in self.workloads
            for o in self.optimizers
            for k in range(studies)
            for s in range(self.seeds)
        ]


class SweepProgress:
    """Progress callbacks (no-op here; the CLI draws a rich progress bar)."""

    def start(self, total_steps: int, runs: int) -> None:
        """Before the first run: the training steps and runs still to do."""

    def run_started(self, key: StudyKey, trial: int) -> None:
        """A run begins."""

    def advance(self, steps: int) -> None:
        """``steps`` more training steps are done."""

    def run_finished(self, record: RunRecord, skipped_steps: int) -> None:
        """A run ended; ``skipped_steps`` is its unused budget (early stop, divergence)."""


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no tracebacks on Ctrl-C


def _load_study(storage: Any, key: StudyKey, sampler_seed: int) -> Any:
    import optuna

    # each optimizer's studies draw their own scrambled Halton points (a stable hash of the name):
    # with one shared sequence every method would try the same relative positions in its range,
    # and comparisons of best learning rates would measure the ranges, not the methods
    # (a state-policy variant "AdamW@q8" shares AdamW's points so their trials pair up)
    base = key.optimizer.partition("@")[0]
    seed = sampler_seed + key.study + zlib.crc32(base.encode()) % 1_000_003
    sampler = optuna.samplers.QMCSampler(
        qmc_type="halton", scramble=True, seed=seed, warn_independent_sampling=False
    )
    return optuna.create_study(
        study_name=key.name, storage=storage, sampler=sampler,
        pruner=optuna.pruners.NopPruner(), direction="minimize", load_if_exists=True,
    )  # fmt: skip


def requeue_unfinished(study: Any) -> int:
    """Re-queue, with the same parameters and config index, every trial that ended without a
    record and has not been re-queued yet: RUNNING trials whose worker process on this machine
    is gone (failed first) and FAIL trials (an interrupt, a crash of the process). A dead
    worker's RUNNING trial that had stored its record is marked complete instead. Returns how
    many were re-queued."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    count = 0
    for trial in trials:
        if trial.number in retried or trial.state not in (TrialState.RUNNING, TrialState.FAIL):
            continue
        record = record_of(trial)
        if trial.state == TrialState.RUNNING:
            if not worker_is_dead(trial.user_attrs.get(WORKER_ATTR)):
                continue
            # killed after storing its record but before Optuna marked it done: finish it
            state = TrialState.COMPLETE if record is not None else TrialState.FAIL
            values = [_objective_value(record)] if record is not None else None
            try:
                study._storage.set_trial_state_values(trial._trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
        if record is None:
            enqueue_retry(study, trial)
            count += 1
    return count


def _unfinished(trial: Any) -> bool:
    """Running, or failed without a record (a dead or interrupted process)."""
    from optuna.trial import TrialState

    failed = trial.state == TrialState.FAIL and RECORD_ATTR not in trial.user_attrs
    return trial.state == TrialState.RUNNING or failed


def _pending(trials: Sequence[Any], wanted: int) -> int:
    """Trials still to run: wanted minus recorded ones minus those running (alive) elsewhere."""
    from optuna.trial import TrialState

    recorded = sum(RECORD_ATTR in t.user_attrs for t in trials)
    running = sum(t.state == TrialState.RUNNING and RECORD_ATTR not in t.user_attrs for t in trials)
    return max(0, wanted - recorded - running)


def _objective(
    config: SweepConfig, key: StudyKey, workload: Any, spec: Any, progress: SweepProgress
) -> Callable[[Any], float]:
    def objective(trial: Any) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        index = int(trial.user_attrs.get(CONFIG_ATTR, trial.number))
        trial.set_user_attr(CONFIG_ATTR, index)
        hparams = spec.sample(trial) if not config.defaults_only else dict(spec.defaults)
        if trial.user_attrs.get(DEFAULTS_ATTR):
            hparams = dict(spec.defaults)  # exact defaults (the Optuna point is clipped to range)
        progress.run_started(key, index)
        done = [0]

        def on_eval(step: int, _total: int) -> None:
            progress.advance(step - done[0])
            done[0] = step

        record = train(
            workload, None, spec, hparams, key.seed, study=key.study, trial=index,
            suite=key.suite, stop_at_target=config.stop_at_target, progress=on_eval,
        )  # fmt: skip
        trial.set_user_attr(RECORD_ATTR, record.to_json())
        progress.run_finished(record, int(workload.max_steps) - done[0])
        return _objective_value(record)

    return objective


def _objective_value(record: RunRecord) -> float:
    """What Optuna minimises: time-to-target, infinity for a miss (scoring reads the records)."""
    return float(record.time_to_target) if record.reached() else math.inf


def _defaults_point(spec: Any) -> dict[str, float]:
    """The spec's defaults as Optuna parameters (``one_minus_*`` where sampled that way),
    clipped into the search ranges: a default weight decay of 0 has no place on a log scale.
    The trial carries ``DEFAULTS_ATTR`` and runs with the exact defaults; the clipped point only
    tells Optuna's QMC sampler the search space (it takes it from the first trial)."""
    point = {}
    for dim in spec.space:
        value = float(spec.defaults[dim.name])
        low, high = dim.sampled_bounds()
        point[dim.param_name] = min(high, max(low, 1.0 - value if dim.one_minus else value))
    return point


def run_sweep(
    config: SweepConfig,
    storage: Any,
    workloads: dict[str, Any],
    specs: dict[str, Any],
    progress: SweepProgress | None = None,
) -> list[RunRecord]:
    """Run whatever the sweep still lacks and return all its records (from the storage).

    ``workloads`` / ``specs`` map the config's names to workload objects and optimizer specs.
    """
    import optuna

    progress = progress or SweepProgress()
    if config.tune:
        specs = {name: spec.restricted(config.tune) for name, spec in specs.items()}
    _quiet_optuna()
    plan = []
    for key in config.study_keys():
        with quiet_optuna_warnings():
            study = _load_study(storage, key, config.sampler_seed)
        trials = study.get_trials(deepcopy=False)
        if any(_unfinished(t) for t in trials):
            with quiet_optuna_warnings():  # other machines' dead trials -> re-queued
                optuna.storages.fail_stale_trials(study)
            if requeue_unfinished(study):
                trials = study.get_trials(deepcopy=False)
        if config.include_defaults and not config.defaults_only and not trials:
            point = _defaults_point(specs[key.optimizer])
            study.enqueue_trial(point, user_attrs={DEFAULTS_ATTR: True})
        pending = _pending(trials, config.trials_per_study)
        if pending:
            plan.append((key, study, pending))
    total_steps = sum(int(workloads[k.workload].max_steps) * n for k, _, n in plan)
    progress.start(total_steps, sum(n for _, _, n in plan))
    for key, study, _ in plan:
        objective = _objective(config, key, workloads[key.workload], specs[key.optimizer], progress)
        while _pending(study.get_trials(deepcopy=False), config.trials_per_study) > 0:
            with quiet_optuna_warnings():
                study.optimize(objective, n_trials=1, gc_after_trial=False)
    # the database may hold more trials (an earlier --trials 8): report the ones asked for
    wanted = config.trials_per_study
    return [r for r in load_records(storage, keys=config.study_keys()) if r.trial < wanted]


def sweep_size(config: SweepConfig) -> int:
    """Number of training runs a complete sweep holds."""
    return len(config.study_keys()) * config.trials_per_study


def summarize(records: Sequence[RunRecord]) -> dict[str, int]:
    """Counts by status (for the CLI's closing line)."""
    counts = {"ok": 0, "diverged": 0, "failed": 0}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts
