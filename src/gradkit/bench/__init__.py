"""``gradkit bench``: AlgoPerf-style comparisons of training algorithms on CPU-sized workloads.

Pieces: workloads (:mod:`gradkit.bench.workloads`), optimizer specs with search spaces
(:mod:`gradkit.bench.spaces`), the timed training loop (:mod:`gradkit.bench.runner`), Optuna
tuning with resumable storage (:mod:`gradkit.bench.tuning`, :mod:`gradkit.bench.storage`),
suites (:mod:`gradkit.bench.suites`), scoring and reports (:mod:`gradkit.bench.scoring`,
:mod:`gradkit.bench.report`) and the ``gradkit bench`` command (:mod:`gradkit.bench.cli`).

optuna, rich and matplotlib load inside the functions that need them, so importing this package
costs no more than torch.
"""

from gradkit.bench.records import RunRecord
from gradkit.bench.runner import train
from gradkit.bench.spaces import Dim, OptimizerSpec, WarmupCosine, builtin_specs, get_spec
from gradkit.bench.storage import StudyKey, load_records, open_storage
from gradkit.bench.suites import SUITES, Suite, get_suite, resolve_workload
from gradkit.bench.tuning import SweepConfig, run_sweep

__all__ = [
    "SUITES",
    "Dim",
    "OptimizerSpec",
    "RunRecord",
    "StudyKey",
    "Suite",
    "SweepConfig",
    "WarmupCosine",
    "builtin_specs",
    "get_spec",
    "get_suite",
    "load_records",
    "open_storage",
    "resolve_workload",
    "run_sweep",
    "train",
]
