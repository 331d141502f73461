"""Shared machinery for the optimizer contract tests (DESIGN.md section 5).

An :class:`Spec` says how to build one optimizer configuration, which independent reference
update it must match, how its state keys map onto the reference's state, which bad arguments
must be rejected, and a learning rate at which it converges on the smoke problems.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

RefStep = Callable[[torch.Tensor, torch.Tensor, dict, int, dict], None]


@dataclass
class Spec:
    cls: type
    kwargs: dict[str, Any]
    reference: RefStep | None
    # gradkit state key -> reference state key, compared after every step
    state_map: dict[str, str] = field(default_factory=dict)
    # (kwargs, argument name expected in the error message)
    bad_args: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    # learning rate (and extra kwargs) for the convergence smoke tests; None skips them
    converge: dict[str, Any] | None = None
    id: str = ""
    # absolute and relative tolerance of the float64 reference comparison
    ref_tolerance: float = 1e-10

    def __post_init__(self) -> None:
        if not self.id:
            extra = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
            self.id = f"{self.cls.__name__}({extra})"

    def make(self, params: Any, **overrides: Any) -> torch.optim.Optimizer:
        return self.cls(params, **{**self.kwargs, **overrides})


# Bad arguments every optimizer rejects (a spec adds its own on top).
BAD_COMMON = [
    ({"lr": -1.0}, "learning rate"),
    ({"lr": float("nan")}, "learning rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"nonfinite": "ignore"}, "nonfinite"),
    ({"maximize": 1}, "maximize"),
]
BAD_BETAS_EPS = [
    ({"betas": (1.0, 0.98)}, "index 0"),
    ({"betas": (0.9, -0.1)}, "index 1"),
    ({"betas": (0.9,)}, "betas"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-8}, "eps"),
]

SHAPES = [(5, 4), (7,), (3, 2, 2), (1,)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def grad_sequence(n_steps: int, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=dtype) for s in SHAPES] for _ in range(n_steps)]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]):
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def checkpoint_roundtrip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def quadratic_problem(dim: int = 10, seed: int = 0):
    """f(x) = 1/2 x^T A x - b^T x with a known spectrum in [0.5, 5] and optimum A^{-1} b."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.5, 5.0, dim, dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


def all_specs() -> list[Spec]:
    """Every contract spec from the ``support/specs_*.py`` modules."""
    import importlib
    import pkgutil

    import support

    specs = []
    for mod in pkgutil.iter_modules(support.__path__):
        if mod.name.startswith("specs_"):
            specs += importlib.import_module(f"support.{mod.name}").SPECS
    return specs
