"""Benchmark your own optimizer on your own workload with ``gradkit bench``, by import path.

Any ``torch.optim.Optimizer`` taking ``(params, lr=...)`` works: ``gradkit bench`` builds it from
the workload's parameter groups, gives it the same warmup + cosine schedule as every other
method, and tunes ``lr`` log-uniformly over [default/30, 30 x default]. A workload is any object
with ``name``, ``description``, ``metric`` (lower is better), ``target``, ``max_steps``,
``eval_every``, ``batch_size`` and ``setup(seed) -> task``; the task has ``model``,
``param_groups()``, ``batch_loss(step)`` and ``evaluate()`` (see docs/bench.md).

From a shell, with this file's folder on PYTHONPATH, the same comparison is::

    gradkit bench run --optimizers custom_optimizer_bench:SignMomentum,AdamW \\
        --workloads custom_optimizer_bench:TwoBlobs --trials 2 --out my-bench

python examples/custom_optimizer_bench.py
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


class SignMomentum(torch.optim.Optimizer):
    """A user's optimizer: heavy-ball momentum on the gradient, step along its sign."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(buf.sign(), alpha=-group["lr"])
        return loss


class BlobsTask:
    """Two Gaussian blobs in 8-d, a 8-16-2 MLP; training batches drawn from the seed."""

    def __init__(self, seed: int) -> None:
        data = torch.Generator().manual_seed(0)  # the data are fixed by the workload
        x = torch.randn(512, 8, generator=data)
        y = (torch.arange(512) % 2).long()
        x[:, :2] += 1.5 * (2 * y[:, None] - 1)
        self.x, self.y, self.x_val, self.y_val = x[:384], y[:384], x[384:], y[384:]
        init = torch.Generator().manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=init) * 0.3)
        self.seed = seed

    def param_groups(self) -> list[dict]:
        m = self.model
        return [
            {"params": [m[0].weight], "names": ["0.weight"], "role": "matrix"},
            {"params": [m[2].weight], "names": ["2.weight"], "role": "head"},
            {"params": [m[0].bias, m[2].bias], "names": ["0.bias", "2.bias"], "role": "vector"},
        ]

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.x), (32,), generator=gen)
        return lambda: torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            wrong = (self.model(self.x_val).argmax(1) != self.y_val).float().mean().item()
        self.model.train()
        return {"val_error": wrong}


class TwoBlobs:
    """A user's workload: classify two Gaussian blobs (validation error <= 5% is the target)."""

    name = "two_blobs"
    description = "8-16-2 MLP on two Gaussian blobs (example)"
    metric = "val_error"
    target = 0.05
    max_steps = 60
    eval_every = 10
    batch_size = 32

    def setup(self, seed: int) -> BlobsTask:
        return BlobsTask(seed)


if __name__ == "__main__":
    from gradkit.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes the import paths work
    with tempfile.TemporaryDirectory() as out:
        status = main([
            "bench", "run",
            "--optimizers", "custom_optimizer_bench:SignMomentum,AdamW",
            "--workloads", "custom_optimizer_bench:TwoBlobs",
            "--trials", "2", "--seeds", "1", "--out", out,
        ])  # fmt: skip
        print(f"gradkit bench exited with {status}; the report was in {out}")
