"""Average a list of tensors over ranks through a codec; shared by the DDP hooks and DiLoCo.

Dense tensors are summed with one all-reduce of their concatenation. Compressed tensors are
encoded by the codec; messages of all-reduce-compatible compressors (same positions on every
rank) are summed with one all-reduce, all others are serialized into one uint8 buffer and
exchanged with one all-gather (every rank's message has the same layout, so the receiver splits
the buffer with its own message as the template). Collectives are launched asynchronously;
``PendingExchange.wait()`` completes them, so DiLoCo can overlap them with inner steps.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from gradkit.distributed.accounting import CommunicationCounters
from gradkit.distributed.compressors import Compressed, GradientCodec

__all__ = ["CommunicationError", "ExchangeItem", "PendingExchange", "start_exchange"]


class CommunicationError(RuntimeError):
    """A collective failed or timed out (a peer died or hangs)."""


@dataclass
class ExchangeItem:
    key: str
    tensor: Tensor
    param: Tensor | None = None
    compress: bool = True


def _nbytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _all_gather(output: Tensor, data: Tensor, group) -> dist.Work:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(output, data, group=group, async_op=True)


def _describe(what: str, group, timeout: float | None) -> str:
    rank = dist.get_rank(group)
    limit = f"{timeout} s" if timeout is not None else "the process group's timeout"
    return (
        f"gradkit.distributed: {what} failed on rank {rank} of "
        f"{dist.get_world_size(group)} (limit {limit}); a peer has probably died or hangs"
    )


class PendingExchange:
    """Collectives in flight; ``wait()`` returns the averaged tensors in item order."""

    def __init__(self, codec, items, group, timeout, dense, messages, works, buffers) -> None:
        self.codec, self.items, self.group, self.timeout = codec, items, group, timeout
        self.dense, self.messages, self.works = dense, messages, works
        self.works_buffers = buffers
        self._result: list[Tensor] | None = None

    def _wait_all(self) -> None:
        limit = None if self.timeout is None else datetime.timedelta(seconds=self.timeout)
        for what, work in self.works.items():
            if work is None:
                continue
            try:
                work.wait() if limit is None else work.wait(limit)
            except Exception as error:  # the backend's own error type varies (gloo, nccl)
                raise CommunicationError(
                    f"{_describe(what, self.group, self.timeout)}: {error}"
                ) from error

    def wait(self) -> list[Tensor]:
        if self._result is not None:
            return self._result
        self._wait_all()
        world = dist.get_world_size(self.group)
        out: dict[int, Tensor] = {}
        self._finish_dense(world, out)
        if self.messages:
            if self.codec.compressor.allreduce_compatible:
                self._finish_summed(world, out)
            else:
                self._finish_gathered(world, out)
        self._result = [out[i] for i in range(len(self.items))]
        return self._result

    def _finish_dense(self, world: int, out: dict[int, Tensor]) -> None:
        positions, buffer = self.dense
        offset = 0
        for i in positions:
            item = self.items[i]
            numel = item.tensor.numel()
            mean = buffer[offset : offset + numel].view(item.tensor.shape) / world
            offset += numel
            out[i] = self.codec.finish_dense(item.key, mean)

    def _finish_summed(self, world: int, out: dict[int, Tensor]) -> None:
        buffer = self.works_buffers["summed"]
        offset = 0
        for i, message in self.messages:
            parts = []
            for t in message.tensors:
                parts.append(buffer[offset : offset + t.numel()].view(t.shape))
                offset += t.numel()
            mean = self.codec.compressor.decompress(message.with_tensors(tuple(parts))) / world
            out[i] = self.codec.finish(self.items[i].key, mean)

    def _finish_gathered(self, world: int, out: dict[int, Tensor]) -> None:
        gathered = self.works_buffers["gathered"].view(world, -1)
        sums: dict[int, Tensor] = {}
        for rank in range(world):
            offset = 0
            for i, message in self.messages:
                parts = []
                for t in message.tensors:
                    size = t.numel() * t.element_size()
                    raw = gathered[rank, offset : offset + size].clone()
                    parts.append(raw.view(t.dtype).view(t.shape))
                    offset += size
                decoded = self.codec.compressor.decompress(message.with_tensors(tuple(parts)))
                sums[i] = decoded if rank == 0 else sums[i] + decoded
        for i, _ in self.messages:
            out[i] = self.codec.finish(self.items[i].key, sums[i] / world)


def start_exchange(
    codec: GradientCodec,
    items: Sequence[ExchangeItem],
    *,
    group: dist.ProcessGroup | None = None,
    counters: CommunicationCounters | None = None,
    timeout: float | None = None,
    count_dense_baseline: bool = True,
) -> PendingExchange:
    """Encode ``items`` and launch the collectives; counts bytes into ``counters`` (and, with
    ``count_dense_baseline``, the items' dense size as the baseline)."""
    world = dist.get_world_size(group)
    ring = 2 * (world - 1) / world
    works: dict[str, dist.Work | None] = {}
    buffers: dict[str, Tensor] = {}

    dense_positions = [i for i, item in enumerate(items) if not item.compress]
    dense_parts = [
        codec.prepare_dense(items[i].key, items[i].tensor, items[i].param).reshape(-1)
        for i in dense_positions
    ]
    dense_buffer = torch.cat(dense_parts) if dense_parts else None
    messages: list[tuple[int, Compressed]] = [
        (i, codec.encode(item.key, item.tensor, item.param))
        for i, item in enumerate(items)
        if item.compress
    ]
    try:
        if dense_buffer is not None:
            works["dense all-reduce"] = dist.all_reduce(dense_buffer, group=group, async_op=True)
        if messages and codec.compressor.allreduce_compatible:
            buffers["summed"] = torch.cat([t.reshape(-1) for _, m in messages for t in m.tensors])
            works["compressed all-reduce"] = dist.all_reduce(
                buffers["summed"], group=group, async_op=True
            )
        elif messages:
            data = torch.cat(
                [
                    t.reshape(-1).contiguous().view(torch.uint8)
                    for _, m in messages
                    for t in m.tensors
                ]
            )
            buffers["gathered"] = torch.empty(
                world * data.numel(), dtype=torch.uint8, device=data.device
            )
            buffers["sent"] = data
            works["compressed all-gather"] = _all_gather(buffers["gathered"], data, group)
    except Exception as error:
        raise CommunicationError(
            f"{_describe('launching a collective', group, timeout)}: {error}"
        ) from error

    if counters is not None:
        dense_equivalent = _nbytes([item.tensor for item in items])
        if dense_buffer is not None:
            counters.add(_nbytes([dense_buffer]), wire=ring * _nbytes([dense_buffer]))
        if "summed" in buffers:
            counters.add(_nbytes([buffers["summed"]]), wire=ring * _nbytes([buffers["summed"]]))
        if "sent" in buffers:
            counters.add(_nbytes([buffers["sent"]]), wire=(world - 1) * _nbytes([buffers["sent"]]))
        if count_dense_baseline:
            counters.add(0, dense_equivalent, wire=0.0)

    return PendingExchange(
        codec, items, group, timeout, (dense_positions, dense_buffer), messages, works, buffers
    )
