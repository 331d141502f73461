"""A short, honest comparison of gradkit optimizers on scikit-learn's digits.

Until ``gradkit bench`` exists this is gradkit's main job: it trains the same small MLP, from the
same initialization and data order, with each optimizer at a conventional learning rate (no
tuning, so it says which *defaults* work, not which method is best) and prints a table: held-out
accuracy, final training loss, steps to reach 95% held-out accuracy, wall time of the training
loop (evaluation excluded) and measured optimizer-state bytes per parameter.

Everything runs on the CPU in about a minute; data ship with scikit-learn (no download).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import gradkit.optim as go

# A conventional learning rate per method (the paper's or torch's default where one exists).
DEMO_LR: dict[str, float] = {
    "SGD": 0.1,
    "Adam": 1e-3,
    "AdamW": 1e-3,
    "NAdam": 2e-3,
    "RAdam": 1e-3,
    "Adagrad": 1e-2,
    "RMSprop": 1e-3,
    "DiffGrad": 1e-3,
    "AdamP": 1e-3,
    "SGDP": 0.1,
    "Grams": 1e-3,
    "AdaMomentum": 1e-3,
    "AdEMAMix": 1e-3,
    "MARS": 3e-3,
    "NovoGrad": 1e-2,
    "LAMB": 1e-2,
    "LARS": 1.0,
    "Lion": 3e-4,
    "SignSGD": 1e-3,
    "Signum": 1e-3,
    "Muon": 2e-2,
    "AuON": 5e-2,
    "DropMuon": 2e-2,
    "Sophia": 1e-3,
    "OASIS": 0.1,
    "Gravity": 0.1,
    "InducedMetric": 0.1,
    "XGrad": 1e-3,
}
DEMO_EXTRA: dict[str, dict[str, Any]] = {
    "SGD": {"momentum": 0.9},
    "SGDP": {"momentum": 0.9},
    # OASIS's adaptive step assumes full-batch gradients and alpha=1e-5 lets near-zero curvature
    # of a ReLU net blow steps up: on minibatches, the paper's fixed-step variant with alpha=0.1
    "OASIS": {"adaptive_lr": False, "alpha": 0.1},
}
TARGET_ACCURACY = 0.95


@dataclass
class DemoResult:
    optimizer: str
    lr: float
    accuracy: float
    train_loss: float
    steps_to_target: int | None
    seconds: float
    state_bytes_per_param: float


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Standardized digits, 80/20 split fixed by ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-3
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def _state_bytes_per_param(opt: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    total = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for k, v in s.items()
        if isinstance(v, torch.Tensor) and k != "step"
    )
    return total / sum(p.numel() for p in model.parameters())


def _refresh_curvature(opt: torch.optim.Optimizer, batch_loss: Any, model: torch.nn.Module) -> None:
    """Sophia and OASIS need a diagonal-Hessian estimate: one Hutchinson probe when due."""
    if not hasattr(opt, "update_hessian") or not getattr(opt, "hessian_due", lambda: True)():
        return
    params = list(model.parameters())
    opt.update_hessian(
        go.hutchinson_diagonal(batch_loss, params, generator=opt.hessian_generator())
    )


def train_one(name: str, epochs: int = 15, seed: int = 0, batch_size: int = 64) -> DemoResult:
    """Train the demo MLP with one optimizer; deterministic given ``seed``."""
    x_tr, y_tr, x_va, y_va = load_digits_split(seed)
    model = _model(seed)
    lr = DEMO_LR.get(name, 1e-3)
    opt = getattr(go, name)(model.parameters(), lr=lr, **DEMO_EXTRA.get(name, {}))
    order = torch.Generator().manual_seed(seed + 1)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, reached, seconds, loss = 0, None, 0.0, torch.tensor(float("nan"))
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(x_tr), generator=order)
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i : i + batch_size]

            def batch_loss(idx: torch.Tensor = idx) -> torch.Tensor:
                return loss_fn(model(x_tr[idx]), y_tr[idx])

            def closure(batch_loss=batch_loss) -> torch.Tensor:
                opt.zero_grad()
                value = batch_loss()
                value.backward()
                return value

            _refresh_curvature(opt, batch_loss, model)
            loss = opt.step(closure)  # closures let XGrad evaluate at its predicted weights
            steps += 1
        seconds += time.perf_counter() - start
        with torch.no_grad():
            accuracy = (model(x_va).argmax(1) == y_va).float().mean().item()
        if reached is None and accuracy >= TARGET_ACCURACY:
            reached = steps
    return DemoResult(
        name, lr, accuracy, loss.item(), reached, seconds, _state_bytes_per_param(opt, model)
    )


def run_demo(
    optimizers: Sequence[str] | None = None, epochs: int = 15, seeds: Sequence[int] = (0, 1, 2)
) -> list[list[DemoResult]]:
    """Train every optimizer on every seed; one list of per-seed results per optimizer.

    Denormals are flushed while it runs (CPU denormals otherwise distort timings, DESIGN.md §6);
    the previous setting is restored afterwards.
    """
    was_flushing = _flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        names = list(optimizers) if optimizers else [i.name for i in go.available()]
        return [[train_one(name, epochs, seed) for seed in seeds] for name in names]
    finally:
        torch.set_flush_denormal(was_flushing)


def _flushes_denormals() -> bool:
    """torch has no getter: a denormal survives a multiplication by 1 unless flushing is on."""
    return bool((torch.tensor(1e-40, dtype=torch.float32) * 1.0) == 0)


def print_table(results: Sequence[Sequence[DemoResult]], epochs: int) -> None:
    """One row per optimizer: mean and spread over seeds (steps: median; '-' if any seed missed)."""
    from statistics import mean, median, pstdev

    from rich.console import Console
    from rich.table import Table

    seeds = len(results[0]) if results else 0
    table = Table(
        title=f"digits MLP (64-128-10), {epochs} epochs, batch 64, {seeds} seeds "
        "(same init and data order per seed for every optimizer)",
        caption="untuned: each optimizer at a conventional learning rate; evaluation excluded "
        "from the time; accuracy on a held-out 20%",
    )
    table.add_column("optimizer", no_wrap=True)
    for col in ("lr", "val acc", "train loss", "steps@95%", "train s", "state B/p"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = sorted(results, key=lambda rs: -mean(r.accuracy for r in rs))
    for rs in rows:
        acc = [r.accuracy for r in rs]
        reached = [r.steps_to_target for r in rs]
        table.add_row(
            rs[0].optimizer,
            f"{rs[0].lr:g}",
            f"{mean(acc):.3f}±{pstdev(acc):.3f}",
            f"{mean(r.train_loss for r in rs):.3f}",
            "-" if None in reached else f"{median(reached):g}",
            f"{mean(r.seconds for r in rs):.2f}",
            f"{rs[0].state_bytes_per_param:.2f}",
        )
    Console(width=max(Console().width, 100)).print(table)
