r"""Local-update outer loops: DiLoCo, Streaming DiLoCo, SparseLoCo, and the quadratic sync rule.

Each replica trains its own copy of the model with any inner optimizer; every ``H`` inner steps
the replicas exchange *pseudo-gradients* and apply an outer optimizer to a shared copy of the
parameters. One engine, :class:`DiLoCo`, implements the family:

- **DiLoCo** — Douillard, Feng, Rusu, Chhaparia, Donchev, Kuncoro, Ranzato, Szlam & Shen,
  "DiLoCo: Distributed Low-Communication Training of Language Models", arXiv:2311.08105, 2023.
  Compared against OpenDiLoCo (github.com/PrimeIntellect-ai/OpenDiloco,
  ``train_diloco_torch.py``) and torchft (github.com/meta-pytorch/torchft, ``local_sgd.py``).

  .. math::

      \Delta_r = \theta^{t-1} - \theta_r^{(t)},\quad \Delta = \tfrac1R\textstyle\sum_r \Delta_r,
      \quad m \leftarrow \beta m + \Delta,\quad
      \theta^{t} = \theta^{t-1} - \eta_\text{out}(\Delta + \beta m)

  (outer Nesterov SGD, :math:`\eta_\text{out} = 0.7`, :math:`\beta = 0.9`; torch's SGD
  ``nesterov=True`` update).
- **Streaming DiLoCo** — Douillard, Donchev, Rush, Kale, et al., "Streaming DiLoCo with
  overlapping communication", arXiv:2501.18512, 2025: the parameters are split into ``P``
  fragments (strided over modules); fragment ``f`` synchronizes at inner steps
  :math:`(f+1)H/P + jH`, so one fragment is in flight at a time; its all-reduce starts ``tau``
  inner steps before it is applied (overlap) and the result is mixed,
  :math:`\theta \leftarrow \alpha\,\theta_\text{local} + (1-\alpha)\,\theta_\text{global}`;
  outer gradients are sent in 4-bit floating point, E3M0
  (:class:`~gradkit.distributed.compressors.FP4E3M0`, our default too; the paper leaves the
  scaling granularity open: we share one float32 scale per 128 entries); any compressor can be
  passed (e.g. 4-bit QSGD, which is unbiased).
  torchft's default ``fragment_update_alpha`` is 0; the paper uses 0.5 (our default).
- **SparseLoCo** — Sarfi, Thérien, Lidin & Belilovsky, "Communication Efficient LLM
  Pre-training with SparseLoCo", arXiv:2508.15706, 2025 (paper code not public; compared
  against tplr-ai/templar ``src/tplr/neurons.py``/``compress.py``): error feedback replaces outer
  momentum, :math:`e_r \leftarrow \beta e_r + \Delta_r`, send
  :math:`\hat\Delta_r = Q(\mathrm{TopK_{chunk}}(e_r))`, :math:`e_r \leftarrow e_r - \hat\Delta_r`,
  :math:`\theta^t = \theta^{t-1} - \eta_\text{out}\,\mathrm{mean}_r\hat\Delta_r` (plain SGD,
  templar: :math:`\eta_\text{out} = 1`, :math:`\beta = 0.95`, 64 of every 4096 entries, 2 bits).
  templar scales by the outer lr inside the feedback and clips peers to the median norm; we
  follow the paper's equations and do not clip.
- **Quadratic synchronization rule** — Gu, Lyu, Arora, Zhang & Huang, "A Quadratic
  Synchronization Rule for Distributed Deep Learning", ICLR 2024, arXiv:2310.14423:
  :math:`H = \max(H_\text{base}, \lfloor(\gamma/\eta)^2\rfloor)` with the current inner lr
  :math:`\eta` (:class:`QuadraticSyncRule`, pass as ``sync_every``).

The model is not wrapped in DDP (inner steps are local). Checkpoint ``model.state_dict()``, the
inner optimizer's and this object's ``state_dict()``; ``state_dict()`` completes a fragment
exchange still in flight (every rank must call it at the same step, as with any collective).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradkit.distributed._exchange import ExchangeItem, PendingExchange, start_exchange
from gradkit.distributed.accounting import CommunicationCounters
from gradkit.distributed.compressors import (
    FP4E3M0,
    ChunkTopK,
    Compressor,
    ErrorFeedback,
    GradientCodec,
    _tensor_map_state,
    as_codec,
)

__all__ = ["DiLoCo", "QuadraticSyncRule", "SparseLoCo", "StreamingDiLoCo", "strided_fragments"]


class QuadraticSyncRule:
    r"""``sync_every`` schedule :math:`H = \max(H_\text{base}, \lfloor(\gamma/\eta)^2\rfloor)`.

    ``optimizer``'s first param group supplies the current lr :math:`\eta`.

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> rule = QuadraticSyncRule(opt, growth=0.5, base=2)
    >>> rule(), (opt.param_groups[0].update(lr=0.05), rule())[1]
    (25, 100)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, growth: float, base: int = 1) -> None:
        if not growth > 0:
            raise ValueError(f"Invalid growth: {growth!r} (must be > 0)")
        if isinstance(base, bool) or not isinstance(base, int) or base < 1:
            raise ValueError(f"Invalid base: {base!r} (must be an integer >= 1)")
        self.optimizer, self.growth, self.base = optimizer, float(growth), base

    def __call__(self) -> int:
        lr = float(self.optimizer.param_groups[0]["lr"])
        if lr <= 0:
            return self.base
        return max(self.base, math.floor((self.growth / lr) ** 2 + 1e-9))


def strided_fragments(names: Sequence[str], count: int) -> list[list[str]]:
    """Split parameter names into ``count`` fragments, striding over their owning modules."""
    modules: dict[str, list[str]] = {}
    for name in names:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    if count > len(modules):
        raise ValueError(
            f"Invalid fragments: {count} (the model has only {len(modules)} "
            "modules with parameters)"
        )
    groups = list(modules.values())
    return [[n for group in groups[f::count] for n in group] for f in range(count)]


class _Done:
    """A finished exchange restored from a checkpoint."""

    def __init__(self, result: list[Tensor]) -> None:
        self.result = result

    def wait(self) -> list[Tensor]:
        return self.result


class DiLoCo:
    """Outer loop around any inner optimizer; call :meth:`step` instead of the inner step.

    Args:
        model: the local replica (not DDP-wrapped). Parameters are broadcast from rank 0.
        inner_optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        sync_every: ``H``, an int or a callable returning the next ``H`` (1 fragment only).
        outer_lr, outer_momentum, nesterov: the outer SGD (0.7, 0.9, True).
        fragments: ``P`` (1), a number or lists of parameter names.
        overlap: ``tau`` inner steps between launching and applying an exchange (0).
        alpha: mixing weight of the local parameters after a sync (0: take the global ones).
        codec: compressor or codec for the pseudo-gradients (None: dense all-reduce).
        process_group, timeout: the group and the seconds to wait on each collective.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        *,
        sync_every: int | Callable[[], int] = 500,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        fragments: int | Sequence[Sequence[str]] = 1,
        overlap: int = 0,
        alpha: float = 0.0,
        codec: GradientCodec | Compressor | None = None,
        process_group: dist.ProcessGroup | None = None,
        timeout: float | None = None,
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError(
                "Invalid model: DistributedDataParallel (DiLoCo's inner steps are "
                "local; pass the plain module)"
            )
        if not outer_lr > 0:
            raise ValueError(f"Invalid outer_lr: {outer_lr!r} (must be > 0)")
        if not 0 <= outer_momentum < 1:
            raise ValueError(f"Invalid outer_momentum: {outer_momentum!r} (must be in [0, 1))")
        if not 0 <= alpha <= 1:
            raise ValueError(f"Invalid alpha: {alpha!r} (must be in [0, 1])")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"Invalid timeout: {timeout!r} (must be > 0 seconds or None)")
        self.model, self.inner_optimizer = model, inner_optimizer
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.fragments = (
            strided_fragments(list(self.params), fragments)
            if isinstance(fragments, int)
            else [list(f) for f in fragments]
        )
        self._check_schedule(sync_every, overlap)
        self.sync_every, self.overlap = sync_every, overlap
        self.outer_lr, self.outer_momentum, self.nesterov = outer_lr, outer_momentum, nesterov
        self.alpha, self.codec = alpha, as_codec(codec)
        self.group, self.timeout = process_group, timeout
        self.counters = CommunicationCounters()
        self.local_step = 0
        self._broadcast_parameters()
        self.globals = {n: p.detach().clone() for n, p in self.params.items()}
        self.momenta: dict[str, Tensor] = {}
        self.pending: dict[int, tuple[int, PendingExchange | _Done]] = {}
        self.next_sync = self._period() if callable(sync_every) else None
        self._dense_bytes = sum(p.numel() * p.element_size() for p in self.params.values())

    def _check_schedule(self, sync_every, overlap: int) -> None:
        count = len(self.fragments)
        if count < 1 or sorted(n for f in self.fragments for n in f) != sorted(self.params):
            raise ValueError("Invalid fragments: every trainable parameter must be in exactly one")
        if callable(sync_every):
            if count > 1:
                raise ValueError("Invalid sync_every: a schedule needs fragments=1")
        elif isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"Invalid sync_every: {sync_every!r} (must be an integer >= 1)")
        elif sync_every % count:
            raise ValueError(
                f"Invalid sync_every: {sync_every} (must be a multiple of the {count} fragments)"
            )
        period = sync_every // count if not callable(sync_every) else 1
        if (
            isinstance(overlap, bool)
            or not isinstance(overlap, int)
            or not 0 <= overlap < max(period, 1)
            or (callable(sync_every) and overlap)
        ):
            raise ValueError(
                f"Invalid overlap: {overlap!r} (must be an integer in [0, H/P); "
                "0 with a sync_every schedule)"
            )

    def _period(self) -> int:
        period = self.sync_every() if callable(self.sync_every) else self.sync_every
        if period < 1:
            raise ValueError(f"Invalid sync_every: the schedule returned {period!r}")
        return int(period)

    def _broadcast_parameters(self) -> None:
        source = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        with torch.no_grad():
            for param in self.params.values():
                dist.broadcast(param.data, src=source, group=self.group)

    # ---- the schedule ------------------------------------------------------------------------

    def _launch_due(self, step: int) -> list[int]:
        """Fragments whose exchange starts after inner step ``step``."""
        if self.next_sync is not None:
            return [0] if step == self.next_sync else []
        every, count = self.sync_every, len(self.fragments)
        due = []
        for f in range(count):
            first = (f + 1) * every // count - self.overlap
            if step >= first and (step - first) % every == 0:
                due.append(f)
        return due

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step; launches and applies outer synchronizations when they are due."""
        loss = self.inner_optimizer.step(closure) if closure else self.inner_optimizer.step()
        self.local_step += 1
        self.counters.add(0, self._dense_bytes)
        for f in self._launch_due(self.local_step):
            self._launch(f)
        for f, (arrival, _) in list(self.pending.items()):
            if arrival == self.local_step:
                self._apply(f)
        self.counters.end_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner_optimizer.zero_grad(set_to_none=set_to_none)

    def _launch(self, fragment: int) -> None:
        items = [
            ExchangeItem(
                name, self.globals[name] - self.params[name].detach(), self.params[name].detach()
            )
            for name in self.fragments[fragment]
        ]
        exchange = start_exchange(
            self.codec,
            items,
            group=self.group,
            counters=self.counters,
            timeout=self.timeout,
            count_dense_baseline=False,
        )
        self.pending[fragment] = (self.local_step + self.overlap, exchange)

    @torch.no_grad()
    def _apply(self, fragment: int) -> None:
        _, exchange = self.pending.pop(fragment)
        for name, delta in zip(self.fragments[fragment], exchange.wait(), strict=True):
            update = delta
            if self.outer_momentum:
                momentum = self.momenta.get(name)
                momentum = (
                    delta.clone()
                    if momentum is None
                    else momentum.mul_(self.outer_momentum).add_(delta)
                )
                self.momenta[name] = momentum
                update = delta + self.outer_momentum * momentum if self.nesterov else momentum
            self.globals[name].sub_(update, alpha=self.outer_lr)
            param = self.params[name]
            if self.alpha:
                param.mul_(self.alpha).add_(self.globals[name], alpha=1 - self.alpha)
            else:
                param.copy_(self.globals[name])
        self.codec.end_step()
        if self.next_sync is not None:
            self.next_sync = self.local_step + self._period()

    # ---- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        pending = {
            f: (arrival, [t.clone() for t in exchange.wait()])
            for f, (arrival, exchange) in self.pending.items()
        }
        return {
            "local_step": self.local_step,
            "next_sync": self.next_sync,
            "globals": _tensor_map_state(self.globals),
            "momenta": _tensor_map_state(self.momenta),
            "pending": pending,
            "codec": self.codec.state_dict(),
            "counters": self.counters.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["globals"]) != sorted(self.params):
            raise ValueError("Invalid state: its parameter names differ from this model's")
        self.local_step, self.next_sync = int(state["local_step"]), state["next_sync"]
        with torch.no_grad():
            for name, tensor in state["globals"].items():
                self.globals[name].copy_(tensor)
        self.momenta = _tensor_map_state(state["momenta"])
        self.pending = {
            int(f): (int(arrival), _Done([t.clone() for t in result]))
            for f, (arrival, result) in state["pending"].items()
        }
        self.codec.load_state_dict(state["codec"])
        self.counters.load_state_dict(state["counters"])


class StreamingDiLoCo(DiLoCo):
    """DiLoCo with fragments, overlap and mixing; defaults: 4 fragments, ``tau`` = 1,
    ``alpha`` = 0.5, FP4 (E3M0) outer gradients (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        *,
        sync_every: int = 500,
        fragments: int | Sequence[Sequence[str]] = 4,
        overlap: int = 1,
        alpha: float = 0.5,
        codec: GradientCodec | Compressor | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            model,
            inner_optimizer,
            sync_every=sync_every,
            fragments=fragments,
            overlap=overlap,
            alpha=alpha,
            codec=FP4E3M0() if codec is None else codec,
            **options,
        )


class SparseLoCo(DiLoCo):
    """Error feedback on chunk-wise Top-K + 2-bit pseudo-gradients, outer plain SGD.

    Defaults from templar's production hparams: ``outer_lr`` 1.0, ``decay`` 0.95, 64 of
    every 4096 entries, 2-bit values.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        *,
        sync_every: int | Callable[[], int] = 30,
        outer_lr: float = 1.0,
        decay: float = 0.95,
        chunk_size: int = 4096,
        k: int = 64,
        value_bits: int | None = 2,
        **options: Any,
    ) -> None:
        codec = ErrorFeedback(ChunkTopK(chunk_size, k, value_bits=value_bits), decay=decay)
        super().__init__(
            model,
            inner_optimizer,
            sync_every=sync_every,
            outer_lr=outer_lr,
            outer_momentum=0.0,
            nesterov=False,
            codec=codec,
            **options,
        )
