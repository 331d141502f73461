"""Storage and tuning: round trip, QMC reproducibility, resume after interruption and kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.tiny_workloads import TinyMLP, tiny_sweep
from gradkit.bench.storage import StorageError, StudyKey, load_records, open_storage
from gradkit.bench.tuning import SweepConfig, SweepProgress, run_sweep

TESTS = Path(__file__).resolve().parents[1]


def _trials(db: Path, key: StudyKey) -> list:
    import optuna

    return optuna.load_study(study_name=key.name, storage=open_storage(db)).get_trials()


def _configs(records) -> dict[tuple[int, int, int], dict]:
    return {(r.study, r.trial, r.seed): r.hparams for r in records}


def test_records_round_trip_through_the_database(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    records = tiny_sweep(str(db), trials=2, optimizers=("AdamW", "Lion"))
    assert len(records) == 4 and {r.optimizer for r in records} == {"AdamW", "Lion"}
    assert load_records(open_storage(db)) == records  # a fresh connection, nothing cached
    assert load_records(open_storage(db), suite="other") == []
    assert all(r.suite == "test" and r.status == "ok" for r in records)


def test_qmc_trials_are_reproducible_and_studies_differ(tmp_path: Path) -> None:
    short = TinyMLP(max_steps=10)
    a = tiny_sweep(str(tmp_path / "a.db"), trials=2, studies=2, seeds=2, workload=short)
    b = tiny_sweep(str(tmp_path / "b.db"), trials=2, studies=2, seeds=2, workload=short)
    assert _configs(a) == _configs(b) and len(a) == 8
    lr = {(r.study, r.trial, r.seed): r.hparams["lr"] for r in a}
    assert lr[(0, 1, 0)] == lr[(0, 1, 1)]  # every seed runs the same configurations
    assert lr[(0, 1, 0)] != lr[(1, 1, 0)]  # independent studies draw different points
    assert lr[(0, 0, 0)] != lr[(0, 1, 0)]
    assert {r.seed for r in a} == {0, 1}


def test_defaults_only_and_include_defaults(tmp_path: Path) -> None:
    from gradkit.bench.spaces import get_spec

    defaults = get_spec("AdamW").defaults
    only = tiny_sweep(str(tmp_path / "d.db"), trials=5, studies=3, defaults_only=True)
    assert len(only) == 1 and only[0].hparams == defaults and only[0].trial == 0
    # Muon's default weight decay 0 lies outside its log-scale range: still run exactly
    muon = get_spec("Muon").defaults
    mixed = tiny_sweep(
        str(tmp_path / "m.db"), trials=2, optimizers=("Muon",), include_defaults=True
    )
    assert mixed[0].hparams == muon and mixed[1].hparams != muon


def test_failed_and_diverged_trials_count_as_done(tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    broken = TinyMLP(fail_at=3)
    first = tiny_sweep(db, trials=2, workload=broken)
    assert [r.status for r in first] == ["failed", "failed"]
    again = tiny_sweep(db, trials=2, workload=broken)
    assert again == first  # stored, not recomputed
    key = StudyKey("test", "tiny_mlp", "AdamW", "tuned", 0, 0)
    assert len(_trials(Path(db), key)) == 2


def test_rerun_of_a_finished_sweep_computes_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    first = tiny_sweep(db, trials=2)

    class Counting(SweepProgress):
        runs = -1

        def start(self, total_steps: int, runs: int) -> None:
            Counting.runs = runs

    config = SweepConfig(("tiny_mlp",), ("AdamW",), suite="test", trials=2)
    from gradkit.bench.spaces import get_spec

    again = run_sweep(config, open_storage(db), {"tiny_mlp": TinyMLP()},
                      {"AdamW": get_spec("AdamW")}, Counting())  # fmt: skip
    assert Counting.runs == 0 and again == first


class _InterruptAfter(SweepProgress):
    def __init__(self, runs: int) -> None:
        self.left = runs

    def run_started(self, key: StudyKey, trial: int) -> None:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1


def test_resume_after_interrupt_reruns_the_interrupted_configuration(tmp_path: Path) -> None:
    from gradkit.bench.spaces import get_spec

    reference = tiny_sweep(str(tmp_path / "ref.db"), trials=4)
    db = tmp_path / "int.db"
    config = SweepConfig(("tiny_mlp",), ("AdamW",), suite="test", trials=4)
    args = (config, open_storage(db), {"tiny_mlp": TinyMLP()}, {"AdamW": get_spec("AdamW")})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(*args, _InterruptAfter(2))  # Ctrl-C as the third run starts
    assert len(load_records(open_storage(db))) == 2
    resumed = run_sweep(*args)
    assert [r.trial for r in resumed] == [0, 1, 2, 3]
    assert _configs(resumed) == _configs(reference)  # same points as an uninterrupted sweep
    assert [r.values for r in resumed] == [r.values for r in reference]


def test_killed_sweep_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    """SIGKILL a sweep process mid-trial; rerun: the RUNNING trial reruns with its parameters."""
    from optuna.trial import TrialState

    db = tmp_path / "kill.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "TINY_STEP_SLEEP": "0.05",
        "OMP_NUM_THREADS": "1",
    }
    script = TESTS / "bench" / "tiny_workloads.py"
    proc = subprocess.Popen([sys.executable, str(script), str(db), "4"], env=env)
    key = StudyKey("test", "tiny_mlp", "AdamW", "tuned", 0, 0)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.1)
            done, running = _poll(db)
            if done >= 1 and running:
                break
        else:
            pytest.fail("the sweep subprocess never got to its second trial")
    finally:
        proc.kill()
        proc.wait()
    trials = _trials(db, key)
    done = [t for t in trials if "record" in t.user_attrs]
    killed = trials[running[0]]
    assert killed.state == TrialState.RUNNING and "record" not in killed.user_attrs
    before = {t.number: t.user_attrs["record"] for t in done}
    records = tiny_sweep(str(db), trials=4)
    trials = _trials(db, key)
    assert sorted(r.trial for r in records) == [0, 1, 2, 3]  # none lost, none duplicated
    after = {t.number: t.user_attrs["record"] for t in trials if "record" in t.user_attrs}
    assert all(after[n] == rec for n, rec in before.items())  # finished trials not recomputed
    assert trials[killed.number].state == TrialState.FAIL
    rerun = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(rerun) == 1 and rerun[0].params == killed.params
    assert rerun[0].user_attrs["config_index"] == killed.number


def _poll(db: Path) -> tuple[int, list[int]]:
    """(finished trials, RUNNING trials with all four AdamW parameters and no record), read
    with plain sqlite3 so polling stays light while the subprocess writes."""
    import sqlite3

    if not db.exists():
        return 0, []
    try:
        with sqlite3.connect(db, timeout=1) as con:
            done = con.execute(
                "SELECT COUNT(*) FROM trial_user_attributes WHERE key = 'record'"
            ).fetchone()[0]
            running = con.execute(
                "SELECT number FROM trials t WHERE state = 'RUNNING' AND 4 = "
                "(SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id) AND NOT EXISTS "
                "(SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
                "AND a.key = 'record')"
            ).fetchall()
    except sqlite3.Error:  # schema not created yet, or locked for a moment
        return 0, []
    return done, [n for (n,) in running]


def test_unusable_databases_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory"):
        open_storage(tmp_path)
    with pytest.raises(StorageError, match="Cannot open database") as err:
        open_storage("postgresql://someone:secret@127.0.0.1:1/bench")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StorageError, match="Cannot"):
        open_storage("/proc/no/such/dir/bench.db")


def test_study_key_parse_rejects_foreign_names() -> None:
    assert StudyKey.parse("my-own-study") is None
    assert StudyKey.parse("gradkit-bench|a|b|c|tuned|studyX|seed0") is None


def test_sweep_config_validates_counts() -> None:
    with pytest.raises(ValueError, match="Invalid trials: 0"):
        SweepConfig(("w",), ("AdamW",), trials=0)


def _dead_worker() -> dict:
    """A worker record naming a process of this machine that has exited."""
    import socket

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {"host": socket.gethostname(), "pid": proc.pid, "start": None}


def test_dead_trial_that_stored_its_record_is_completed_not_rerun(tmp_path: Path) -> None:
    """Killed between storing the record and Optuna's 'complete': keep it, run nothing again."""
    import optuna
    from optuna.trial import TrialState

    db = tmp_path / "rec.db"
    (first,) = tiny_sweep(str(db), trials=1, workload=TinyMLP(max_steps=10))
    key = StudyKey("test", "tiny_mlp", "AdamW", "tuned", 0, 0)
    study = optuna.load_study(study_name=key.name, storage=open_storage(db))
    trial = study.ask()
    trial.set_user_attr("worker", _dead_worker())
    trial.set_user_attr("config_index", trial.number)
    trial.set_user_attr("record", {**first.to_json(), "trial": trial.number, "seed": 0})
    records = tiny_sweep(str(db), trials=2, workload=TinyMLP(max_steps=10))
    trials = _trials(db, key)
    assert len(records) == 2 and len(trials) == 2  # nothing re-queued, nothing re-run
    assert trials[1].state == TrialState.COMPLETE


def test_heartbeat_stale_trials_are_requeued_only_without_a_record(tmp_path: Path) -> None:
    import optuna

    from gradkit.bench.storage import _retry_stale

    study = optuna.create_study(storage=open_storage(tmp_path / "hb.db", heartbeat=False))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    trial.set_user_attr("config_index", 0)
    frozen = study.get_trials()[0]
    _retry_stale(study, frozen)
    retry = study.get_trials()[1]
    assert retry.system_attrs["fixed_params"] == frozen.params
    assert retry.user_attrs["retry_of"] == 0
    trial.set_user_attr("record", {"workload": "w"})
    _retry_stale(study, study.get_trials()[0])
    assert len(study.get_trials()) == 2
