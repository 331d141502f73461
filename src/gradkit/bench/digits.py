"""Workloads on scikit-learn's digits: logistic regression, an MLP and a three-task MLP.

Data: the 1,797 8x8 handwritten digits that ship with scikit-learn (``load_digits``; Alpaydin &
Kaynak, UCI "Optical Recognition of Handwritten Digits", 1998), so nothing is downloaded. The
split is fixed by the workload (a permutation drawn from seed 20240 of its own generator: 1,437
training and 360 validation examples) and the 64 features are standardized with the training
mean and standard deviation. The run seed drives only the initialization and the batch order.

These play the role of DeepOBS's ``mnist_logreg`` / ``mnist_mlp`` test problems (Schneider,
Balles & Hennig, "DeepOBS: A Deep Learning Optimizer Benchmark Suite", ICLR 2019,
https://github.com/fsschneider/DeepOBS) at a size that trains in seconds on one CPU core.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from gradkit.bench._workload import (
    STREAM_INIT,
    EpochSampler,
    Task,
    Workload,
    build_without_global_rng,
    check_seed,
    evaluation_mode,
    grouped_by_role,
    init_linear_,
    seeded_generator,
)

SPLIT_SEED = 20240
TRAIN_FRACTION = 0.8


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 64], labels [1797])`` exactly as ``sklearn.datasets.load_digits``.

    Reads the CSV that ships inside scikit-learn directly: importing scikit-learn costs ~1.5 s
    of CPU, ten times the read. Falls back to ``load_digits`` if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


@lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)``: the fixed, standardized 80/20 split of digits."""
    images, labels = load_digits_arrays()
    x = torch.tensor(images, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = x[perm], y[perm]
    cut = int(TRAIN_FRACTION * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0)
    x = (x - mean) / (std + 1e-2)  # constant border pixels have std 0
    return x[:cut].contiguous(), y[:cut], x[cut:].contiguous(), y[cut:]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def _init_all_linear_(model: nn.Module, seed: int) -> nn.Module:
    gen = seeded_generator(seed, STREAM_INIT)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            init_linear_(module, gen)
    return model


class DigitsTask(Task):
    """A classifier on digits; parameters under ``head_prefixes`` are output layers (``"head"``)."""

    def __init__(
        self, model: nn.Module, head_prefixes: tuple[str, ...], batch_size: int, seed: int
    ) -> None:
        self.model = model.train()
        self.head_prefixes = head_prefixes
        self.x_train, self.y_train, self.x_val, self.y_val = digits_split()
        self.sampler = EpochSampler(len(self.x_train), batch_size, seed)

    def _role(self, name: str, param: nn.Parameter) -> str:
        if param.ndim < 2:
            return "vector"
        return "head" if name.startswith(self.head_prefixes) else "matrix"

    def param_groups(self) -> list[dict[str, Any]]:
        return grouped_by_role(self.model, self._role)

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        idx = self.sampler.indices(step)
        x, y = self.x_train[idx], self.y_train[idx]

        def closure() -> torch.Tensor:
            return F.cross_entropy(self.model(x), y)

        return closure

    def evaluate(self) -> dict[str, float]:
        with evaluation_mode(self.model):
            logits = self.model(self.x_val)
            loss = F.cross_entropy(logits, self.y_val).item()
            error = (logits.argmax(1) != self.y_val).float().mean().item()
        return {"val_error": error, "val_loss": loss}


class DigitsLogReg(Workload):
    """Multinomial logistic regression (64 -> 10, softmax cross-entropy) on digits.

    Metric ``val_error`` (1 - accuracy on the 360 validation digits). Target: the AdamW sweep
    lr in {3e-3, 1e-2, 3e-2} x weight decay in {0, 0.01, 0.1} (seeds 0-2, batch 64) picked
    lr=1e-2, wd=0.1; over seeds 0-4 (evaluating every 10 steps) it first reaches <= 13 errors
    (0.037) at steps 100-140 of the 200-step budget (50-70%) and ends at 0.031-0.033. The
    problem is convex, so optimizers differ mainly in speed here.
    """

    name: ClassVar[str] = "digits_logreg"
    description: ClassVar[str] = "multinomial logistic regression on sklearn digits (val_error)"
    metric: ClassVar[str] = "val_error"

    def __init__(self, quick: bool = True) -> None:
        self.quick = quick  # one size: already seconds on a CPU core
        self.max_steps, self.eval_every, self.batch_size = 200, 10, 64
        self.target = 0.037  # at most 13 of 360 validation digits wrong
        self.adamw_reference = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.999)}

    def setup(self, seed: int) -> DigitsTask:
        seed = check_seed(seed)
        model = build_without_global_rng(lambda: nn.Sequential(nn.Linear(64, 10)))
        return DigitsTask(_init_all_linear_(model, seed), ("0.",), self.batch_size, seed)


class DigitsMLP(Workload):
    """A 64-128-128-10 GELU MLP on digits, softmax cross-entropy.

    Metric ``val_error``. Hidden weights have role ``"matrix"`` (the first layer included: the
    inputs are dense pixel features, not a lookup), the output layer ``"head"``, biases
    ``"vector"``. Target: the AdamW sweep lr in {1e-3, 3e-3, 1e-2} x weight decay in
    {0.01, 0.1} (seeds 0-2) picked lr=3e-3, wd=0.1; over seeds 0-4 (evaluating every 10
    steps) it first reaches <= 10 errors (0.028) at steps 50-90 of the 120-step budget
    (42-75%); with 400 steps it plateaus at 0.014-0.033.
    """

    name: ClassVar[str] = "digits_mlp"
    description: ClassVar[str] = "64-128-128-10 GELU MLP on sklearn digits (val_error)"
    metric: ClassVar[str] = "val_error"

    def __init__(self, quick: bool = True) -> None:
        self.quick = quick  # one size: already seconds on a CPU core
        self.max_steps, self.eval_every, self.batch_size = 120, 10, 64
        self.target = 0.028  # at most 10 of 360 validation digits wrong
        self.adamw_reference = {"lr": 3e-3, "weight_decay": 0.1, "betas": (0.9, 0.999)}

    def setup(self, seed: int) -> DigitsTask:
        seed = check_seed(seed)
        model = build_without_global_rng(lambda: _mlp([64, 128, 128, 10]))
        return DigitsTask(_init_all_linear_(model, seed), ("4.",), self.batch_size, seed)


# Three tasks on one image: the digit, its parity and whether it is >= 5.
TASKS = ("digit", "parity", "ge5")


def _task_targets(y: torch.Tensor) -> list[torch.Tensor]:
    return [y, y % 2, (y >= 5).long()]


class MultiTaskNet(nn.Module):
    """A shared GELU trunk (64-128-128) with one linear head per task."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 128)) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_mlp(list(widths)), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(widths[-1], k) for k in (10, 2, 2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(x)
        return [head(features) for head in self.heads]


class MultiTaskDigitsTask(DigitsTask):
    """:class:`DigitsTask` with three heads; the training loss is the sum of the task losses."""

    model: MultiTaskNet

    def _losses(self, idx: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.model(self.x_train[idx])
        targets = _task_targets(self.y_train[idx])
        return [F.cross_entropy(o, t) for o, t in zip(outputs, targets, strict=True)]

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        idx = self.sampler.indices(step)

        def closure() -> torch.Tensor:
            return torch.stack(self._losses(idx)).sum()

        return closure

    def task_losses(self, step: int) -> list[Callable[[], torch.Tensor]]:
        """One closure per task (same minibatch as ``batch_loss(step)``), for multi-task
        aggregators: ``gradkit.multitask.backward([f() for f in fs], task.shared_parameters(),
        aggregator, task_params=task.task_parameters())``. Each closure runs its own forward."""
        idx = self.sampler.indices(step)
        return [lambda i=i: self._losses(idx)[i] for i in range(len(TASKS))]

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.model.trunk.parameters())

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.model.heads]

    def evaluate(self) -> dict[str, float]:
        with evaluation_mode(self.model):
            outputs = self.model(self.x_val)
            targets = _task_targets(self.y_val)
            errors = [
                (o.argmax(1) != t).float().mean().item()
                for o, t in zip(outputs, targets, strict=True)
            ]
            loss = sum(F.cross_entropy(o, t).item() for o, t in zip(outputs, targets, strict=True))
        result = {f"val_error_{name}": e for name, e in zip(TASKS, errors, strict=True)}
        return {"val_mean_error": sum(errors) / len(errors), "val_loss": loss, **result}


class MultiTaskDigits(Workload):
    """Three classification tasks on digits sharing a trunk: the digit (10 classes), its parity
    and whether it is >= 5 (2 classes each).

    The runner sees one scalar loss, the sum of the three cross-entropies (equal weights, the
    usual multi-task baseline); ``Task.task_losses(step)`` exposes the per-task losses so that
    gradient aggregators (``gradkit.multitask``: PCGrad, UPGrad, ...) can be benchmarked on the
    same data. Metric ``val_mean_error``: the mean of the three validation error rates. Roles:
    trunk weights ``"matrix"``, the three heads ``"head"``, biases ``"vector"``.

    Target: the AdamW sweep lr in {1e-3, 3e-3, 1e-2} x weight decay in {0.01, 0.1} (seeds
    0-2, 300 steps) picked lr=1e-2, wd=0.1; over seeds 0-4 (evaluating every 10 steps) it
    first reaches a mean error of 0.02 at steps 90-150 of the 200-step budget (45-75%) and ends
    at 0.014-0.031: equal-weight training is noisy here, which leaves room for aggregators.
    """

    name: ClassVar[str] = "multitask_digits"
    description: ClassVar[str] = "digit + parity + (digit >= 5) heads on a shared digits MLP"
    metric: ClassVar[str] = "val_mean_error"

    def __init__(self, quick: bool = True) -> None:
        self.quick = quick  # one size: already seconds on a CPU core
        self.max_steps, self.eval_every, self.batch_size = 200, 10, 64
        self.target = 0.02
        self.adamw_reference = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.999)}

    def setup(self, seed: int) -> MultiTaskDigitsTask:
        seed = check_seed(seed)
        model = build_without_global_rng(MultiTaskNet)
        return MultiTaskDigitsTask(
            _init_all_linear_(model, seed), ("heads.",), self.batch_size, seed
        )
