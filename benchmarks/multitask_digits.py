"""Multi-task digits: every gradkit aggregator and loss weighting on one shared MLP, with Delta_m%.

Three tasks on scikit-learn's digits share a 64-96-96 trunk: the digit class (accuracy and
validation cross-entropy, so the two Delta_m conventions differ), whether
the digit is >= 5 (accuracy) and reconstructing the 4x4 average-pooled image (MSE, lower is
better -- a regression task whose gradient scale and direction differ from the classifiers').
Single-task baselines train the same architecture on one task each. For every method the script
prints the per-task metrics and Delta_m% in both conventions (mean over metrics as Nash-MTL/
CAGrad's ``delta_fn``; mean over tasks as LibMTL), averaged over seeds; lower Delta_m is better.

Same initialization, data order and optimizer (Adam, lr 1e-3, batch 64) for every method; only
the gradient combination differs. Runs in about a minute or two on 2 cores.

    python benchmarks/multitask_digits.py [--epochs 10] [--seeds 2] [--threads 1] [--methods Mean,PCGrad,...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import gradkit.multitask as mt

TASKS = ("class", "ge5", "recon")
HIGHER_IS_BETTER = {
    "class": {"acc": True, "nll": False},
    "ge5": {"acc": True},
    "recon": {"mse": False},
}


def load(seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    recon = F.avg_pool2d(x.view(-1, 1, 8, 8), 2).view(-1, 16)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y, recon = x[perm], y[perm], recon[perm]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-3
    x = (x - mean) / std
    targets = {"class": y, "ge5": (y >= 5).float(), "recon": recon}
    train = (x[:cut], {k: v[:cut] for k, v in targets.items()})
    val = (x[cut:], {k: v[cut:] for k, v in targets.items()})
    return train, val


class Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU())
        self.heads = nn.ModuleDict(
            {"class": nn.Linear(96, 10), "ge5": nn.Linear(96, 1), "recon": nn.Linear(96, 16)}
        )

    def forward(self, x):
        z = self.trunk(x)
        return z, {k: h(z) for k, h in self.heads.items()}


def task_losses(outputs, targets, tasks=TASKS) -> list[torch.Tensor]:
    fns = {
        "class": lambda o, t: F.cross_entropy(o, t),
        "ge5": lambda o, t: F.binary_cross_entropy_with_logits(o.squeeze(1), t),
        "recon": lambda o, t: F.mse_loss(o, t),
    }
    return [fns[k](outputs[k], targets[k]) for k in tasks]


@torch.no_grad()
def evaluate(model: Net, val) -> dict[str, dict[str, float]]:
    model.eval()
    _, out = model(val[0])
    model.train()
    t = val[1]
    return {
        "class": {
            "acc": (out["class"].argmax(1) == t["class"]).float().mean().item(),
            "nll": F.cross_entropy(out["class"], t["class"]).item(),
        },
        "ge5": {"acc": ((out["ge5"].squeeze(1) > 0).float() == t["ge5"]).float().mean().item()},
        "recon": {"mse": F.mse_loss(out["recon"], t["recon"]).item()},
    }


def _method_step(name: str):
    """(step(model, losses, z) writing one step's gradients, weighting module or None)."""
    if name in AGGREGATORS or name.endswith("-rep"):
        rep = name.endswith("-rep")
        aggregator = AGGREGATORS[name.removesuffix("-rep")]()

        def step(model, losses, z):
            mt.backward(
                losses,
                model.trunk.parameters(),
                aggregator,
                task_params=[model.heads[k].parameters() for k in TASKS],
                representation=z if rep else None,
            )

        return step, None
    weighting = WEIGHTINGS[name]()

    def step(model, losses, z):
        if isinstance(weighting, mt.GradNorm):  # balances the last shared layer's gradients
            weighting.backward(losses, model.trunk[2].parameters())
        else:
            weighting(losses).backward()

    return step, weighting


AGGREGATORS: dict[str, Callable[[], mt.Aggregator]] = {
    "Mean": mt.Mean,
    "Sum": mt.Sum,
    "PCGrad": lambda: mt.PCGrad(generator=0),
    "MGDA": mt.MGDA,
    "UPGrad": mt.UPGrad,
    "IMTLG": mt.IMTLG,
    "CAGrad": lambda: mt.CAGrad(c=0.4),
    "NashMTL": mt.NashMTL,
    "GradVac": lambda: mt.GradVac(generator=0),
    "AlignedMTL": mt.AlignedMTL,
    "SAMGS": mt.SAMGS,
    "GCond": lambda: mt.GCond(momentum=0.0),
}
WEIGHTINGS: dict[str, Callable[[], mt.LossWeighting]] = {
    "UW": lambda: mt.UncertaintyWeighting(3),
    "DWA": lambda: mt.DWA(3),
    "RLW": lambda: mt.RLW(3, generator=0),
    "IGB": lambda: mt.IGB(3),
    "GradNorm": lambda: mt.GradNorm(3, alpha=1.5),
}
METHODS = [*AGGREGATORS, "MGDA-rep", "UPGrad-rep", *WEIGHTINGS]


def train(method: str | None, seed: int, epochs: int, tasks=TASKS, data=None):
    """Train one model; ``method=None`` with a single task is a single-task baseline."""
    train_set, val = data
    model = Net(seed)
    step_fn, weighting = (None, None) if method is None else _method_step(method)
    params = list(model.parameters())
    if weighting is not None and not isinstance(weighting, mt.GradNorm):
        params += list(weighting.parameters())  # UW's log-variances train with the model
    opt = torch.optim.Adam(params, lr=1e-3)
    order = torch.Generator().manual_seed(seed + 1)
    x, targets = train_set
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            z, out = model(x[idx])
            losses = task_losses(out, {k: v[idx] for k, v in targets.items()}, tasks)
            opt.zero_grad()
            if step_fn is None:
                sum(losses).backward()
            else:
                step_fn(model, losses, z)
            opt.step()
        if hasattr(weighting, "end_epoch"):
            weighting.end_epoch()
    return evaluate(model, val)


def _row(name, m, dm_metric, dm_task, seconds) -> None:
    print(
        f"{name:<12} {m['class']['acc']:9.4f} {m['class']['nll']:9.4f} {m['ge5']['acc']:8.4f} "
        f"{m['recon']['mse']:10.4f} {dm_metric:11.2f} {dm_task:9.2f} "
        + ("" if seconds is None else f"{seconds:6.1f}")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (small models run fastest on 1)"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--methods", help=f"comma-separated (default: all of {METHODS})")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {METHODS}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    data = load()
    seeds = range(args.seeds)
    began = time.perf_counter()
    baseline = {k: {} for k in TASKS}
    for task in TASKS:
        runs = [train(None, s, args.epochs, tasks=(task,), data=data)[task] for s in seeds]
        baseline[task] = {m: sum(r[m] for r in runs) / len(runs) for m in runs[0]}
    print(f"digits, 3 tasks, {args.epochs} epochs, Adam 1e-3, batch 64, {args.seeds} seed(s)")
    print(
        f"{'method':<12} {'class acc':>9} {'class nll':>9} {'ge5 acc':>8} {'recon mse':>10} "
        f"{'dm% metric':>11} {'dm% task':>9} {'s':>6}"
    )
    _row("single-task", baseline, 0.0, 0.0, None)
    for method in methods:
        start = time.perf_counter()
        runs = [train(method, s, args.epochs, data=data) for s in seeds]
        mean = {k: {m: sum(r[k][m] for r in runs) / len(runs) for m in runs[0][k]} for k in TASKS}
        dm_metric = mt.delta_m(mean, baseline, HIGHER_IS_BETTER, average="metric")
        dm_task = mt.delta_m(mean, baseline, HIGHER_IS_BETTER, average="task")
        _row(method, mean, dm_metric, dm_task, time.perf_counter() - start)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
