"""The benchmark workloads of ``gradkit bench``: registry and lookup.

Each workload (a :class:`~gradkit.bench._workload.Workload`) fixes the data, the model, the loss,
a lower-is-better validation metric, a target and a step budget; ``setup(seed)`` returns a
:class:`~gradkit.bench._workload.Task` whose ``param_groups()``, ``batch_loss(step)`` and
``evaluate()`` the runner drives. Targets follow AlgoPerf (Dahl et al., "Benchmarking Neural
Network Training Algorithms", arXiv:2306.07179, 2023): roughly what a tuned AdamW reaches at
70-80% of the step budget; each workload records the AdamW hyperparameters it was set with in
``adamw_reference`` (``gradkit.optim.AdamW``, applied as the runner applies weight decay: not
to ``"vector"`` parameters) and its docstring says how the target was found.

All workloads run on a CPU in seconds and need no download:

====================  =================================================  ==================
name                  what                                               metric
====================  =================================================  ==================
``digits_logreg``     logistic regression on scikit-learn's digits       ``val_error``
``digits_mlp``        64-128-128-10 GELU MLP on digits                   ``val_error``
``multitask_digits``  digit / parity / >= 5 heads on a shared MLP         ``val_mean_error``
``noisy_quadratic``   DeepOBS-style 100-d noisy quadratic                ``excess_loss``
``char_lm``           2-layer char transformer on stdlib docstrings      ``val_loss``
``grokking``          (a + b) mod p, Power et al. 2022                   ``val_error``
====================  =================================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradkit.bench._workload import ROLES, Task, Workload
from gradkit.bench.digits import DigitsLogReg, DigitsMLP, MultiTaskDigits
from gradkit.bench.grokking import Grokking
from gradkit.bench.lm import CharLM
from gradkit.bench.quadratic import NoisyQuadratic

__all__ = [
    "ROLES",
    "WORKLOADS",
    "CharLM",
    "DigitsLogReg",
    "DigitsMLP",
    "Grokking",
    "MultiTaskDigits",
    "NoisyQuadratic",
    "Task",
    "Workload",
    "get_workload",
]

WORKLOADS: dict[str, Callable[..., Workload]] = {
    cls.name: cls
    for cls in (DigitsLogReg, DigitsMLP, MultiTaskDigits, NoisyQuadratic, CharLM, Grokking)
}


def get_workload(name: str, **options: Any) -> Workload:
    """The workload called ``name``, built with ``options`` (e.g. ``quick=False``).

    >>> get_workload("noisy_quadratic").metric
    'excess_loss'
    """
    if name not in WORKLOADS:
        valid = ", ".join(sorted(WORKLOADS))
        raise ValueError(f"Unknown workload: {name!r} (valid: {valid})")
    return WORKLOADS[name](**options)
