"""Contract specs for Sophia and OASIS.

Both consume diagonal-Hessian estimates through ``update_hessian``. The contract only calls
``step()``, so a :class:`FeedSpec` registers a post-step hook that hands the optimizer an estimate
computed from the step's gradient (``feed(grad)``: deterministic, positive, parameter-shaped)
whenever a refresh is due: after every ``hessian_interval`` steps for Sophia, after every step for
OASIS. The references receive the same ``feed``. Specs without a feed check the plain ``step()``
(Sophia with h = 0 is a clipped sign-momentum step; OASIS with D = 0 uses D_hat = alpha).

OASIS's adaptive step size is a norm over the whole param group, which no per-tensor reference
can reproduce; its reference is checked on the concatenated parameters in
``tests/optim/test_oasis.py``, and here only with ``adaptive_lr=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gradkit.optim.oasis import OASIS
from gradkit.optim.sophia import Sophia
from reference import curvature as ref
from support.harness import Spec


def gnb_like(grad):
    """A GNB-shaped estimate B * g * g with B = 8 (non-negative, like SophiaG's)."""
    return 8.0 * grad * grad


def signed(grad):
    """A Hutchinson-like estimate that can be negative (exercises |D| and max(rho h, eps))."""
    return grad * grad.abs() - 0.25


def _refresh(opt, args, kwargs, feed):
    del args, kwargs
    if isinstance(opt, Sophia) and not opt.hessian_due():
        return
    opt.update_hessian({
        p: feed(p.grad) for group in opt.param_groups for p in group["params"]
        if p.grad is not None
    })  # fmt: skip


@dataclass
class FeedSpec(Spec):
    feed: Callable | None = None

    def __post_init__(self) -> None:
        if self.feed is not None and self.reference is not None:
            self.reference = partial(self.reference, feed=self.feed)
            if not self.id:
                self.id = f"{self.cls.__name__}+{self.feed.__name__}({self.kwargs})"
        super().__post_init__()

    def make(self, params: Any, **overrides: Any):
        opt = super().make(params, **overrides)
        if self.feed is not None:
            opt.register_step_post_hook(partial(_refresh, feed=self.feed))
        return opt


BAD_COMMON = [
    ({"lr": -1.0}, "learning rate"),
    ({"lr": float("nan")}, "learning rate"),
    ({"nonfinite": "ignore"}, "nonfinite"),
    ({"maximize": 1}, "maximize"),
]
BAD_SOPHIA = [
    *BAD_COMMON,
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"betas": (1.0, 0.99)}, "index 0"),
    ({"betas": (0.965, 1.0)}, "index 1"),
    ({"betas": (0.9,)}, "betas"),
    ({"rho": -0.01}, "rho"),
    ({"rho": float("inf")}, "rho"),
    ({"eps": 0.0}, "eps"),
    ({"hessian_interval": 0}, "hessian_interval"),
    ({"hessian_interval": 2.5}, "hessian_interval"),
    ({"hessian_interval": True}, "hessian_interval"),
]
BAD_OASIS = [
    *BAD_COMMON,
    ({"beta2": 1.0}, "beta2"),
    ({"beta2": -0.1}, "beta2"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": -1e-5}, "alpha"),
    ({"adaptive_lr": 1}, "adaptive_lr"),
]
SOPHIA_STATE = {"sophia.exp_avg": "m", "sophia.hessian": "h"}
OASIS_STATE = {"oasis.hessian": "D"}

SPECS = [
    FeedSpec(Sophia, dict(lr=0.01), ref.sophia, SOPHIA_STATE, BAD_SOPHIA),
    FeedSpec(Sophia, dict(lr=0.01, rho=0.5, weight_decay=0.1, hessian_interval=2), ref.sophia,
             SOPHIA_STATE, feed=gnb_like,
             converge=dict(lr=1e-2, rho=0.04, hessian_interval=10, weight_decay=0.0)),
    FeedSpec(Sophia, dict(lr=0.02, betas=(0.9, 0.5), rho=1.0, hessian_interval=1, maximize=True),
             ref.sophia, SOPHIA_STATE, feed=signed),
    FeedSpec(OASIS, dict(lr=1e-7, adaptive_lr=False), ref.oasis, OASIS_STATE, BAD_OASIS,
             converge=dict(lr=1e-6, rosen_lr=1e-8)),
    FeedSpec(OASIS, dict(lr=0.01, beta2=0.5, alpha=0.1, adaptive_lr=False), ref.oasis,
             OASIS_STATE, feed=signed),
    FeedSpec(OASIS, dict(lr=0.01, beta2=0.9, alpha=1e-3, adaptive_lr=False, maximize=True),
             ref.oasis, OASIS_STATE, feed=gnb_like),
    FeedSpec(OASIS, dict(lr=1e-6), None, converge=dict(lr=1e-8)),
    FeedSpec(OASIS, dict(lr=0.1, beta2=0.9, alpha=0.1), None, feed=gnb_like),
]  # fmt: skip
