"""Where benchmark runs live: Optuna's RDB storage (SQLite file by default, any SQLAlchemy URL).

Each study is one (suite, workload, optimizer, mode, study index, seed) and is named by
:class:`StudyKey`; each trial stores its full :class:`RunRecord` as the JSON user attribute
``"record"``, so a report can be rebuilt from the database alone (:func:`load_records`).

``db`` is a file path (``./gradkit-bench/bench.db`` becomes ``sqlite:///<absolute path>``) or a
URL. Several processes or machines can share one sweep through a server database, e.g.
``postgresql://user:password@host:5432/bench`` (needs a driver such as ``psycopg2``); Optuna's
FAQ advises against SQLite for many parallel workers (``database is locked``).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradkit.bench.records import RunRecord

PREFIX = "gradkit-bench"
SEP = "|"
RECORD_ATTR = "record"
WORKER_ATTR = "worker"
CONFIG_ATTR = "config_index"
RETRY_ATTR = "retry_of"
DEFAULTS_ATTR = "defaults"
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120


class StorageError(ValueError):
    """The database cannot be opened or used (one-line message for the CLI)."""


@dataclass(frozen=True, order=True)
class StudyKey:
    """Identifies one Optuna study: ``mode`` is ``"tuned"`` or ``"defaults"``.

    Example:
        >>> key = StudyKey("quick", "digits_mlp", "AdamW", "tuned", 0, 1)
        >>> key.name
        'gradkit-bench|quick|digits_mlp|AdamW|tuned|study0|seed1'
        >>> StudyKey.parse(key.name) == key
        True
    """

    suite: str
    workload: str
    optimizer: str
    mode: str
    study: int
    seed: int

    @property
    def name(self) -> str:
        parts = (PREFIX, self.suite, self.workload, self.optimizer, self.mode)
        return SEP.join((*parts, f"study{self.study}", f"seed{self.seed}"))

    @classmethod
    def parse(cls, name: str) -> StudyKey | None:
        """The key of a study name, or None for a study gradkit did not create."""
        parts = name.split(SEP)
        if len(parts) != 7 or parts[0] != PREFIX:
            return None
        study, seed = parts[5], parts[6]
        if not (study.startswith("study") and seed.startswith("seed")):
            return None
        try:
            return cls(*parts[1:5], int(study[5:]), int(seed[4:]))
        except ValueError:
            return None


def storage_url(db: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL: URLs pass through; a path becomes ``sqlite:///`` (parent created)."""
    text = str(db)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise StorageError(f"Invalid --db {text!r}: is a directory (give a file path or a URL)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"Cannot create the folder for database {text!r}: {err}") from err
    return f"sqlite:///{path}"


def redacted(url: str) -> str:
    """The URL with any password hidden, for messages (a file path is returned as is)."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(db: str | os.PathLike[str], *, heartbeat: bool = True) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``db``; :class:`StorageError` if unreachable.

    With ``heartbeat`` Optuna records a heartbeat for running trials every
    ``HEARTBEAT_INTERVAL_S`` seconds; a trial silent for ``GRACE_PERIOD_S`` (its process died,
    on any machine) is failed and re-queued with the same parameters
    (unless it had stored its record). Trials of dead processes on *this* machine are detected at
    once from their process id (see :mod:`gradkit.bench.tuning`).
    """
    import optuna

    url = storage_url(db)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with quiet_optuna_warnings():
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = {
                    "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                    "grace_period": GRACE_PERIOD_S,
                    "heartbeat_stale_trial_callback": _retry_stale,
                }
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as err:  # sqlalchemy/driver errors have many types; all mean "unusable"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"Cannot open database {redacted(url)}: {reason}") from err


@contextmanager
def quiet_optuna_warnings() -> Iterator[None]:
    """Silence Optuna's experimental-feature notices (heartbeat, QMC sampler) and the
    out-of-range note for re-queued points: they are expected here and say nothing to a user."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        yield


def enqueue_retry(study: Any, trial: Any) -> None:
    """Queue ``trial``'s configuration again: same parameters, same user attributes (config
    index, defaults flag) except its worker, plus ``RETRY_ATTR`` naming the trial it replaces."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k != WORKER_ATTR}
    attrs[RETRY_ATTR] = trial.number
    attrs.setdefault(CONFIG_ATTR, trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def _retry_stale(study: Any, trial: Any) -> None:
    """Optuna's heartbeat callback: a trial whose worker went silent is re-queued, unless it
    had already stored its record (killed between storing it and being marked complete)."""
    if RECORD_ATTR not in trial.user_attrs:
        enqueue_retry(study, trial)


def record_of(trial: Any) -> RunRecord | None:
    """The run record stored on an Optuna trial, or None if it has none (yet)."""
    data = trial.user_attrs.get(RECORD_ATTR)
    return RunRecord.from_json(data) if isinstance(data, dict) else None


def bench_studies(storage: Any, suite: str | None = None) -> list[StudyKey]:
    """The key of every gradkit study in the storage (optionally of one suite), sorted."""
    import optuna

    keys = [StudyKey.parse(name) for name in optuna.get_all_study_names(storage)]
    return sorted(k for k in keys if k is not None and (suite is None or k.suite == suite))


def load_records(
    storage: Any, *, suite: str | None = None, keys: list[StudyKey] | None = None
) -> list[RunRecord]:
    """Every stored run record (of one suite, or of the given studies), ordered by study and
    trial, with trials numbered 0, 1, ... in each study; the report needs nothing else."""
    wanted = {k.name for k in keys} if keys is not None else None
    records = []
    for key in bench_studies(storage, suite):
        if wanted is not None and key.name not in wanted:
            continue
        trials = storage.get_all_trials(storage.get_study_id_from_name(key.name), deepcopy=False)
        found = [r for r in map(record_of, trials) if r is not None]
        # configuration indices have gaps where a trial was re-run: number them 0, 1, 2, ...
        dense = {index: rank for rank, index in enumerate(sorted({r.trial for r in found}))}
        for record in found:
            record.trial = dense[record.trial]
        records.extend(found)
    return sorted(
        records, key=lambda r: (r.suite, r.workload, r.optimizer, r.study, r.trial, r.seed)
    )


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host, process id and the process's start time (pid reuse guard)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def worker_is_dead(worker: Any) -> bool:
    """Whether a trial's worker is a process on this machine that no longer runs.

    False for workers on other machines (their trials are caught by the heartbeat) and for
    trials without a worker record.
    """
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    start = _start_ticks(pid)
    return start is not None and worker.get("start") is not None and start != worker["start"]


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
