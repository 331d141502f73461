"""CAGrad's two-task toy problem: trajectories of gradkit's aggregators (plot + table).

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021 (arXiv:2110.14048), ``toy.py`` of https://github.com/Cranial-XIX/CAGrad (reused by
Nash-MTL and SAM-GS). Two losses of x = (x1, x2) whose Pareto set is the segment
x2 ~ -8.3552, x1 in [-7, 7]; plain gradient averaging gets stuck or drifts along a valley from
some starting points, conflict-averse methods reach the Pareto set.

The paper runs Adam (lr 1e-3) for 100,000 iterations; by default this script runs a shorter
schedule (Adam lr 2e-2, 2,500 iterations) that reaches the same end points in a few minutes on
a CPU -- pass ``--lr 1e-3 --iters 100000`` for the paper's. Prints, per method and start, the
end point, its distance to the Pareto segment and both losses; writes a PNG of the trajectories
over the contour of the average loss.

    python benchmarks/multitask_toy.py [--iters N] [--lr LR] [--methods Mean,CAGrad,...] [--out toy.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import gradkit.multitask as mt

STARTS = [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)]  # the paper's three initial points
PARETO_X2 = -8.3552


def losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy's two losses (Cranial-XIX/CAGrad toy.py), for x of shape [..., 2]."""
    x1, x2 = x[..., 0], x[..., 1]
    eps = 5e-6
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=eps)) + 6
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=eps)) + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), min=0)
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), min=0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    return c1 * f1 + c2 * f1_sq, c1 * f2 + c2 * f2_sq


def pareto_distance(point: torch.Tensor) -> float:
    """Euclidean distance to the Pareto segment {x2 = -8.3552, -7 <= x1 <= 7}."""
    x1, x2 = float(point[0]), float(point[1])
    return math.hypot(max(abs(x1) - 7.0, 0.0), x2 - PARETO_X2)


def aggregators() -> dict[str, mt.Aggregator]:
    return {
        "Mean": mt.Mean(),
        "MGDA": mt.MGDA(),
        "PCGrad": mt.PCGrad(generator=0),
        "CAGrad": mt.CAGrad(c=0.5),
        "NashMTL": mt.NashMTL(),
        "UPGrad": mt.UPGrad(),
        "AlignedMTL": mt.AlignedMTL(),
    }


def trajectory(aggregator: mt.Aggregator, start, iters: int, lr: float) -> torch.Tensor:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    path = [x.detach().clone()]
    for _ in range(iters):
        opt.zero_grad()
        mt.backward(list(losses(x)), [x], aggregator)
        opt.step()
        path.append(x.detach().clone())
    return torch.stack(path)


def plot(paths: dict[str, list[torch.Tensor]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(-10, 10, 300, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    l1, l2 = losses(torch.stack([xx, yy], dim=-1))
    avg = 0.5 * (l1 + l2)
    fig, axes = plt.subplots(1, len(paths), figsize=(3.2 * len(paths), 3.4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], paths.items(), strict=True):
        ax.contourf(xx, yy, avg, levels=30, cmap="Greys")
        ax.plot([-7, 7], [PARETO_X2, PARETO_X2], color="tab:green", lw=3, label="Pareto set")
        for path in runs:
            ax.plot(path[:, 0], path[:, 1], color="tab:red", lw=1.2)
            ax.scatter(path[0, 0], path[0, 1], color="black", s=12, zorder=3)
            ax.scatter(path[-1, 0], path[-1, 1], color="tab:red", marker="*", s=60, zorder=3)
        ax.set_title(name)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2500)
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--methods", help="comma-separated aggregator names (default: all)")
    parser.add_argument("--out", default="multitask_toy.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    available = aggregators()
    names = args.methods.split(",") if args.methods else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(available)}")
    paths: dict[str, list[torch.Tensor]] = {}
    print(f"Adam lr={args.lr}, {args.iters} iterations, starts {STARTS}")
    print(
        f"{'method':<11} {'start':>13} {'end':>18} {'dist to Pareto':>15} {'L1':>8} {'L2':>8} {'s':>6}"
    )
    for name in names:
        paths[name] = []
        for start in STARTS:
            began = time.perf_counter()
            path = trajectory(aggregators()[name], start, args.iters, args.lr)
            end = path[-1]
            l1, l2 = losses(end)
            paths[name].append(path)
            print(
                f"{name:<11} {start!s:>13} ({float(end[0]):7.3f}, {float(end[1]):7.3f}) "
                f"{pareto_distance(end):15.3f} {float(l1):8.3f} {float(l2):8.3f} "
                f"{time.perf_counter() - began:6.1f}"
            )
    plot(paths, args.out)
    print(f"trajectories written to {args.out}")


if __name__ == "__main__":
    main()
