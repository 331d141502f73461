"""A DDP communication hook that compresses gradients through any codec (with error feedback).

Register it with ``DistributedDataParallel.register_comm_hook`` (or
:func:`register_compression_hook`). For each bucket it takes every parameter's gradient, sends
the ones ``compress_filter(name, param)`` selects (default: matrices, ``dim() > 1``) through the
codec — one all-gather of the serialized messages, or one all-reduce for all-reduce-compatible
compressors — and all-reduces the rest densely; then it writes the averages back into the bucket.
State (residuals, momenta, counters) is keyed by parameter *name*, not bucket index (DDP rebuilds
buckets after the first iteration), and is saved with ``state_dict()``. As in PyTorch's own
``PowerSGDState`` (pytorch#75666), a hook can be registered once per DDP instance: to resume,
build a new DDP model, a new state, call ``state.load_state_dict(saved)``, register.

The collectives run synchronously inside the hook (no overlap with the rest of backward); that
keeps the hook simple and backend-agnostic (gloo on CPU, nccl on GPU).

Example (needs a process group, so not run here)::

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = register_compression_hook(ddp, ErrorFeedback(TopK(0.01)))
    ...  # train; state.counters.compression_ratio
    torch.save({"model": ddp.state_dict(), "hook": state.state_dict()}, path)
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradkit.distributed._exchange import ExchangeItem, start_exchange
from gradkit.distributed.accounting import CommunicationCounters
from gradkit.distributed.compressors import Compressor, GradientCodec, as_codec

__all__ = [
    "CompressionHookState",
    "compress_matrices",
    "compression_hook",
    "register_compression_hook",
]

CompressFilter = Callable[[str, Tensor], bool]


def compress_matrices(name: str, param: Tensor) -> bool:
    """Default filter: compress tensors with ``dim() > 1``; biases and norms go dense."""
    del name
    return param.dim() > 1


class CompressionHookState:
    """State of :func:`compression_hook`: the codec, the parameter names, byte counters.

    Args:
        model: the DDP model (or its module) whose parameters the buckets hold.
        codec: a :class:`~gradkit.distributed.compressors.GradientCodec`, a bare compressor
            (no feedback) or None (dense all-reduce: equals plain DDP).
        process_group: defaults to the DDP model's group (else the default group).
        compress_filter: ``(name, param) -> bool``; default :func:`compress_matrices`.
        timeout: seconds to wait for each collective before raising
            :class:`~gradkit.distributed.CommunicationError` (None: the process group's timeout).
    """

    def __init__(
        self,
        model: nn.Module,
        codec: GradientCodec | Compressor | None = None,
        *,
        process_group: dist.ProcessGroup | None = None,
        compress_filter: CompressFilter = compress_matrices,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"Invalid timeout: {timeout!r} (must be > 0 seconds or None)")
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if process_group is None:
            process_group = getattr(model, "process_group", None)
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.codec = as_codec(codec)
        self.process_group = process_group
        self.compress_filter = compress_filter
        self.timeout = timeout
        self.counters = CommunicationCounters()
        self.step = 0

    def name_of(self, param: Tensor) -> str:
        try:
            return self.names[id(param)]
        except KeyError:
            raise ValueError(
                "Invalid bucket: it holds a parameter that is not in the model the "
                "hook state was built from"
            ) from None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "codec": self.codec.state_dict(),
            "counters": self.counters.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.codec.load_state_dict(state["codec"])
        self.counters.load_state_dict(state["counters"])

    def __getstate__(self) -> dict[str, Any]:
        # process groups do not pickle (pytorch#75666); resume with load_state_dict instead
        return {**self.__dict__, "process_group": None}


def compression_hook(
    state: "CompressionHookState", bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average the bucket's gradients through ``state.codec``."""
    params, grads = bucket.parameters(), bucket.gradients()
    items = []
    for param, grad in zip(params, grads, strict=True):
        name = state.name_of(param)
        items.append(ExchangeItem(name, grad, param.detach(), state.compress_filter(name, param)))
    averaged = start_exchange(
        state.codec,
        items,
        group=state.process_group,
        counters=state.counters,
        timeout=state.timeout,
    ).wait()
    buffer = bucket.buffer()
    offset = 0
    for grad, mean in zip(grads, averaged, strict=True):
        buffer[offset : offset + grad.numel()].copy_(mean.reshape(-1))
        offset += grad.numel()
    if bucket.is_last():
        state.counters.end_step()
        state.codec.end_step()
        state.step += 1
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


def register_compression_hook(
    ddp_model: nn.parallel.DistributedDataParallel,
    codec: GradientCodec | Compressor | None = None,
    **options: Any,
) -> CompressionHookState:
    """Build a :class:`CompressionHookState` for ``ddp_model`` and register the hook on it."""
    if not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
        raise ValueError(
            f"Invalid ddp_model: {type(ddp_model).__name__} (expected "
            "torch.nn.parallel.DistributedDataParallel)"
        )
    state = CompressionHookState(ddp_model, codec, **options)
    ddp_model.register_comm_hook(state, compression_hook)
    return state
