"""What the benchmark knows about each optimizer: how to build it, its defaults, its search space.

An :class:`OptimizerSpec` follows AlgoPerf's external-tuning ruleset (Dahl et al., "Benchmarking
Neural Network Training Algorithms", arXiv:2306.07179, 2023; https://github.com/mlcommons/
algorithmic-efficiency): one *workload-agnostic* search space per method (ranges with a scaling,
as in ``tuning_search_space.json``), sampled quasi-randomly by the tuner. Momentum-like
coefficients are searched as ``1 - beta`` on a log scale, as AlgoPerf's baselines do
(``one_minus_beta1``), so 0.9, 0.99 and 0.999 are equally easy to hit.

Every method gets the same learning-rate schedule, declared on the spec so it is visible in the
report: linear warmup over the first 5% of the step budget, then cosine decay to zero
(:class:`WarmupCosine`). Budget-dependent settings are allowed the way AlgoPerf allows
``step_hint``: AdEMAMix warms ``alpha`` and ``beta3`` up over the whole run, as its paper does.

Parameter roles (from :meth:`Task.param_groups`): Muon-family optimizers orthogonalize only the
``"matrix"`` groups and send every other group to their AdamW fallback (``use_muon=False``) with
its own learning rate ``adam_lr``; weight decay is switched off for ``"vector"`` groups (biases,
norm gains) for every method that has weight decay.

Example:
    >>> import torch
    >>> spec = get_spec("AdamW")
    >>> spec.defaults["lr"], spec.space[0].name, spec.space[0].log
    (0.001, 'lr', True)
    >>> groups = [{"params": [torch.nn.Parameter(torch.ones(2, 2))], "role": "matrix"},
    ...           {"params": [torch.nn.Parameter(torch.ones(2))], "role": "vector"}]
    >>> opt = spec.build(groups, spec.defaults, max_steps=100)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.01, 0.0]
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

BETA_KEYS = ("beta1", "beta2", "beta3")
ROUTER_KEYS = {"Muon": "use_muon", "DropMuon": "use_muon", "AuON": "use_auon"}


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: ``name`` in ``[low, high]``, log-uniform when ``log``.

    With ``one_minus`` the tuner samples ``1 - value`` (Optuna parameter ``one_minus_<name>``)
    in ``[1 - high, 1 - low]``; ``low``/``high`` are bounds on the value itself.
    """

    name: str
    low: float
    high: float
    log: bool = True
    one_minus: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"Invalid range for {self.name}: [{self.low}, {self.high}]")
        if self.log and self.sampled_bounds()[0] <= 0:
            raise ValueError(f"Invalid log range for {self.name}: bounds must be positive")

    @property
    def param_name(self) -> str:
        """The name of the Optuna parameter."""
        return f"one_minus_{self.name}" if self.one_minus else self.name

    def sampled_bounds(self) -> tuple[float, float]:
        """Bounds of the quantity the tuner samples."""
        return (1 - self.high, 1 - self.low) if self.one_minus else (self.low, self.high)

    def value(self, sampled: float) -> float:
        """The hyperparameter for a sampled number."""
        return 1.0 - sampled if self.one_minus else float(sampled)

    def describe(self) -> str:
        lo, hi = self.sampled_bounds()
        return f"{self.param_name} in [{lo:g}, {hi:g}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup over ``warmup_fraction`` of the budget, then cosine decay to
    ``final_fraction`` of the peak learning rate; one factor for every param group.

    .. math::
        f(s) = \\begin{cases} (s+1)/w & s < w \\\\
        c + (1-c)\\tfrac12\\bigl(1+\\cos(\\pi\\,\\tfrac{s-w}{T-w})\\bigr) & s \\ge w \\end{cases}

    with :math:`w = \\lceil \\text{warmup\\_fraction}\\cdot T\\rceil`, :math:`c` the final fraction
    and :math:`s` the number of completed steps.
    """

    warmup_fraction: float = 0.05
    final_fraction: float = 0.0

    def factor(self, step: int, total_steps: int) -> float:
        warmup = max(1, math.ceil(self.warmup_fraction * total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_fraction + (1.0 - self.final_fraction) * cosine

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        """A ``torch.optim.lr_scheduler.LambdaLR``; call its ``step()`` after each optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(self.factor, total_steps=total_steps)
        )

    def describe(self) -> str:
        return (
            f"linear warmup {self.warmup_fraction:.0%} of steps, cosine decay to "
            f"{self.final_fraction:g} x peak lr"
        )


@dataclass(frozen=True)
class OptimizerSpec:
    """How the benchmark builds and tunes one optimizer.

    Hyperparameters are a flat dict (``lr``, ``beta1``.., ``momentum``, ``weight_decay``, extra
    constructor arguments); ``beta1..3`` are assembled into ``betas``, ``adam_lr`` is the
    learning rate of the non-``"matrix"`` groups of Muon-family optimizers and
    ``lr_1d_ratio`` sets MARS's ``lr_1d = lr_1d_ratio * lr``.
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    defaults: Mapping[str, Any]
    space: tuple[Dim, ...]
    description: str = ""
    router: str | None = None
    schedule: WarmupCosine = field(default_factory=WarmupCosine)
    budget_kwargs: Callable[[int], dict[str, Any]] | None = None

    def hparams(self, sampled: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Defaults overridden by sampled values (keyed by :attr:`Dim.param_name`)."""
        out = dict(self.defaults)
        for dim in self.space:
            if sampled and dim.param_name in sampled:
                out[dim.name] = dim.value(sampled[dim.param_name])
        return out

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw the searched hyperparameters from an Optuna trial; return the full set."""
        sampled = {}
        for dim in self.space:
            lo, hi = dim.sampled_bounds()
            sampled[dim.param_name] = trial.suggest_float(dim.param_name, lo, hi, log=dim.log)
        return self.hparams(sampled)

    def build(
        self, param_groups: Sequence[Mapping[str, Any]], hparams: Mapping[str, Any], max_steps: int
    ) -> torch.optim.Optimizer:
        """The optimizer for a task's ``param_groups`` with hyperparameters ``hparams``."""
        hp = dict(hparams)
        aux_lr = hp.pop("adam_lr", None)
        lr_1d_ratio = hp.pop("lr_1d_ratio", None)
        named = _named_parameters(self.factory)  # e.g. OASIS takes beta2 itself
        betas = [hp.pop(k) for k in BETA_KEYS if k in hp and k not in named]
        if betas:
            hp["betas"] = tuple(betas)
        if lr_1d_ratio is not None:
            hp["lr_1d"] = lr_1d_ratio * hp["lr"]
        if self.budget_kwargs is not None:
            hp.update(self.budget_kwargs(max_steps))
        decay_keys = [k for k in ("weight_decay", "weight_decay_1d") if k in hp]
        groups = []
        for group in param_groups:
            out: dict[str, Any] = {"params": list(group["params"])}
            role = group.get("role")
            if role == "vector":
                out.update(dict.fromkeys(decay_keys, 0.0))
            if self.router is not None and role != "matrix":
                out[self.router] = False
                if aux_lr is not None:
                    out["lr"] = aux_lr
            groups.append(out)
        return self.factory(groups, **hp)

    def describe_space(self) -> str:
        return ", ".join(d.describe() for d in self.space)

    def restricted(self, names: Sequence[str]) -> OptimizerSpec:
        """The same spec searching only the hyperparameters in ``names``; the others stay at
        their defaults (the quick suite tunes learning rates only)."""
        return dataclasses.replace(self, space=tuple(d for d in self.space if d.name in names))


def _named_parameters(factory: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


# Search ranges. Decoupled decay is multiplied by the learning rate, coupled (L2) decay is added
# to the gradient, so the two need different ranges.
LR_ADAM = Dim("lr", 1e-4, 1e-1)
# Sign-like updates (Lion, Signum, signSGD) and Sophia's clipped update move every coordinate by
# ~lr: the same three decades shifted ~3x below Adam's (Lion's paper: lr 3-10x below AdamW's), so
# both ranges hold the other's best point and the Lion-vs-AdamW lr claim can be checked.
LR_SIGN = Dim("lr", 3e-5, 3e-2)
B1 = Dim("beta1", 0.8, 0.98, one_minus=True)
B2 = Dim("beta2", 0.95, 0.999, one_minus=True)
B3 = Dim("beta3", 0.99, 0.9999, one_minus=True)
MOMENTUM = Dim("momentum", 0.7, 0.99, one_minus=True)
WD_DECOUPLED = Dim("weight_decay", 1e-5, 2.0)  # grokking needs ~1
WD_COUPLED = Dim("weight_decay", 1e-6, 1e-2)


def _lr(default: float, low: float | None = None, high: float | None = None) -> Dim:
    return Dim("lr", low if low is not None else default / 30, high or default * 30)


def _ademamix_budget(max_steps: int) -> dict[str, Any]:
    # the paper warms alpha and beta3 up over the whole run (T_alpha = T_beta3 = T)
    return {"alpha_warmup": max_steps, "beta3_warmup": max_steps}


def _gradkit(name: str) -> Callable[..., torch.optim.Optimizer]:
    import gradkit.optim as go

    return getattr(go, name)


def _adam_like(
    lr: float, *, coupled: bool, wd: float = 0.0, lr_dim: Dim = LR_ADAM, **extra: Any
) -> dict:
    return {
        "defaults": {"lr": lr, "beta1": 0.9, "beta2": 0.999, "weight_decay": wd, **extra},
        "space": (lr_dim, B1, B2, WD_COUPLED if coupled else WD_DECOUPLED),
    }


def _muon_like(lr: float, lr_range: tuple[float, float]) -> dict:
    return {
        "defaults": {"lr": lr, "adam_lr": 1e-3, "momentum": 0.95, "weight_decay": 0.0},
        "space": (
            Dim("lr", *lr_range),
            Dim("adam_lr", 1e-4, 3e-2),
            Dim("momentum", 0.8, 0.98, one_minus=True),
            Dim("weight_decay", 1e-5, 0.1),
        ),
    }


def _momentum_like(lr: float, low: float, high: float, *, coupled: bool, **extra: Any) -> dict:
    return {
        "defaults": {"lr": lr, "momentum": 0.9, "weight_decay": 0.0, **extra},
        "space": (Dim("lr", low, high), MOMENTUM, WD_COUPLED if coupled else WD_DECOUPLED),
    }


def _table() -> dict[str, dict[str, Any]]:
    """Defaults (paper or torch conventions) and search spaces, one entry per optimizer."""
    return {
        "AdamW": _adam_like(1e-3, coupled=False, wd=0.01),
        "Adam": _adam_like(1e-3, coupled=True),
        "NAdam": _adam_like(2e-3, coupled=True),
        "RAdam": _adam_like(1e-3, coupled=True),
        "DiffGrad": _adam_like(1e-3, coupled=True),
        "Grams": _adam_like(1e-3, coupled=False),
        "AdaMomentum": _adam_like(1e-3, coupled=False),
        "AdamP": _adam_like(1e-3, coupled=False),
        "SPAM": _adam_like(1e-3, coupled=False),
        "StableSPAM": _adam_like(1e-3, coupled=False),
        "XGrad": _adam_like(1e-3, coupled=False, wd=0.01),
        "LAMB": _adam_like(1e-2, coupled=False, lr_dim=Dim("lr", 1e-3, 0.3)),
        "NovoGrad": {
            "defaults": {"lr": 1e-2, "beta1": 0.95, "beta2": 0.98, "weight_decay": 0.0},
            "space": (_lr(1e-2), B1, B2, WD_DECOUPLED),
        },
        "AdEMAMix": {
            "defaults": dict(
                lr=1e-3, beta1=0.9, beta2=0.999, beta3=0.999, alpha=5.0, weight_decay=0.0
            ),
            "space": (LR_ADAM, B1, B3, Dim("alpha", 1.0, 10.0), WD_DECOUPLED),
            "budget_kwargs": _ademamix_budget,
        },
        "MARS": {
            "defaults": dict(
                lr=3e-3,
                beta1=0.95,
                beta2=0.99,
                weight_decay=0.0,
                lr_1d_ratio=0.5,
                weight_decay_1d=0.0,
            ),
            "space": (_lr(3e-3), B1, WD_DECOUPLED),
        },
        "Sophia": {
            "defaults": {
                "lr": 1e-3,
                "beta1": 0.965,
                "beta2": 0.99,
                "weight_decay": 0.01,
                "rho": 0.04,
            },
            "space": (LR_SIGN, B1, WD_DECOUPLED, Dim("rho", 0.01, 0.1)),
        },
        "Lion": {
            # Lion's paper: lr 3-10x below AdamW's, decay 3-10x above, same lr * wd
            "defaults": {"lr": 3e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.03},
            "space": (LR_SIGN, B1, Dim("weight_decay", 1e-4, 3.0)),
        },
        "SGD": _momentum_like(0.1, 1e-3, 1.0, coupled=True, nesterov=True, weight_decay=1e-4),
        "SGDP": _momentum_like(0.1, 1e-3, 1.0, coupled=True, nesterov=True),
        "Signum": _momentum_like(1e-3, LR_SIGN.low, LR_SIGN.high, coupled=False),
        "LARS": _momentum_like(1.0, 0.03, 30.0, coupled=False),
        "InducedMetric": _momentum_like(0.1, 1e-3, 1.0, coupled=False),
        "RMSprop": {
            "defaults": {"lr": 1e-3, "alpha": 0.99, "weight_decay": 0.0},
            "space": (_lr(1e-3), Dim("alpha", 0.9, 0.999, one_minus=True), WD_COUPLED),
        },
        "Adagrad": {
            "defaults": {"lr": 1e-2, "weight_decay": 0.0},
            "space": (_lr(1e-2), WD_COUPLED),
        },
        "SignSGD": {
            "defaults": {"lr": 1e-3, "weight_decay": 0.0},
            "space": (LR_SIGN, WD_DECOUPLED),
        },
        "Gravity": {"defaults": {"lr": 0.1}, "space": (Dim("lr", 1e-3, 1.0),)},
        # OASIS's adaptive step assumes full-batch gradients; on minibatches the paper's
        # fixed-step variant with alpha=0.1 (see gradkit.demo)
        "OASIS": {
            "defaults": {"lr": 0.1, "adaptive_lr": False, "alpha": 0.1, "beta2": 0.99},
            "space": (Dim("lr", 1e-3, 1.0), Dim("beta2", 0.9, 0.999, one_minus=True)),
        },
        "Muon": _muon_like(0.02, (1e-3, 0.3)),
        "DropMuon": _muon_like(0.02, (1e-3, 0.3)),
        "AuON": _muon_like(0.055, (3e-3, 0.5)),
    }


def _generic_entry(lr: float) -> dict[str, Any]:
    return {"defaults": {"lr": lr}, "space": (_lr(lr),)}


def builtin_specs() -> dict[str, OptimizerSpec]:
    """A spec for every optimizer in :func:`gradkit.optim.available`, in registry order."""
    import gradkit.optim as go

    table = _table()
    specs = {}
    for info in go.available():
        entry = table.get(info.name) or _generic_entry(float(info.defaults.get("lr", 1e-3)))
        specs[info.name] = OptimizerSpec(
            name=info.name,
            factory=_gradkit(info.name),
            defaults=entry["defaults"],
            space=entry["space"],
            description=f"{info.paper} ({info.year})",
            router=ROUTER_KEYS.get(info.name),
            budget_kwargs=entry.get("budget_kwargs"),
        )
    return specs


STATE_POLICIES = ("fp32", "bf16", "q8")


def state_policy_variant(spec: OptimizerSpec, policy: str) -> OptimizerSpec:
    """``"<Optimizer>@<policy>"``: the same optimizer, search space and schedule with its state
    stored as ``state_dtype=policy`` (gradkit optimizers only), e.g. ``AdamW@q8``. The variant's
    studies draw the same Halton points as the base optimizer's (see ``tuning``), so its trials
    pair with the base's trial for trial: the published-claims check "8-bit state matches 32-bit
    state" compares them."""
    if policy not in STATE_POLICIES:
        raise ValueError(
            f"Invalid state policy in {spec.name}@{policy}: choose from {', '.join(STATE_POLICIES)}"
        )
    return dataclasses.replace(
        spec,
        name=f"{spec.name}@{policy}",
        defaults={**spec.defaults, "state_dtype": policy},
        description=f"{spec.description}; state_dtype={policy!r}",
    )


def spec_for_class(name: str, cls: Callable[..., torch.optim.Optimizer]) -> OptimizerSpec:
    """A spec for any optimizer class taking ``(params, lr=...)``: its own defaults, and ``lr``
    searched log-uniformly over ``[default/30, 30*default]`` (``default`` = the signature's
    ``lr`` default, or 1e-3 when it has none)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid optimizer {name}: cannot read its signature ({err})") from err
    if "lr" not in signature.parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    ):
        raise ValueError(f"Invalid optimizer {name}: it takes no 'lr' argument")
    default = signature.parameters.get("lr")
    lr = default.default if default is not None else inspect.Parameter.empty
    lr = float(lr) if isinstance(lr, (int, float)) and lr > 0 else 1e-3
    defaults: dict[str, Any] = {"lr": lr}
    wd = signature.parameters.get("weight_decay")
    if wd is not None and isinstance(wd.default, (int, float)):
        defaults["weight_decay"] = float(wd.default)
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return OptimizerSpec(
        name=name,
        factory=cls,
        defaults=defaults,
        space=(_lr(lr),),
        description=doc[0] if doc else f"user optimizer {name}",
    )


def load_object(path: str) -> Any:
    """The object named by ``"package.module:Name"`` (ValueError with a one-line reason)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"Invalid import path: {path!r} (expected 'package.module:Name')")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import error in user code is still a user error here
        raise ValueError(
            f"Invalid import path: {path!r} (cannot import {module_name}: {err})"
        ) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"Invalid import path: {path!r} ({module_name} has no {attr!r})")
        obj = getattr(obj, part)
    return obj


def get_spec(name: str) -> OptimizerSpec:
    """The spec of a gradkit optimizer by name, or of a user optimizer by ``"pkg.mod:Name"``.

    The import path may name a ``torch.optim.Optimizer`` subclass (see :func:`spec_for_class`)
    or an :class:`OptimizerSpec` (full control over defaults and search space).
    """
    if ":" in name:
        obj = load_object(name)
        if isinstance(obj, OptimizerSpec):
            return obj
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
            return spec_for_class(name, obj)
        raise ValueError(
            f"Invalid optimizer {name!r}: expected a torch.optim.Optimizer subclass or an "
            f"OptimizerSpec, got {type(obj).__name__}"
        )
    specs = builtin_specs()
    base, at, policy = name.partition("@")
    if at and base in specs:
        return state_policy_variant(specs[base], policy)
    if name not in specs:
        raise ValueError(
            f"Unknown optimizer: {name!r}; choose from: {', '.join(specs)} "
            "(or give an import path 'package.module:Class')"
        )
    return specs[name]
