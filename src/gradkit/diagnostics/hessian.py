r"""Curvature of the training loss: Hessian-vector products, Lanczos, trace, spectral density.

Everything here works matrix-free through Hessian-vector products :math:`Hv` on flattened
parameter vectors, so it scales to any model that autograd can differentiate twice.

* :class:`HessianOperator` -- :math:`v \mapsto Hv` of the mean loss over a fixed list of batches,
  by double backward (Pearlmutter 1994, "Fast exact multiplication by the Hessian", Neural
  Computation 6(1)) or by ``torch.func`` forward-over-reverse (``jvp`` of ``grad``). The model's
  mode is the caller's explicit choice (``train=True``: batch norm uses batch statistics and
  dropout is on -- with the same random masks in every product, so the operator stays one fixed
  symmetric matrix; ``train=False``: running statistics, no dropout). Buffers such as batch-norm
  running statistics are restored after every product.
* :func:`top_eigenpairs` -- Lanczos with full reorthogonalisation and a *symmetric* tridiagonal
  eigensolver, largest algebraic eigenvalues by default (``which="smallest"`` or ``"both"``).
  PyHessian (Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian",
  arXiv:2001.00281, 2020; github.com/amirgholami/PyHessian) uses power iteration, which finds the
  largest *magnitude* eigenvalue and can return a large negative one; we do not.
* :func:`hutchinson_trace` -- Hutchinson (1989) :math:`\operatorname{tr} H = E[v^\top H v]` with
  Rademacher (or Gaussian) probes, with its standard error.
* :func:`spectral_density` -- stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao, "An
  Investigation into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019,
  arXiv:1901.10159; Lin, Saad, Yang 2016): for a random unit :math:`q_1`, the Ritz values
  :math:`\theta_i` of :math:`m` Lanczos steps with weights :math:`w_i = (e_1^\top s_i)^2` form a
  Gauss quadrature of :math:`q_1^\top f(H) q_1`, exact for polynomials of degree :math:`2m-1`;
  averaging over probes and broadening each node with a Gaussian gives the density
  :math:`\phi(t) = \frac{1}{R}\sum_r \sum_i w_i^{(r)} \mathcal{N}(t; \theta_i^{(r)}, \sigma^2)`.
  PyHessian diagonalises :math:`T` with a general (non-symmetric) solver; we use ``eigh``.
* :class:`SharpnessTracker` / :func:`stability_threshold` -- Cohen, Kaur, Li, Kolter, Talwalkar,
  "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", ICLR 2021,
  arXiv:2103.00065 (github.com/locuslab/edge-of-stability): full-batch GD with step :math:`\eta`
  is stable on a quadratic only while :math:`\lambda_{\max} < 2/\eta`, and
  :math:`(2+2\beta)/\eta` with heavy-ball momentum :math:`\beta`.
* :func:`subspace_overlap` -- Gur-Ari, Roberts, Dyer, "Gradient Descent Happens in a Tiny
  Subspace", arXiv:1812.04754 (2018): :math:`\|P_k g\|^2/\|g\|^2` with :math:`P_k` the projector
  onto the top-:math:`k` Hessian eigenvectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from gradkit.diagnostics._lanczos import _generator, _Lanczos, _random_vector

LossFn = Callable[[nn.Module, Any], Tensor]


class LinearOperator(Protocol):
    """A symmetric matrix known only through products: ``dim``, ``dtype``, ``device``,
    ``matvec(v) -> Av`` on flat vectors."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, vector: Tensor) -> Tensor: ...


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector (detached)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``like``."""
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    if offset != vector.numel():
        raise ValueError(f"Invalid vector: {vector.numel()} entries, parameters have {offset}")
    return out


class MatrixOperator:
    """An explicit symmetric matrix as a :class:`LinearOperator` (tests, small problems)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"Invalid matrix: shape {tuple(matrix.shape)} (must be square)")
        self.matrix = matrix
        self.dim, self.dtype, self.device = matrix.shape[0], matrix.dtype, matrix.device
        self.num_matvecs = 0

    def matvec(self, vector: Tensor) -> Tensor:
        if vector.shape != (self.dim,):
            raise ValueError(f"Invalid vector: shape {tuple(vector.shape)}, expected ({self.dim},)")
        self.num_matvecs += 1
        return self.matrix @ vector


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``torch.func.functional_call`` can swap the
    model's parameters (the model is a submodule, hence the ``model.`` name prefix)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class _ModelState:
    """Set the model's mode and restore mode and buffers (batch-norm statistics) afterwards."""

    def __init__(self, model: nn.Module, train: bool) -> None:
        self.model, self.train = model, train

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.buffers = [b.detach().clone() for b in self.model.buffers()] if self.train else []
        self.model.train(self.train)

    def __exit__(self, *exc: object) -> None:
        if self.train:  # only train-mode forwards update buffers; eval graphs may still use them
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), self.buffers, strict=True):
                    b.data.copy_(saved)  # via .data: a cached graph saved these buffers
        self.model.train(self.was_training)


def _check_train(train: object) -> bool:
    if not isinstance(train, bool):
        raise ValueError(f"Invalid train: {train!r} (must be True or False, chosen explicitly)")
    return train


class HessianOperator:
    r"""The Hessian of :math:`L(\theta) = \frac{1}{K}\sum_{k} \ell(\theta; \text{batch}_k)`.

    :param model: the network; its parameters are not modified.
    :param loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
    :param batches: the fixed batches whose mean loss defines the Hessian (equal weights: pass
        equal-size batches for the full-data mean).
    :param train: ``True`` runs the model in train mode (batch statistics, dropout on with the
        same masks in every product, drawn from ``seed``), ``False`` in eval mode. Required:
        the two are different functions of the parameters.
    :param params: the parameters to differentiate (default: those with ``requires_grad``).
    :param method: ``"double_backward"`` (reverse-over-reverse; with one batch the gradient graph
        is built once and reused) or ``"func"`` (``torch.func.jvp`` of ``torch.func.grad``).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1, bias=False)
        >>> x = torch.eye(3)
        >>> op = HessianOperator(model, lambda m, b: m(b).pow(2).sum(), [x], train=False)
        >>> op.matvec(torch.tensor([1.0, 2.0, 3.0])).tolist()  # H = 2 X^T X = 2 I
        [2.0, 4.0, 6.0]
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        *,
        train: bool,
        params: Sequence[Tensor] | None = None,
        method: Literal["double_backward", "func"] = "double_backward",
        seed: int = 0,
    ) -> None:
        if method not in ("double_backward", "func"):
            raise ValueError(f"Invalid method: {method!r} (use 'double_backward' or 'func')")
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("Invalid batches: empty (need at least one batch)")
        self.model, self.loss_fn, self.method, self.seed = model, loss_fn, method, seed
        self.train = _check_train(train)
        self.params = [p for p in (params or model.parameters()) if p.requires_grad]
        if not self.params:
            raise ValueError("Invalid params: no parameter requires grad")
        names = {id(p): n for n, p in model.named_parameters()}
        if any(id(p) not in names for p in self.params):
            raise ValueError("Invalid params: every parameter must belong to model")
        self.names = [names[id(p)] for p in self.params]
        self.dim = sum(p.numel() for p in self.params)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.num_matvecs = 0
        self._graph: list[Tensor] | None = None
        self._graph_versions: list[int] = []

    def _loss(self, index: int) -> Tensor:
        """Loss on batch ``index``; in train mode under a fixed RNG state (same dropout masks)."""
        if not self.train:
            return self.loss_fn(self.model, self.batches[index])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + index)
            return self.loss_fn(self.model, self.batches[index])

    def loss(self) -> float:
        """The mean loss over the batches."""
        with _ModelState(self.model, self.train), torch.no_grad():
            return sum(float(self._loss(i)) for i in range(len(self.batches))) / len(self.batches)

    def gradient(self) -> Tensor:
        """The flat gradient of the mean loss."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with _ModelState(self.model, self.train):
            for i in range(len(self.batches)):
                grads = torch.autograd.grad(
                    self._loss(i), self.params, allow_unused=True, materialize_grads=True
                )
                total += flatten(grads)
        return total / len(self.batches)

    def matvec(self, vector: Tensor) -> Tensor:
        """:math:`Hv` for a flat ``vector`` of length ``dim``."""
        if vector.shape != (self.dim,):
            raise ValueError(f"Invalid vector: shape {tuple(vector.shape)}, expected ({self.dim},)")
        self.num_matvecs += 1
        vector = vector.to(dtype=self.dtype, device=self.device)
        with _ModelState(self.model, self.train):
            if self.method == "func":
                return self._hvp_func(vector)
            return self._hvp_double_backward(vector)

    def _hvp_double_backward(self, vector: Tensor) -> Tensor:
        tangents = unflatten(vector, self.params)
        total = torch.zeros_like(vector)
        reuse = len(self.batches) == 1
        for i in range(len(self.batches)):
            versions = [p._version for p in self.params]  # an optimizer step bumps these
            if reuse and self._graph is not None and versions == self._graph_versions:
                grads = self._graph
            else:
                grads = torch.autograd.grad(
                    self._loss(i),
                    self.params,
                    create_graph=True,
                    allow_unused=True,
                    materialize_grads=True,
                )
                if reuse:
                    self._graph, self._graph_versions = list(grads), versions
            dot = sum((g * t).sum() for g, t in zip(grads, tangents, strict=True))
            hv = torch.autograd.grad(
                dot, self.params, retain_graph=reuse, allow_unused=True, materialize_grads=True
            )
            total += flatten(hv)
        return total / len(self.batches)

    def _hvp_func(self, vector: Tensor) -> Tensor:
        from torch.func import functional_call, grad, jvp

        wrapper = _LossModule(self.model, self.loss_fn)
        primals = {"model." + n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        tangents = dict(zip(primals, unflatten(vector, self.params), strict=True))
        total = torch.zeros_like(vector)
        for i in range(len(self.batches)):

            def loss_of(p: dict[str, Tensor], i: int = i) -> Tensor:
                if not self.train:
                    return functional_call(wrapper, p, (self.batches[i],))
                # train-mode batch norm updates its buffers in place: hand it copies made inside
                # the transform (torch.func refuses to mutate captured tensors)
                copies = {"model." + n: b.clone() for n, b in self.model.named_buffers()}
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed + i)
                    return functional_call(wrapper, (p, copies), (self.batches[i],))

            _, hv = jvp(grad(loss_of), (primals,), (tangents,))
            total += flatten([hv[k] for k in primals])
        return total / len(self.batches)

    def dense(self) -> Tensor:
        """The explicit ``dim x dim`` Hessian column by column (small problems and tests only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    vector: Sequence[Tensor],
    *,
    train: bool,
    method: Literal["double_backward", "func"] = "double_backward",
) -> list[Tensor]:
    """One Hessian-vector product on one batch; ``vector`` shaped like the trainable params."""
    op = HessianOperator(model, loss_fn, [batch], train=train, method=method)
    return unflatten(op.matvec(flatten(vector)), op.params)


# --------------------------------------------------------------------------------------------
# Lanczos


@dataclass
class EigenResult:
    """Ritz pairs: ``eigenvalues`` (float64), ``eigenvectors`` (rows, unit norm, operator dtype),
    ``residuals`` (:math:`\\|Av - \\theta v\\|` bounds from Lanczos), ``num_matvecs``."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_matvecs: int


def _select(values: Tensor, k: int, which: str) -> Tensor:
    n = values.numel()
    order = torch.arange(n)
    if which == "largest":
        return order[n - min(k, n) :].flip(0)
    if which == "smallest":
        return order[: min(k, n)]
    top, bottom = order[n - min(k, n) :].flip(0), order[: min(k, n)].flip(0)
    merged = torch.unique(torch.cat([top, bottom]), sorted=True).flip(0)
    return merged  # descending eigenvalues: k largest then k smallest, without duplicates


def top_eigenpairs(
    op: LinearOperator,
    k: int = 5,
    *,
    which: Literal["largest", "smallest", "both"] = "largest",
    max_steps: int | None = None,
    tol: float = 1e-8,
    seed: int | torch.Generator | None = 0,
) -> EigenResult:
    r"""Extreme eigenpairs of a symmetric operator by Lanczos.

    ``which="largest"`` (default): the ``k`` largest *algebraic* eigenvalues, descending.
    ``"smallest"``: the ``k`` smallest, ascending. ``"both"``: the ``k`` largest and ``k``
    smallest, all descending. Stops when every wanted Ritz pair has residual
    :math:`\beta_m |s_{m,i}| \le` ``tol`` :math:`\cdot \max|\theta|`, or after ``max_steps``
    (default ``min(dim, max(3k + 30, 60))``) products. Start vector: Rademacher from ``seed``.

    Example:
        >>> import torch
        >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, -5.0, 1.0, 2.0], dtype=torch.float64)))
        >>> [round(v, 8) for v in top_eigenpairs(op, k=1).eigenvalues.tolist()]  # not max |lambda|
        [3.0]
        >>> [round(v, 8) for v in top_eigenpairs(op, k=1, which="both").eigenvalues.tolist()]
        [3.0, -5.0]
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid k: {k!r} (must be a positive integer)")
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f"Invalid which: {which!r} (use 'largest', 'smallest' or 'both')")
    if not tol > 0:
        raise ValueError(f"Invalid tol: {tol!r} (must be > 0)")
    limit = min(op.dim, max(3 * k + 30, 60)) if max_steps is None else min(max_steps, op.dim)
    if limit < 1:
        raise ValueError(f"Invalid max_steps: {max_steps!r} (must be >= 1)")
    gen = _generator(seed)
    start = _random_vector("rademacher", op.dim, op.dtype, op.device, gen)
    lanczos = _Lanczos(op, start, gen)
    wanted = min(2 * k if which == "both" else k, op.dim)
    while True:
        lanczos.step()
        values, vectors = lanczos.ritz()
        idx = _select(values, k, which)
        residuals = lanczos.residual * vectors[-1, idx].abs()
        # right after a breakdown every residual is 0 although a fresh direction may still hold
        # a missed (e.g. repeated) eigenvalue: never stop there
        done = (
            idx.numel() >= wanted
            and lanczos.residual > 0
            and bool((residuals <= tol * max(float(values.abs().max()), 1e-30)).all())
        )
        if done or lanczos.steps >= limit:
            break
    basis = torch.stack(lanczos.basis[: lanczos.steps])
    ritz_vectors = vectors[:, idx].T.to(basis.dtype) @ basis
    return EigenResult(values[idx], ritz_vectors, residuals, lanczos.steps)


def lanczos_tridiagonal(
    op: LinearOperator, num_steps: int, *, seed: int | torch.Generator | None = 0
) -> tuple[Tensor, Tensor]:
    """``num_steps`` Lanczos steps from a normalised Rademacher vector; returns the Ritz values
    and the quadrature weights :math:`(e_1^\\top s_i)^2` (float64, summing to 1)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"Invalid num_steps: {num_steps!r} (must be a positive integer)")
    gen = _generator(seed)
    start = _random_vector("rademacher", op.dim, op.dtype, op.device, gen)
    lanczos = _Lanczos(op, start, gen)
    for _ in range(min(num_steps, op.dim)):
        lanczos.step()
    values, vectors = lanczos.ritz()
    return values, vectors[0].square()


# --------------------------------------------------------------------------------------------
# Trace and spectral density


@dataclass
class TraceEstimate:
    """Hutchinson estimate: ``trace`` (sample mean), ``stderr`` and the raw ``samples``."""

    trace: float
    stderr: float
    samples: Tensor


def hutchinson_trace(
    op: LinearOperator,
    num_probes: int = 100,
    *,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    seed: int | torch.Generator | None = 0,
) -> TraceEstimate:
    r""":math:`\operatorname{tr} A \approx \frac1N\sum_i v_i^\top A v_i` with i.i.d. probes.

    Unbiased for both distributions; Rademacher has the smaller variance
    :math:`2(\|A\|_F^2 - \sum_i A_{ii}^2)` and is exact for a diagonal :math:`A`.

    Example:
        >>> import torch
        >>> op = MatrixOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0])))
        >>> hutchinson_trace(op, num_probes=3).trace
        6.0
    """
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"Invalid num_probes: {num_probes!r} (must be a positive integer)")
    gen = _generator(seed)
    samples = []
    for _ in range(num_probes):
        v = _random_vector(distribution, op.dim, op.dtype, op.device, gen)
        samples.append(float(torch.dot(v, op.matvec(v))))
    values = torch.tensor(samples, dtype=torch.float64)
    stderr = float(values.std() / math.sqrt(num_probes)) if num_probes > 1 else math.inf
    return TraceEstimate(float(values.mean()), stderr, values)


@dataclass
class SpectralDensity:
    """SLQ quadrature: per run ``nodes[r]`` (Ritz values) and ``weights[r]`` (summing to 1)."""

    nodes: Tensor
    weights: Tensor
    dim: int

    def moment(self, power: int) -> float:
        r""":math:`\int t^p \phi(t)\,dt` of the unbroadened quadrature, an estimate of
        :math:`\operatorname{tr}(H^p)/n` (exact in expectation for :math:`p \le 2m-1`)."""
        return float((self.weights * self.nodes**power).sum(dim=1).mean())

    def default_sigma(self, fraction: float = 0.01) -> float:
        """Broadening: ``fraction`` of the spread of the nodes (absolute 1e-8 if they coincide)."""
        spread = float(self.nodes.max() - self.nodes.min())
        return max(fraction * spread, 1e-8)

    def density(
        self, grid: Tensor | None = None, *, sigma: float | None = None, num_points: int = 2000
    ) -> tuple[Tensor, Tensor]:
        """Gaussian-broadened density on ``grid`` (default: the nodes' range +/- 5 sigma).

        Not renormalised on the grid: each kernel integrates to 1 and the weights of each run
        sum to 1, so the integral over a grid covering the support is 1.
        """
        sigma = self.default_sigma() if sigma is None else sigma
        if not sigma > 0:
            raise ValueError(f"Invalid sigma: {sigma!r} (must be > 0)")
        if grid is None:
            low, high = float(self.nodes.min()) - 5 * sigma, float(self.nodes.max()) + 5 * sigma
            grid = torch.linspace(low, high, num_points, dtype=torch.float64)
        grid = grid.to(torch.float64)
        diff = grid[:, None, None] - self.nodes[None]
        kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        values = (kernel * self.weights[None]).sum(dim=2).mean(dim=1)
        return grid, values


def spectral_density(
    op: LinearOperator,
    *,
    num_runs: int = 5,
    num_steps: int = 40,
    seed: int | torch.Generator | None = 0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``num_runs`` probes of ``num_steps`` Lanczos steps each."""
    if not isinstance(num_runs, int) or num_runs < 1:
        raise ValueError(f"Invalid num_runs: {num_runs!r} (must be a positive integer)")
    gen = _generator(seed)
    nodes, weights = [], []
    for _ in range(num_runs):
        values, w = lanczos_tridiagonal(op, num_steps, seed=gen)
        nodes.append(values)
        weights.append(w)
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), op.dim)


# --------------------------------------------------------------------------------------------
# Sharpness and the gradient's subspace


def stability_threshold(lr: float, momentum: float = 0.0) -> float:
    r"""The edge-of-stability threshold :math:`(2 + 2\beta)/\eta` (:math:`2/\eta` for GD).

    For heavy-ball momentum :math:`\theta_{t+1} = \theta_t - \eta g_t + \beta(\theta_t -
    \theta_{t-1})` -- ``torch.optim.SGD`` with ``dampening=0, nesterov=False``.

    >>> stability_threshold(0.5), stability_threshold(0.5, momentum=0.5)
    (4.0, 6.0)
    """
    if not lr > 0 or math.isinf(lr):
        raise ValueError(f"Invalid lr: {lr!r} (must be finite and > 0)")
    if not 0 <= momentum < 1:
        raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1))")
    return (2 + 2 * momentum) / lr


def optimizer_threshold(optimizer: torch.optim.Optimizer) -> float:
    """:func:`stability_threshold` from an SGD-style optimizer's first param group.

    Reads ``lr``, ``momentum`` (0 if absent) and ``dampening`` (the effective step is
    ``lr * (1 - dampening)``). Nesterov momentum is refused: its threshold differs.
    """
    group = optimizer.param_groups[0]
    if group.get("nesterov", False):
        raise ValueError("Invalid optimizer: nesterov=True (threshold implemented for heavy ball)")
    lr = float(group["lr"]) * (1 - float(group.get("dampening", 0.0) or 0.0))
    return stability_threshold(lr, float(group.get("momentum", 0.0) or 0.0))


@dataclass
class SharpnessRecord:
    step: int
    sharpness: float
    threshold: float

    @property
    def ratio(self) -> float:
        """sharpness / threshold: about 1 at the edge of stability, > 1 unstable (quadratic)."""
        return self.sharpness / self.threshold


@dataclass
class SharpnessTracker:
    """Records :math:`\\lambda_{\\max}` against :math:`(2+2\\beta)/\\eta` over training.

    ``measure(step, op)`` runs Lanczos for the top eigenvalue (largest algebraic) and records it;
    ``record(step, sharpness)`` takes a value measured elsewhere. ``lr`` may change per call
    (schedules). Cohen et al. define sharpness on the *full-batch* training loss: build the
    operator on the whole (or a fixed large) set, not on the current mini-batch.
    """

    lr: float
    momentum: float = 0.0
    history: list[SharpnessRecord] = field(default_factory=list)

    def record(self, step: int, sharpness: float, *, lr: float | None = None) -> SharpnessRecord:
        if lr is not None:
            self.lr = lr
        rec = SharpnessRecord(step, float(sharpness), stability_threshold(self.lr, self.momentum))
        self.history.append(rec)
        return rec

    def measure(
        self, step: int, op: LinearOperator, *, lr: float | None = None, tol: float = 1e-4
    ) -> SharpnessRecord:
        top = top_eigenpairs(op, k=1, tol=tol, seed=step)
        return self.record(step, float(top.eigenvalues[0]), lr=lr)


def subspace_overlap(vector: Tensor, basis: Tensor) -> float:
    r""":math:`\|P v\|^2 / \|v\|^2` with :math:`P = B^\top B` (``basis``: orthonormal rows).

    1 when ``vector`` lies in the span, 0 when orthogonal; NaN for a zero vector.
    """
    if basis.ndim != 2 or basis.shape[1] != vector.numel():
        raise ValueError(
            f"Invalid basis: shape {tuple(basis.shape)} (rows must have {vector.numel()} entries)"
        )
    v = vector.reshape(-1).to(basis.dtype)
    norm_sq = float(v.square().sum())
    if norm_sq == 0.0:
        return math.nan
    return float((basis @ v).square().sum()) / norm_sq


def gradient_subspace_overlap(op: HessianOperator, k: int = 10, **lanczos: Any) -> float:
    """Gur-Ari et al.'s overlap of the loss gradient with the top-``k`` Hessian eigenspace."""
    pairs = top_eigenpairs(op, k, **lanczos)
    return subspace_overlap(op.gradient(), pairs.eigenvectors)
