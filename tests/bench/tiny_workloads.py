"""Tiny workloads implementing the bench Workload/Task interface, for fast runner/CLI tests.

Importable as ``bench.tiny_workloads`` (tests/ is on sys.path) and by import path
``bench.tiny_workloads:TinyMLP`` in subprocesses that put tests/ on PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch


class TinyTask:
    """A 4-8-2 tanh MLP classifying whether x0 + x1 > 0, full data in memory."""

    def __init__(self, seed: int, batch_size: int, eval_sleep: float, fail_at: int | None):
        gen = torch.Generator().manual_seed(1000 + seed)
        data = torch.Generator().manual_seed(7)  # the data split is fixed by the workload
        self.x = torch.randn(256, 4, generator=data)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()
        self.x_val, self.y_val = self.x[192:], self.y[192:]
        self.x, self.y = self.x[:192], self.y[:192]
        self.model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.seed, self.batch_size = seed, batch_size
        self.eval_sleep, self.fail_at = eval_sleep, fail_at

    def param_groups(self) -> list[dict[str, Any]]:
        m = self.model
        return [
            {"params": [m[0].weight], "names": ["0.weight"], "role": "matrix"},
            {"params": [m[2].weight], "names": ["2.weight"], "role": "head"},
            {"params": [m[0].bias, m[2].bias], "names": ["0.bias", "2.bias"], "role": "vector"},
        ]

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        if self.fail_at is not None and step == self.fail_at:
            raise RuntimeError(f"tiny workload failure at step {step}")
        gen = torch.Generator().manual_seed(self.seed * 100_003 + step)
        idx = torch.randint(0, len(self.x), (self.batch_size,), generator=gen)
        x, y = self.x[idx], self.y[idx]
        return lambda: torch.nn.functional.cross_entropy(self.model(x), y)

    def evaluate(self) -> dict[str, float]:
        if self.eval_sleep:
            time.sleep(self.eval_sleep)
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.x_val)
            error = (logits.argmax(1) != self.y_val).float().mean().item()
            loss = torch.nn.functional.cross_entropy(logits, self.y_val).item()
        self.model.train()
        return {"val_error": error, "val_loss": loss}


class TinyMLP:
    name = "tiny_mlp"
    description = "4-8-2 MLP on a linearly separable toy problem (tests only)"
    metric = "val_error"
    target = 0.1
    batch_size = 32

    def __init__(
        self,
        max_steps: int = 40,
        eval_every: int = 10,
        eval_sleep: float = 0.0,
        fail_at: int | None = None,
        step_sleep: float = 0.0,
    ) -> None:
        self.max_steps, self.eval_every = max_steps, eval_every
        self.eval_sleep, self.fail_at = eval_sleep, fail_at
        self.step_sleep = step_sleep or float(os.environ.get("TINY_STEP_SLEEP", "0"))

    def setup(self, seed: int) -> TinyTask:
        task = TinyTask(seed, self.batch_size, self.eval_sleep, self.fail_at)
        if self.step_sleep:  # slow steps, so a test can kill a sweep mid-trial
            inner = task.batch_loss

            def slow(step: int) -> Callable[[], torch.Tensor]:
                time.sleep(self.step_sleep)
                return inner(step)

            task.batch_loss = slow  # type: ignore[method-assign]
        return task


class TinyOther(TinyMLP):
    name = "tiny_other"
    description = "the same toy problem under a second name (tests only)"


def tiny_sweep(db: str, trials: int = 3, optimizers: tuple[str, ...] = ("AdamW",), **kw: Any):
    """Run a tuned sweep of the tiny workload into ``db``; returns its records."""
    from gradkit.bench.spaces import get_spec
    from gradkit.bench.storage import open_storage
    from gradkit.bench.tuning import SweepConfig, run_sweep

    workload = kw.pop("workload", None) or TinyMLP()
    config = SweepConfig(
        workloads=(workload.name,), optimizers=optimizers, suite="test", trials=trials, **kw
    )
    specs = {name: get_spec(name) for name in optimizers}
    return run_sweep(config, open_storage(db), {workload.name: workload}, specs)


if __name__ == "__main__":  # used by the kill-and-resume test: python tiny_workloads.py DB N
    import sys

    tiny_sweep(sys.argv[1], trials=int(sys.argv[2]))
