"""The workload/task contract of ``gradkit bench`` and helpers that every workload shares.

A :class:`Workload` describes a benchmark problem (data, model, loss, validation metric, target,
step budget); :meth:`Workload.setup` turns a seed into a :class:`Task` holding the model and the
data. Everything random goes through explicit ``torch.Generator`` objects derived from the seed
(:func:`seeded_generator`), so a run never reads or changes the global RNG state and the same seed
gives a bitwise identical run on the same machine (CPU, one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

ROLES = ("matrix", "embedding", "head", "vector")

# Distinct streams so initialization, batch order and noise never share random numbers.
STREAM_INIT, STREAM_BATCH, STREAM_NOISE = 1, 2, 3
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def seeded_generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    """A fresh CPU generator determined by ``(seed, stream, index)`` (splitmix-style mixing)."""
    value = (seed * _MIX[0] + stream * _MIX[1] + index * _MIX[2]) & (2**64 - 1)
    value ^= value >> 31
    return torch.Generator().manual_seed(value & (2**63 - 1))


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r} (must be a non-negative integer)")
    return seed


class Task:
    """One seeded instance of a workload: a model in train mode plus its data.

    Subclasses set ``model`` and implement:

    - ``param_groups()``: ``[{"params", "names", "role"}]`` covering every parameter once; roles
      are ``"matrix"`` (hidden 2-D weights), ``"embedding"``, ``"head"`` and ``"vector"``;
    - ``batch_loss(step)``: a closure computing the training loss of step ``step``'s minibatch
      (a pure function of the seed and the step, the model in train mode);
    - ``evaluate()``: the validation metrics (no grad, eval mode, train/eval mode restored).
    """

    model: nn.Module

    def param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def batch_loss(self, step: int) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError


class Workload:
    """A benchmark problem. The metric is always lower-is-better.

    Class attributes of subclasses: ``name``, ``description``, ``metric``, ``source``; instance
    attributes (they may depend on the size options): ``target``, ``max_steps``, ``eval_every``,
    ``batch_size`` and ``adamw_reference`` (the AdamW hyperparameters used to set the target).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str]
    target: float
    max_steps: int
    eval_every: int
    batch_size: int
    adamw_reference: dict[str, Any]

    def setup(self, seed: int) -> Task:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, metric={self.metric!r}, "
            f"target={self.target}, max_steps={self.max_steps}, batch_size={self.batch_size})"
        )


def check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"Invalid step: {step!r} (must be a non-negative integer)")
    return step


def grouped_by_role(model: nn.Module, role_of: Callable[[str, nn.Parameter], str]) -> list[dict]:
    """Param groups ``{"params", "names", "role"}`` in first-seen role order, every parameter once."""
    groups: dict[str, dict[str, list]] = {}
    for name, param in model.named_parameters():
        role = role_of(name, param)
        if role not in ROLES:
            raise ValueError(f"Invalid role for {name}: {role!r} (must be one of {ROLES})")
        group = groups.setdefault(role, {"params": [], "names": []})
        group["params"].append(param)
        group["names"].append(name)
    return [{"params": g["params"], "names": g["names"], "role": r} for r, g in groups.items()]


def build_without_global_rng(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module without touching the global RNG (its default init is overwritten)."""
    with torch.random.fork_rng(devices=[]):
        return factory()


@torch.no_grad()
def init_linear_(layer: nn.Linear, generator: torch.Generator, std: float | None = None) -> None:
    """PyTorch's default ``nn.Linear`` init (U(+-1/sqrt(fan_in))) or N(0, std), from ``generator``."""
    if std is None:
        bound = layer.in_features**-0.5
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)
    else:
        layer.weight.normal_(0.0, std, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``no_grad`` + ``eval()``, restoring the previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class EpochSampler:
    """Minibatch indices for step ``k``: epochs of seeded permutations, last partial batch dropped.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so any step's batch can be
    recomputed on its own (``batch_loss(step)`` is a pure function of the step).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size < 1 or batch_size > n:
            raise ValueError(f"Invalid batch_size: {batch_size} (must be in [1, {n}])")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            gen = seeded_generator(self.seed, STREAM_BATCH, epoch)
            self._cached = (epoch, torch.randperm(self.n, generator=gen))
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(check_step(step), self.per_epoch)
        start = within * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]
