"""Lanczos iteration with full reorthogonalisation (internal to :mod:`.hessian`).

Lanczos, "An iteration method for the solution of the eigenvalue problem of linear differential
and integral operators", J. Res. Nat. Bur. Standards 45 (1950); full reorthogonalisation as in
Golub & Van Loan, "Matrix Computations", section 10.3. The operator only needs ``dim`` and
``matvec``; the tridiagonal matrix is diagonalised with a symmetric solver (``torch.linalg.eigh``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _random_vector(kind: str, dim: int, dtype, device, generator) -> Tensor:
    if kind == "rademacher":
        bits = torch.randint(0, 2, (dim,), generator=generator, device=device)
        return (2 * bits - 1).to(dtype)
    if kind == "gaussian":
        return torch.randn(dim, generator=generator, dtype=dtype, device=device)
    raise ValueError(f"Invalid distribution: {kind!r} (use 'rademacher' or 'gaussian')")


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else seed)
    return gen


class _Lanczos:
    """Lanczos with full reorthogonalisation (classical Gram-Schmidt applied twice, "twice is
    enough"), extended one step at a time. A breakdown (invariant subspace found) continues
    from a fresh random vector orthogonal to the basis, with a zero off-diagonal."""

    def __init__(self, op: Any, start: Tensor, generator: torch.Generator) -> None:
        self.op, self.generator = op, generator
        self.basis = [start / start.norm()]
        self.alpha: list[float] = []
        self.beta: list[float] = []  # beta[j] couples basis[j] and basis[j+1]
        self.residual = 0.0  # norm of the last residual (before normalisation)
        self.scale = 0.0

    def step(self) -> None:
        q = self.basis[-1]
        w = self.op.matvec(q)
        a = float(torch.dot(w, q))
        w = w - a * q
        if self.beta:
            w = w - self.beta[-1] * self.basis[-2]
        stacked = torch.stack(self.basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        self.alpha.append(a)
        b = float(w.norm())
        self.scale = max(self.scale, abs(a), b)
        self.residual = b
        if len(self.basis) == self.op.dim:
            return
        if b <= 1e-10 * max(self.scale, 1e-30):
            self.residual = 0.0
            fresh = _random_vector("gaussian", self.op.dim, q.dtype, q.device, self.generator)
            for _ in range(2):
                fresh = fresh - stacked.T @ (stacked @ fresh)
            self.beta.append(0.0)
            self.basis.append(fresh / fresh.norm())
        else:
            self.beta.append(b)
            self.basis.append(w / b)

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (ascending) and eigenvectors of the tridiagonal ``T`` (float64, eigh)."""
        m = self.steps
        t = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.beta[: m - 1], dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        return torch.linalg.eigh(t)
