"""Loss-weighting baselines: turn task losses ``[L_1, ..., L_m]`` into one scalar to backpropagate.

* :class:`UncertaintyWeighting` — Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty
  to Weigh Losses for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115.
* :class:`DWA` — Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN),
  CVPR 2019, arXiv:1803.10704, eq. (7).
* :class:`RLW` — Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus
  Test for Multi-Task Learning", TMLR 2022, arXiv:2111.10603.

Conventions cross-checked against LibMTL (``LibMTL/weighting/UW.py``, ``DWA.py``, ``RLW.py``) and
the Nash-MTL repository (``methods/weight_methods.py``). Each class is a ``torch.nn.Module`` so
that its state (learned log-variances, loss history, generator state) travels in ``state_dict``.
Call ``total = weighting(losses)`` with a list/tuple or 1-D tensor of scalar losses;
``weighting.last_weights`` holds the (detached) weights of the last call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.multitask._base import check_number


def _stack_losses(losses: Sequence[Tensor] | Tensor, num_tasks: int) -> Tensor:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"Invalid losses: expected a 1-D tensor of {num_tasks} losses, "
                f"got shape {tuple(losses.shape)}"
            )
        stacked = losses
    else:
        losses = list(losses)
        if any(not isinstance(x, Tensor) or x.numel() != 1 for x in losses):
            raise ValueError("Invalid losses: expected scalar tensors")
        stacked = torch.stack([x.reshape(()) for x in losses]) if losses else None
    if stacked is None or stacked.shape[0] != num_tasks:
        got = 0 if stacked is None else stacked.shape[0]
        raise ValueError(f"Invalid losses: expected {num_tasks} losses, got {got}")
    return stacked


class LossWeighting(nn.Module):
    """Base class: ``forward(losses) -> scalar total``; ``__repr__`` shows every argument."""

    def __init__(self, num_tasks: int):
        super().__init__()
        check_number("num_tasks", num_tasks, low=1, integer=True)
        self.num_tasks = num_tasks
        self.last_weights: Tensor | None = None

    def _arguments(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"


class UncertaintyWeighting(LossWeighting):
    r"""Homoscedastic-uncertainty weighting with learnable log-variances :math:`s_i = \log\sigma_i^2`.

    .. math:: L = \sum_i \tfrac12 e^{-s_i} L_i + \tfrac12 s_i

    This is the paper's regression form (eq. 5 with :math:`s = \log\sigma^2`) applied to every
    task, as LibMTL (``losses / (2 exp(s)) + s / 2``) and Nash-MTL (``0.5 exp(-s) L + 0.5 s``) do;
    the paper's classification form (:math:`1/\sigma^2` instead of :math:`1/(2\sigma^2)`) is not
    used by these implementations. Add ``weighting.parameters()`` to the model optimizer.

    :param num_tasks: number of losses :math:`m`.
    :param init: initial :math:`s_i` (default ``0.0``, Nash-MTL; LibMTL uses ``-0.5``).

    ``last_weights`` are :math:`\tfrac12 e^{-s_i}`. State: parameter ``log_vars``.
    """

    def __init__(self, num_tasks: int, init: float = 0.0):
        super().__init__(num_tasks)
        check_number("init", init, low=-float("inf"))
        self.init = init
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(init)))

    def _arguments(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "init": self.init}

    def forward(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        s = self.log_vars.to(stacked.dtype)
        precision = 0.5 * torch.exp(-s)
        self.last_weights = precision.detach()
        return (precision * stacked + 0.5 * s).sum()


class DWA(LossWeighting):
    r"""Dynamic Weight Average: weights from the descent rate of each loss over the last two epochs.

    .. math:: w_i(t) = K\,\frac{\exp(r_i(t-1)/T)}{\sum_j \exp(r_j(t-1)/T)},\qquad
              r_i(t-1) = \frac{L_i(t-1)}{L_i(t-2)}

    with :math:`L_i(\cdot)` the epoch-average training loss, :math:`K = m` and :math:`w_i = 1` for
    the first two epochs. Every call accumulates the detached losses; call :meth:`end_epoch` at the
    end of each epoch (optionally passing the epoch losses yourself) to record their average.

    :param num_tasks: number of losses :math:`m` (:math:`K = m`, as the paper and LibMTL).
    :param temperature: :math:`T > 0` (default ``2.0``, paper and LibMTL).

    Choices: the paper/LibMTL average over an epoch; Nash-MTL averages over an iteration window —
    pass your own averages to ``end_epoch`` for that. State: buffers ``history`` (last two epoch
    averages), ``num_epochs`` and the running ``epoch_sum``/``epoch_count``.
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0):
        super().__init__(num_tasks)
        check_number("temperature", temperature, low=0.0, low_open=True)
        self.temperature = temperature
        self.register_buffer("history", torch.zeros(2, num_tasks, dtype=torch.float64))
        self.register_buffer("num_epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros((), dtype=torch.long))

    def _arguments(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "temperature": self.temperature}

    def weights(self) -> Tensor:
        """The current weights (float64, shape ``[m]``)."""
        if int(self.num_epochs) < 2:
            return torch.ones(self.num_tasks, dtype=torch.float64, device=self.history.device)
        ratio = self.history[1] / self.history[0]
        return self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def forward(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        self.epoch_sum += stacked.detach().to(self.epoch_sum)
        self.epoch_count += 1
        w = self.weights().to(stacked.dtype)
        self.last_weights = w
        return (w * stacked).sum()

    def end_epoch(self, epoch_losses: Sequence[float] | Tensor | None = None) -> None:
        """Record this epoch's average losses (the accumulated mean when none are given)."""
        if epoch_losses is None:
            if int(self.epoch_count) == 0:
                raise ValueError("DWA.end_epoch: no losses were seen this epoch")
            avg = self.epoch_sum / self.epoch_count
        else:
            avg = torch.as_tensor(epoch_losses, dtype=torch.float64).to(self.history.device)
            if avg.shape != (self.num_tasks,):
                raise ValueError(
                    f"Invalid epoch_losses: expected {self.num_tasks} values, "
                    f"got shape {tuple(avg.shape)}"
                )
        self.history[0] = self.history[1]
        self.history[1] = avg
        self.num_epochs += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()


class RLW(LossWeighting):
    r"""Random Loss Weighting: fresh weights :math:`w = \mathrm{softmax}(z)`, :math:`z\sim\mathcal N(0, I)`.

    Drawn at every call, as LibMTL and Nash-MTL (``F.softmax(torch.randn(m))``); the weights sum to
    1 (the paper's Dirichlet/uniform/… variants are not included; softmax-normal is its default).

    :param num_tasks: number of losses :math:`m`.
    :param generator: a ``torch.Generator`` or ``int`` seed; ``None`` uses torch's global RNG.

    State: the generator state (``get_extra_state``), when a generator is given.
    """

    def __init__(self, num_tasks: int, generator: torch.Generator | int | None = None):
        super().__init__(num_tasks)
        if isinstance(generator, bool) or not (
            generator is None or isinstance(generator, (torch.Generator, int))
        ):
            raise ValueError(
                f"Invalid generator: {generator!r} (expected a torch.Generator or int)"
            )
        self._seed = generator if isinstance(generator, int) else None
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator

    def _arguments(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "generator": self._seed if self._seed is not None else self.generator,
        }

    def forward(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        z = torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64)
        w = torch.softmax(z, dim=0).to(device=stacked.device, dtype=stacked.dtype)
        self.last_weights = w
        return (w * stacked).sum()

    def get_extra_state(self) -> Any:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if self.generator is None:
            if state:
                raise ValueError("RLW without a generator cannot load a generator state")
        elif "generator" not in state:
            raise ValueError("RLW state has no 'generator' entry")
        else:
            self.generator.set_state(state["generator"])


class IGB(LossWeighting):
    r"""Improvable Gap Balancing (IGBv1): weight each log-loss by its remaining "improvable gap".

    Dai, Fei & Liu, "Improvable Gap Balancing for Multi-Task Learning", UAI 2023,
    arXiv:2307.15429; official code https://github.com/YanqiDai/IGB4MTL
    (``methods/loss_weight_methods.py``, ``ImprovableGapBalancing_v1``). Until the base losses
    are known all weights are 1; afterwards, at every call,

    .. math:: L = \sum_i w_i \log L_i,\qquad w = m\,\mathrm{softmax}\!\big(L(t) / L_{base}\big)

    with :math:`L(t)` the current (detached) losses and :math:`L_{base}` the mean training loss
    of epoch ``base_epoch`` (0-based). Call :meth:`end_epoch` after each epoch (it records the
    epoch's mean from the accumulated calls, or the averages you pass).

    :param num_tasks: number of losses :math:`m` (losses must be positive: the objective uses
        :math:`\log L_i`).
    :param base_epoch: epoch whose mean losses become :math:`L_{base}` (default ``1``, official
        ``--base_epoch``; epochs 0 and 1 use unit weights).

    IGBv2 (a SAC reinforcement-learning agent choosing the weights) is not included.
    State: buffers ``base_losses`` (NaN until set), ``num_epochs``, running epoch sums.
    """

    def __init__(self, num_tasks: int, base_epoch: int = 1):
        super().__init__(num_tasks)
        check_number("base_epoch", base_epoch, low=0, integer=True)
        self.base_epoch = base_epoch
        nan = torch.full((num_tasks,), float("nan"), dtype=torch.float64)
        self.register_buffer("base_losses", nan)
        self.register_buffer("num_epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros((), dtype=torch.long))

    def _arguments(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "base_epoch": self.base_epoch}

    def weights(self, losses: Tensor) -> Tensor:
        """The weights for the (detached) current ``losses`` (float64, shape ``[m]``)."""
        if torch.isnan(self.base_losses).any():
            return torch.ones(self.num_tasks, dtype=torch.float64, device=losses.device)
        gap = losses.detach().to(self.base_losses) / self.base_losses
        return self.num_tasks * torch.softmax(gap, dim=0)

    def forward(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        if not bool((stacked.detach() > 0).all()):
            raise ValueError(f"IGB needs positive losses, got {stacked.detach().tolist()}")
        self.epoch_sum += stacked.detach().to(self.epoch_sum)
        self.epoch_count += 1
        w = self.weights(stacked).to(stacked.dtype)
        self.last_weights = w
        return (w * torch.log(stacked)).sum()

    def end_epoch(self, epoch_losses: Sequence[float] | Tensor | None = None) -> None:
        """Close an epoch; after epoch ``base_epoch`` its mean losses become the base."""
        if epoch_losses is None:
            if int(self.epoch_count) == 0:
                raise ValueError("IGB.end_epoch: no losses were seen this epoch")
            avg = self.epoch_sum / self.epoch_count
        else:
            avg = torch.as_tensor(epoch_losses, dtype=torch.float64).to(self.epoch_sum.device)
            if avg.shape != (self.num_tasks,):
                raise ValueError(
                    f"Invalid epoch_losses: expected {self.num_tasks} values, "
                    f"got shape {tuple(avg.shape)}"
                )
        if int(self.num_epochs) == self.base_epoch:
            if not bool((avg > 0).all()):
                raise ValueError(f"Invalid base losses: {avg.tolist()} (must be positive)")
            self.base_losses.copy_(avg)
        self.num_epochs += 1
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
