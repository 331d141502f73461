r"""Deep Gradient Compression as a codec for the DDP compression hook.

Lin, Han, Mao, Wang & Dally, "Deep Gradient Compression: Reducing the Communication Bandwidth
for Distributed Training", ICLR 2018, arXiv:1712.01887. Official code (Horovod only, compared
against): https://github.com/synxlin/deep-gradient-compression (``dgc/compression.py``,
``dgc/memory.py``, ``dgc/optim/sgd.py``).

For every compressed tensor (matrices, ``dim() > 1``) on worker :math:`k`, with momentum
:math:`m` (paper Algorithm 4 / Eq. 5 and Sec. 3.3):

.. math::

    g &\leftarrow \mathrm{clip}(g + \lambda w,\; c / \sqrt{N})
        \quad\text{(local clipping, weight decay added locally)} \\
    u &\leftarrow m u + g, \qquad v \leftarrow v + u
        \quad\text{(momentum correction, local accumulation)} \\
    \mathcal{M} &= \{ i : |v_i| \ge \text{thr} \},\ |\mathcal{M}| \le \lceil (1-s) n \rceil
        \quad\text{(sampled threshold, sparsity } s) \\
    &\text{all-gather } (v_{\mathcal{M}}, \mathcal{M}); \quad
        \hat g = \tfrac1N \textstyle\sum_k \mathrm{scatter}(v^k_{\mathcal{M}^k}) \\
    v_{\mathcal{M}} &\leftarrow 0, \qquad u_{\mathcal{M}} \leftarrow 0
        \quad\text{(momentum factor masking)}

Nesterov (official code): :math:`u \leftarrow (u + g) m,\; v \leftarrow v + u + g`. Tensors
sent dense (biases, norms) are all-reduced and then get ordinary momentum
:math:`u \leftarrow m u + \bar g` (as the official ``decompress`` does). The hook's output is
already the momentum-corrected update: apply it with **plain SGD** (``momentum=0``,
``weight_decay=0``; PaddlePaddle PR #20758 found the same).

Sparsity warm-up (paper Sec. 3.4): 75%, 93.75%, 98.4375%, 99.6%, then 99.9%, one stage per
``steps_per_stage`` synchronizations (the paper uses one epoch per stage).

Deviations and choices:

- The official code's default warm-up (``warmup_coeff = ratio ** (1/(epochs+1))``) gives
  densities 0.316, 0.1, 0.0316, ...; we use the paper's schedule (its README lists it too).
- Local clipping is per tensor (the hook sees one bucket at a time, not the whole gradient);
  the paper clips the whole local gradient with the threshold scaled by :math:`N^{-1/2}`.
  The official code ships the clipping helpers but does not enable them.
- Weight decay is added to the local gradient before accumulation (Paddle PR #21278); the
  official optimizer keeps a momentum buffer on the decay term instead.
- Indices are int32, values in the gradient's dtype; selections shorter than k are padded so
  every rank all-gathers the same size (torch collectives need equal sizes; Horovod did not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradkit.distributed.compressors import (
    Compressed,
    GradientCodec,
    SampledTopK,
    _index_dtype,
    _tensor_map_state,
)
from gradkit.distributed.hooks import CompressionHookState, register_compression_hook

__all__ = ["DGC", "PAPER_SPARSITY_SCHEDULE", "register_dgc_hook", "sparsity_at"]

PAPER_SPARSITY_SCHEDULE = (0.75, 0.9375, 0.984375, 0.996, 0.999)


def sparsity_at(step: int, steps_per_stage: int, schedule: Sequence[float]) -> float:
    """Sparsity of synchronization ``step``: stage ``step // steps_per_stage``, last one after."""
    if steps_per_stage <= 0:
        return schedule[-1]
    return schedule[min(step // steps_per_stage, len(schedule) - 1)]


class DGC(GradientCodec):
    """DGC's codec: momentum correction, local clipping, masking, warm-up, sampled threshold.

    Args:
        steps_per_stage: synchronizations per warm-up stage (0: no warm-up).
        momentum: :math:`m` (0.9). ``nesterov``: the official code's Nesterov variant.
        sparsity_schedule: warm-up sparsities; the last is the final sparsity.
        clip_norm: local clipping threshold :math:`c` before the :math:`N^{-1/2}` scaling
            (None: no clipping, the official default).
        momentum_masking: zero :math:`u` where values were sent (True).
        weight_decay: :math:`\\lambda`, added to the local gradient (0).
        sample_ratio: fraction of entries sampled for the threshold (0.01, at least 1%).
        exact: exact Top-K instead of the sampled threshold (for tests and small tensors).
        seed: seed of the sampling start (per rank).

    >>> codec = DGC(steps_per_stage=2)
    >>> [codec.sparsity_at(step) for step in (0, 2, 4, 6, 8, 100)]
    [0.75, 0.9375, 0.984375, 0.996, 0.999, 0.999]
    """

    def __init__(
        self,
        *,
        steps_per_stage: int,
        momentum: float = 0.9,
        nesterov: bool = False,
        sparsity_schedule: Sequence[float] = PAPER_SPARSITY_SCHEDULE,
        clip_norm: float | None = None,
        momentum_masking: bool = True,
        weight_decay: float = 0.0,
        sample_ratio: float = 0.01,
        exact: bool = False,
        seed: int = 0,
    ) -> None:
        if (
            isinstance(steps_per_stage, bool)
            or not isinstance(steps_per_stage, int)
            or (steps_per_stage < 0)
        ):
            raise ValueError(f"Invalid steps_per_stage: {steps_per_stage!r} (must be an int >= 0)")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1))")
        schedule = tuple(float(s) for s in sparsity_schedule)
        if not schedule or any(not 0 <= s < 1 for s in schedule):
            raise ValueError(f"Invalid sparsity_schedule: {sparsity_schedule!r} (values in [0, 1))")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"Invalid clip_norm: {clip_norm!r} (must be > 0 or None)")
        if not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be >= 0)")
        self.steps_per_stage, self.momentum, self.nesterov = steps_per_stage, momentum, nesterov
        self.schedule, self.clip_norm = schedule, clip_norm
        self.momentum_masking, self.weight_decay, self.exact = momentum_masking, weight_decay, exact
        self.compressor = SampledTopK(1 - schedule[0], sample_ratio=sample_ratio, seed=seed)
        self.step = 0
        self.momenta: dict[str, Tensor] = {}
        self.velocities: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"DGC(steps_per_stage={self.steps_per_stage}, momentum={self.momentum}, "
            f"nesterov={self.nesterov}, sparsity_schedule={self.schedule}, "
            f"clip_norm={self.clip_norm}, momentum_masking={self.momentum_masking}, "
            f"weight_decay={self.weight_decay}, exact={self.exact})"
        )

    def sparsity_at(self, step: int) -> float:
        return sparsity_at(step, self.steps_per_stage, self.schedule)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity_at(self.step)

    def _local_gradient(self, grad: Tensor, param: Tensor | None) -> Tensor:
        grad = grad.clone()
        if self.weight_decay and param is not None:
            grad.add_(param, alpha=self.weight_decay)
        if self.clip_norm is not None:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            limit = self.clip_norm / math.sqrt(world)
            norm = float(grad.norm())
            if norm > limit:
                grad.mul_(limit / norm)
        return grad

    def encode(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Compressed:
        grad = self._local_gradient(tensor, param).reshape(-1)
        u = self.momenta.setdefault(key, torch.zeros_like(grad))
        v = self.velocities.setdefault(key, torch.zeros_like(grad))
        if self.nesterov:
            u.add_(grad).mul_(self.momentum)
            v.add_(u).add_(grad)
        else:
            u.mul_(self.momentum).add_(grad)
            v.add_(u)
        self.compressor.ratio = self.density
        k = self.compressor.count(v.numel())
        if self.exact:
            chosen = torch.topk(v.abs(), k, sorted=False).indices
        else:
            chosen = self.compressor.select(v)
        values = torch.zeros(k, dtype=v.dtype, device=v.device)
        indices = torch.zeros(k, dtype=_index_dtype(v.numel()), device=v.device)
        values[: chosen.numel()] = v[chosen]
        indices[: chosen.numel()] = chosen
        v[chosen] = 0
        if self.momentum_masking:
            u[chosen] = 0
        return Compressed(
            (values, indices), tensor.shape, tensor.dtype, {"selected": chosen.numel()}
        )

    def prepare_dense(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Tensor:
        return self._local_gradient(tensor, param)

    def finish_dense(self, key: str, mean: Tensor) -> Tensor:
        u = self.momenta.setdefault(key, torch.zeros_like(mean))
        u.mul_(self.momentum).add_(mean)
        return mean + self.momentum * u if self.nesterov else u.clone()

    def end_step(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "compressor": self.compressor.state_dict(),
            "momenta": _tensor_map_state(self.momenta),
            "velocities": _tensor_map_state(self.velocities),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.compressor.load_state_dict(state["compressor"])
        self.momenta = _tensor_map_state(state["momenta"])
        self.velocities = _tensor_map_state(state["velocities"])


def register_dgc_hook(
    ddp_model: nn.parallel.DistributedDataParallel, codec: DGC, **options: Any
) -> CompressionHookState:
    """Register :func:`~gradkit.distributed.hooks.compression_hook` with a :class:`DGC` codec.

    Train with plain ``torch.optim.SGD(params, lr)`` (no momentum, no weight decay): DGC's
    momentum correction already happened in the hook.
    """
    if not isinstance(codec, DGC):
        raise ValueError(f"Invalid codec: {codec!r} (expected gradkit.distributed.DGC)")
    return register_compression_hook(ddp_model, codec, **options)
