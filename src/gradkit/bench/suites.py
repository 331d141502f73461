"""Named benchmark suites and the resolution of workload/optimizer names (or import paths).

``quick`` is the README's main command: the seven headline optimizers (and AdamW with 8-bit
state, ``AdamW@q8``, for the 8-bit claim check) on the four small workloads, each tuned by one study of eight trials over the learning rate only (the spec's defaults
plus seven Halton points of the lr range; Muon also tunes its AdamW fallback's ``adam_lr``; other
hyperparameters stay at their defaults), two seeds: 512 runs, about 5-6 minutes on two CPU
cores, report included. A learning-rate sweep is the cheapest tuning that gives every method a
fair chance (no optimizer reaches these targets at its defaults) and it measures each method's
best learning rate, which the published-claims section compares (Lion vs AdamW). ``standard`` follows
AlgoPerf's external-tuning ruleset (3 studies x 5 Halton trials, no defaults point) on every
workload at full size with three seeds; expect hours on a CPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradkit.bench.tuning import SweepConfig

HEADLINE_OPTIMIZERS = ("AdamW", "SGD", "Lion", "Muon", "Sophia", "AdEMAMix", "DiffGrad")
STANDARD_OPTIMIZERS = (
    *HEADLINE_OPTIMIZERS, "Adam", "NAdam", "Signum", "MARS", "Grams",
)  # fmt: skip
QUICK_WORKLOADS = ("digits_logreg", "digits_mlp", "noisy_quadratic", "multitask_digits")
# AdamW with 8-bit state next to fp32 AdamW (same trials): the report's 8-bit claim check
QUICK_OPTIMIZERS = (*HEADLINE_OPTIMIZERS, "AdamW@q8")


@dataclass(frozen=True)
class Suite:
    """A named sweep: which workloads (at which size), optimizers, and how much tuning.

    ``workloads=None`` means every registered workload.
    """

    name: str
    description: str
    workloads: tuple[str, ...] | None
    optimizers: tuple[str, ...]
    seeds: int
    studies: int
    trials: int
    include_defaults: bool = False
    quick_sizes: bool = True
    tune: tuple[str, ...] | None = None

    def config(
        self,
        *,
        workloads: Sequence[str] | None = None,
        optimizers: Sequence[str] | None = None,
        seeds: int | None = None,
        studies: int | None = None,
        trials: int | None = None,
        defaults_only: bool = False,
    ) -> SweepConfig:
        """The sweep with the given overrides (names must already be resolved)."""
        return SweepConfig(
            workloads=tuple(workloads if workloads is not None else self.workload_names()),
            optimizers=tuple(optimizers if optimizers is not None else self.optimizers),
            suite=self.name,
            seeds=self.seeds if seeds is None else seeds,
            studies=self.studies if studies is None else studies,
            trials=self.trials if trials is None else trials,
            defaults_only=defaults_only,
            include_defaults=self.include_defaults,
            tune=self.tune,
        )

    def workload_names(self) -> tuple[str, ...]:
        return self.workloads if self.workloads is not None else tuple(workload_factories())

    def summary(self) -> str:
        tuning = f"{self.studies} study x {self.trials} trials"
        if self.include_defaults:
            tuning += " (defaults + Halton)"
        if self.tune:
            tuning += f" over {', '.join(self.tune)} only"
        return (
            f"{self.description} [{len(self.optimizers)} optimizers, "
            f"{'all' if self.workloads is None else len(self.workloads)} workloads, {tuning}, "
            f"{self.seeds} seed(s)]"
        )


SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        "minutes on a laptop CPU: the headline optimizers on the small workloads",
        QUICK_WORKLOADS,
        QUICK_OPTIMIZERS,
        seeds=2,
        studies=1,
        trials=8,
        include_defaults=True,
        tune=("lr", "adam_lr"),
    ),
    "standard": Suite(
        "standard",
        "AlgoPerf external tuning on every workload at full size (hours on a CPU)",
        None,
        STANDARD_OPTIMIZERS,
        seeds=3,
        studies=3,
        trials=5,
        quick_sizes=False,
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"Unknown suite: {name!r}; choose from: {', '.join(SUITES)}")
    return SUITES[name]


def workload_factories() -> dict[str, Any]:
    """The registered workloads (``gradkit.bench.workloads.WORKLOADS``)."""
    from gradkit.bench.workloads import WORKLOADS

    return dict(WORKLOADS)


def _instantiate(factory: Any, quick: bool) -> Any:
    try:
        accepts_quick = "quick" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_quick = False
    return factory(quick=quick) if accepts_quick else factory()


def _check_workload(name: str, obj: Any) -> Any:
    missing = [a for a in ("name", "metric", "target", "max_steps", "eval_every", "setup")
               if not hasattr(obj, a)]  # fmt: skip
    if missing:
        raise ValueError(
            f"Invalid workload {name!r}: not a gradkit bench Workload (missing {', '.join(missing)})"
        )
    return obj


def resolve_workload(name: str, *, quick: bool = True) -> Any:
    """A workload object from a registered name or an import path ``"pkg.mod:Name"`` (a
    Workload instance, class or factory; called with ``quick=`` when it takes it)."""
    from gradkit.bench.spaces import load_object

    if ":" in name:
        obj = load_object(name)
        if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "setup")):
            try:
                obj = _instantiate(obj, quick)
            except Exception as err:
                raise ValueError(
                    f"Invalid workload {name!r}: constructing it failed ({err})"
                ) from err
        return _check_workload(name, obj)
    factories = workload_factories()
    if name not in factories:
        raise ValueError(
            f"Unknown workload: {name!r}; choose from: {', '.join(factories)} "
            "(or give an import path 'package.module:Name')"
        )
    return _instantiate(factories[name], quick)


def resolve_optimizers(names: Sequence[str]) -> dict[str, Any]:
    """Specs by name; ``"all"`` expands to every gradkit optimizer."""
    from gradkit.bench.spaces import builtin_specs, get_spec

    specs: dict[str, Any] = {}
    for name in names:
        if name == "all":
            specs.update(builtin_specs())
            continue
        spec = get_spec(name)
        specs[spec.name] = spec
    return specs


def split_names(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None stays None."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]
