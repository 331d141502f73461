r"""Loss-landscape slices: 1-D and 2-D, along filter-normalised random directions or the update.

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018,
arXiv:1712.09913 (github.com/tomgoldstein/loss-landscape, ``net_plotter.py``): plot
:math:`L(\theta + \alpha d_1 + \beta d_2)` with Gaussian directions rescaled *per filter* so
that scale-invariant networks are compared fairly,

.. math::

    d_{l,f} \leftarrow \frac{d_{l,f}}{\|d_{l,f}\|}\,\|\theta_{l,f}\|,

where a filter is one slice along the first dimension of a parameter tensor (an output neuron or
channel). As the official code's ``ignore='biasbn'`` option does, 1-D parameters (biases,
normalisation scales) get a zero direction by default (``ignore_1d=False`` keeps them,
normalised as a single filter). Only parameters move; buffers (batch-norm statistics) stay.

Along the optimizer's actual update :math:`\Delta\theta` (see
:func:`gradkit.diagnostics.step_safety.proposed_update`), :func:`update_direction_slice` uses the
*unit* direction, so its axis is the step length in parameter space and the softmax radius
:math:`\rho_a` and the actual step :math:`\tau` can be drawn on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

LossOfModel = Callable[[nn.Module], Tensor]


def _trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def filter_normalized_direction(
    model: nn.Module, *, seed: int | torch.Generator = 0, ignore_1d: bool = True
) -> list[Tensor]:
    """A Gaussian direction, one tensor per trainable parameter, filter-normalised (Li et al.)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    direction = []
    for p in _trainable(model):
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        if p.ndim <= 1:
            if ignore_1d:
                d.zero_()
            else:
                d.mul_(p.detach().norm() / (d.norm() + 1e-10))
        else:
            weight = p.detach().reshape(p.shape[0], -1)
            flat = d.reshape(p.shape[0], -1)
            flat.mul_(weight.norm(dim=1, keepdim=True) / (flat.norm(dim=1, keepdim=True) + 1e-10))
        direction.append(d)
    return direction


class _Displaced:
    """Temporarily set the trainable parameters to ``origin + sum_i c_i d_i``."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.origin = [p.detach().clone() for p in params]

    @torch.no_grad()
    def move(self, coefficients: Sequence[float], directions: Sequence[Sequence[Tensor]]) -> None:
        for i, (p, o) in enumerate(zip(self.params, self.origin, strict=True)):
            p.copy_(o)
            for c, d in zip(coefficients, directions, strict=True):
                p.add_(d[i], alpha=c)

    @torch.no_grad()
    def restore(self) -> None:
        for p, o in zip(self.params, self.origin, strict=True):
            p.copy_(o)


def _evaluate(model: nn.Module, loss_of: LossOfModel, train: bool) -> float:
    was = model.training
    model.train(train)
    try:
        with torch.no_grad():
            return float(loss_of(model))
    finally:
        model.train(was)


def _check_direction(model: nn.Module, direction: Sequence[Tensor], name: str) -> None:
    shapes = [tuple(p.shape) for p in _trainable(model)]
    if [tuple(d.shape) for d in direction] != shapes:
        raise ValueError(f"Invalid {name}: shapes must match the trainable parameters {shapes}")


def loss_slice_1d(
    model: nn.Module,
    loss_of: LossOfModel,
    direction: Sequence[Tensor],
    alphas: Sequence[float] | Tensor,
    *,
    train: bool,
) -> Tensor:
    """:math:`L(\\theta + \\alpha d)` for each ``alpha`` (float64 tensor). ``loss_of(model)`` is
    evaluated without gradients in the mode ``train`` chooses; parameters are restored after.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(1.0)
    >>> d = [torch.ones(1, 1)]
    >>> loss_slice_1d(model, lambda m: m.weight.sum() ** 2, d, [-1.0, 0.0, 1.0], train=False).tolist()
    [0.0, 1.0, 4.0]
    """
    if not isinstance(train, bool):
        raise ValueError(f"Invalid train: {train!r} (must be True or False, chosen explicitly)")
    _check_direction(model, direction, "direction")
    state = _Displaced(_trainable(model))
    try:
        values = []
        for alpha in alphas:
            state.move([float(alpha)], [direction])
            values.append(_evaluate(model, loss_of, train))
    finally:
        state.restore()
    return torch.tensor(values, dtype=torch.float64)


def loss_surface_2d(
    model: nn.Module,
    loss_of: LossOfModel,
    directions: tuple[Sequence[Tensor], Sequence[Tensor]],
    alphas: Sequence[float] | Tensor,
    betas: Sequence[float] | Tensor,
    *,
    train: bool,
) -> Tensor:
    """:math:`L(\\theta + \\alpha d_1 + \\beta d_2)` on the grid, shape ``[len(alphas),
    len(betas)]`` (float64); parameters restored after."""
    if not isinstance(train, bool):
        raise ValueError(f"Invalid train: {train!r} (must be True or False, chosen explicitly)")
    for name, d in zip(("directions[0]", "directions[1]"), directions, strict=True):
        _check_direction(model, d, name)
    state = _Displaced(_trainable(model))
    grid = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                state.move([float(a), float(b)], list(directions))
                grid[i, j] = _evaluate(model, loss_of, train)
    finally:
        state.restore()
    return grid


@dataclass
class UpdateSlice:
    """Loss along the unit update direction: ``taus`` (distances), ``losses``, the actual step
    length ``step_length`` and (if computed) the softmax radius ``rho_a``."""

    taus: Tensor
    losses: Tensor
    step_length: float
    rho_a: float | None = None


def update_direction_slice(
    model: nn.Module,
    loss_of: LossOfModel,
    optimizer: torch.optim.Optimizer,
    *,
    train: bool,
    num_points: int = 41,
    extent: float = 3.0,
    inputs: Any = None,
) -> UpdateSlice:
    """The loss along the optimizer's proposed update :math:`\\Delta\\theta/\\|\\Delta\\theta\\|`
    for distances in ``[-extent, extent] * max(tau, rho_a)``; ``.grad`` must be populated.
    With ``inputs`` (the model's input batch), the softmax radius along the same direction is
    computed too (one JVP)."""
    from gradkit.diagnostics.step_safety import proposed_update

    params = _trainable(model)
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    delta_owned = proposed_update(optimizer, [p for p in params if id(p) in owned])
    it = iter(delta_owned)
    delta = [next(it) if id(p) in owned else torch.zeros_like(p) for p in params]
    tau = math.sqrt(sum(float(d.double().square().sum()) for d in delta))
    if tau == 0.0:
        raise ValueError("Invalid optimizer state: the proposed update is zero (no gradients?)")
    unit = [d / tau for d in delta]
    rho = None
    if inputs is not None:
        from gradkit.safe_step import softmax_radius

        full = dict(zip([id(p) for p in params], unit, strict=True))
        direction = [full.get(id(p), torch.zeros_like(p)) for p in model.parameters()]
        rho = softmax_radius(model, inputs, direction, train=train)
    scale = extent * max(tau, rho if rho is not None and math.isfinite(rho) else tau)
    taus = torch.linspace(-scale, scale, num_points, dtype=torch.float64)
    losses = loss_slice_1d(model, loss_of, unit, taus, train=train)
    return UpdateSlice(taus, losses, tau, rho)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


# fixed margins: tight_layout costs ~0.5 s a figure on a loaded 2-core machine
_MARGINS = {"left": 0.16, "right": 0.96, "bottom": 0.15, "top": 0.9}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_slice_1d(
    alphas: Sequence[float] | Tensor,
    losses: Sequence[float] | Tensor,
    path: str | Path,
    *,
    xlabel: str = "alpha (filter-normalised direction)",
    markers: dict[str, float] | None = None,
    title: str = "1-D loss slice",
) -> Path:
    """Line plot of a slice; ``markers`` draws labelled vertical lines (e.g. ``tau``,
    ``rho_a``, mirrored at negative distances)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(map(float, alphas)), list(map(float, losses)), color="C0")
    for i, (label, x) in enumerate((markers or {}).items()):
        if x is None or not math.isfinite(x):
            continue
        ax.axvline(x, color=f"C{i + 1}", linestyle="--", label=f"{label} = {x:.3g}")
        ax.axvline(-x, color=f"C{i + 1}", linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    if markers:
        ax.legend(fontsize=8)
    fig.subplots_adjust(**_MARGINS)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_surface_2d(
    alphas: Sequence[float] | Tensor,
    betas: Sequence[float] | Tensor,
    grid: Tensor,
    path: str | Path,
    *,
    title: str = "2-D loss surface (filter-normalised directions)",
) -> Path:
    """Filled contour plot of a 2-D surface (log-spaced levels when all losses are > 0)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    a = torch.as_tensor(alphas, dtype=torch.float64).numpy()
    b = torch.as_tensor(betas, dtype=torch.float64).numpy()
    values = grid.numpy()
    finite = values[torch.isfinite(grid).numpy()]
    if finite.size and finite.min() > 0:
        import numpy as np

        levels = np.geomspace(finite.min(), finite.max() * (1 + 1e-12), 25)
    else:
        levels = 25
    contour = ax.contourf(a, b, values.T, levels=levels, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="loss")
    ax.plot([0], [0], "r+", markersize=10)
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(**{**_MARGINS, "right": 0.86})  # room for the colorbar label
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
