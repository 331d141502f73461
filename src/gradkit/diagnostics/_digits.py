"""The default ``gradkit diagnose`` workload: a 64-128-128-10 GELU MLP on scikit-learn's digits.

Same architecture and data handling as the bench's ``digits_mlp`` (fixed 80/20 split, features
standardised with the training statistics), built here so diagnostics do not depend on the bench.
Beyond the bench's task contract (``model``, ``batch_loss(step)``) it exposes what the
per-example and step-safety reports need: ``batch_size``, ``batch(step) -> (inputs, targets)``
and ``loss_fn(outputs, targets)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)


class DigitsMLPTask:
    """Seeded digits MLP with a reproducible batch order (its own generators, no global RNG)."""

    def __init__(self, seed: int = 0, batch_size: int = 64, hidden: int = 128) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(20240))
        x, y = x[perm], y[perm]
        cut = int(0.8 * len(x))
        mean, std = x[:cut].mean(0), x[:cut].std(0)
        x = (x - mean) / (std + 1e-2)  # constant border pixels have std 0
        self.x_train, self.y_train = x[:cut].contiguous(), y[:cut]
        self.x_val, self.y_val = x[cut:].contiguous(), y[cut:]
        self.batch_size, self.seed = batch_size, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = nn.Sequential(
                nn.Linear(64, hidden),
                nn.GELU(),
                nn.Linear(hidden, hidden),
                nn.GELU(),
                nn.Linear(hidden, 10),
            )
        self.loss_fn = F.cross_entropy

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = len(self.x_train) // self.batch_size
        epoch, within = divmod(step, per_epoch)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        idx = torch.randperm(len(self.x_train), generator=gen)
        idx = idx[within * self.batch_size : (within + 1) * self.batch_size]
        return self.x_train[idx], self.y_train[idx]

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        x, y = self.batch(step)
        return lambda: self.loss_fn(self.model(x), y)

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            logits = self.model.eval()(self.x_val)
            self.model.train()
            return {
                "val_loss": float(F.cross_entropy(logits, self.y_val)),
                "val_error": float((logits.argmax(1) != self.y_val).float().mean()),
            }
