r"""Gradient compressors, and error feedback (EF, EF21) that wraps any of them.

A :class:`Compressor` turns a tensor into a :class:`Compressed` message: the tuple of tensors that
actually goes on the wire, plus local-only context (shape, shared random indices) that is never
sent. ``Compressed.nbytes`` is the exact number of bytes of the tensors sent, so accounting is
read off the message itself, not estimated. Payload shapes depend only on ``(numel, dtype)``,
so every rank's message has the same layout and messages can be exchanged with one all-gather.

A :class:`GradientCodec` is what communication code (DDP hooks, DiLoCo outer loops) talks to: it
owns per-tensor state keyed by parameter name and decides what the compressor sees:

- :class:`NoFeedback` — send :math:`C(g)`, forget what was dropped.
- :class:`ErrorFeedback` — classic EF (Seide et al. 2014, 1-bit SGD; Karimireddy, Rebjock,
  Stich & Jaggi, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML
  2019, arXiv:1901.09847): :math:`p = \beta e + g,\; \text{send } C(p),\; e \leftarrow p - C(p)`
  (``decay`` :math:`\beta = 1` is classic EF; SparseLoCo uses :math:`\beta < 1`).
- :class:`EF21` — Richtárik, Sokolov & Fatkhullin, "EF21: A New, Simpler, Theoretically Better,
  and Practically Faster Error Feedback", NeurIPS 2021, arXiv:2106.05203: each worker keeps an
  estimate :math:`g_i`, sends :math:`c_i = C(\nabla f_i - g_i)`, sets :math:`g_i \leftarrow g_i +
  c_i`; every rank keeps the average :math:`g \leftarrow g + \frac1W\sum_i c_i` and uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "EF21",
    "ChunkTopK",
    "Compressed",
    "Compressor",
    "ErrorFeedback",
    "FP4E3M0",
    "GradientCodec",
    "NoCompression",
    "NoFeedback",
    "QSGD",
    "RandomK",
    "SampledTopK",
    "ScaledSign",
    "TopK",
    "as_codec",
    "pack_bits",
    "unpack_bits",
]


@dataclass
class Compressed:
    """One tensor's message: ``tensors`` go on the wire; ``context`` stays local."""

    tensors: tuple[Tensor, ...]
    shape: torch.Size
    dtype: torch.dtype
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the tensors sent."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def with_tensors(self, tensors: tuple[Tensor, ...]) -> Compressed:
        """Another rank's message, with this rank's layout and local context."""
        return Compressed(tensors, self.shape, self.dtype, self.context)


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"Invalid ratio: {ratio!r} (must be in (0, 1])")
    return float(ratio)


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` (``bits`` in 1, 2, 4, 8) into a uint8 tensor."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"Invalid bits: {bits!r} (choose one of 1, 2, 4, 8)")
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes
    per_byte = 8 // bits
    padded = torch.zeros(
        math.ceil(codes.numel() / per_byte) * per_byte, dtype=torch.uint8, device=codes.device
    )
    padded[: codes.numel()] = codes
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (padded.view(-1, per_byte) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes, as int64."""
    if bits == 8:
        return packed[:count].long()
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.view(-1, 1) >> shifts) & mask).reshape(-1)[:count].long()


class Compressor:
    """Base class: ``compress(tensor) -> Compressed`` and ``decompress(msg) -> Tensor``.

    ``allreduce_compatible`` compressors send a payload that is the same linear function of the
    input on every rank (same positions), so their messages can be summed with all-reduce.
    """

    allreduce_compatible = False

    def compress(self, tensor: Tensor) -> Compressed:
        raise NotImplementedError

    def decompress(self, message: Compressed) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


class _Seeded(Compressor):
    """A compressor with a private random stream; ``seed`` + the rank when ``per_rank``."""

    per_rank = True

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Invalid seed: {seed!r} (must be an integer >= 0)")
        self.seed = seed
        self._generator: torch.Generator | None = None

    def generator(self) -> torch.Generator:
        if self._generator is None:
            rank = 0
            if self.per_rank and torch.distributed.is_available():
                rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._generator = torch.Generator().manual_seed(self.seed + 1_000_003 * rank)
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator().get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator().set_state(state["generator"])


class NoCompression(Compressor):
    """Send the tensor as is (the dense baseline)."""

    allreduce_compatible = True

    def compress(self, tensor: Tensor) -> Compressed:
        return Compressed((tensor.reshape(-1).clone(),), tensor.shape, tensor.dtype)

    def decompress(self, message: Compressed) -> Tensor:
        return message.tensors[0].reshape(message.shape).to(message.dtype)


def _scatter(message: Compressed, values: Tensor, indices: Tensor) -> Tensor:
    out = torch.zeros(math.prod(message.shape), dtype=message.dtype, device=values.device)
    out.index_put_((indices.long(),), values.to(message.dtype), accumulate=True)
    return out.reshape(message.shape)


class TopK(Compressor):
    """Exact Top-K by magnitude: ``k = ceil(ratio * numel)`` values (native dtype) + int32
    indices."""

    def __init__(self, ratio: float) -> None:
        self.ratio = _check_ratio(ratio)

    def _config(self) -> dict[str, Any]:
        return {"ratio": self.ratio}

    def count(self, numel: int) -> int:
        return max(1, math.ceil(numel * self.ratio))

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1)
        indices = torch.topk(flat.abs(), self.count(flat.numel()), sorted=False).indices
        return Compressed(
            (flat[indices].clone(), indices.to(_index_dtype(flat.numel()))),
            tensor.shape,
            tensor.dtype,
        )

    def decompress(self, message: Compressed) -> Tensor:
        return _scatter(message, *message.tensors)


class SampledTopK(_Seeded, TopK):
    """Top-K with DGC's sampled threshold (Lin et al., ICLR 2018, arXiv:1712.01887; official
    code https://github.com/synxlin/deep-gradient-compression, ``dgc/compression.py``).

    The threshold is the k-th largest magnitude among a strided sample (``sample_ratio`` of the
    entries, at least ``ceil(2/ratio)``, random start); if more than ``upper`` x k entries pass,
    take the exact top-k among them; if fewer than ``lower`` x k, lower the threshold by the
    factor ``lower`` (up to ``max_iters`` times). Like the official code, a selection longer than
    k is cut to its first k indices (by position). A selection shorter than k is padded with
    (index 0, value 0) so every rank sends the same size — the padding is sent and counted.
    """

    def __init__(
        self,
        ratio: float,
        sample_ratio: float = 0.01,
        upper: float = 1.3,
        lower: float = 0.8,
        max_iters: int = 10,
        seed: int = 0,
    ) -> None:
        TopK.__init__(self, ratio)
        _Seeded.__init__(self, seed)
        self.sample_ratio = min(max(_check_ratio(sample_ratio), 0.01), 1.0)
        if not upper > 1:
            raise ValueError(f"Invalid upper: {upper!r} (must be > 1)")
        if not 0 < lower < 1:
            raise ValueError(f"Invalid lower: {lower!r} (must be in (0, 1))")
        self.upper, self.lower, self.max_iters = float(upper), float(lower), int(max_iters)

    def _config(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "sample_ratio": self.sample_ratio, "seed": self.seed}

    def _sample_plan(self, numel: int) -> tuple[int, int]:
        """(stride, samples), as in the official ``initialize``."""
        wanted = max(math.ceil(numel * self.sample_ratio), math.ceil(2 / self.ratio))
        if self.sample_ratio >= 1 or numel <= wanted:
            return 1, numel
        stride = math.ceil(numel / wanted / 32) * 32 + 1
        while numel // stride < wanted:
            stride -= 8
        return stride, numel // stride

    def select(self, tensor: Tensor) -> Tensor:
        """Indices of the selected entries (at most k, possibly fewer)."""
        importance = tensor.reshape(-1).abs()
        numel, k = importance.numel(), self.count(importance.numel())
        stride, num_samples = self._sample_plan(numel)
        if stride == 1:
            return torch.topk(importance, k, sorted=False).indices
        start = int(torch.randint(stride, (1,), generator=self.generator()))
        samples = importance[start::stride][:num_samples]
        top_samples = max(1, math.ceil(num_samples * self.ratio))
        threshold = torch.topk(samples, top_samples, sorted=False).values.min()
        indices = (importance >= threshold).nonzero().reshape(-1)
        for _ in range(self.max_iters):
            if indices.numel() > k * self.upper:
                chosen = torch.topk(importance[indices], k, sorted=False).indices
                indices = indices[chosen]
                break
            if indices.numel() >= k * self.lower:
                break
            threshold = threshold * self.lower
            indices = (importance >= threshold).nonzero().reshape(-1)
        return indices[:k]

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1)
        indices = self.select(flat)
        k = self.count(flat.numel())
        values = torch.zeros(k, dtype=flat.dtype, device=flat.device)
        padded = torch.zeros(k, dtype=_index_dtype(flat.numel()), device=flat.device)
        values[: indices.numel()] = flat[indices]
        padded[: indices.numel()] = indices
        return Compressed(
            (values, padded), tensor.shape, tensor.dtype, {"selected": indices.numel()}
        )


class RandomK(_Seeded):
    """Random-K: the same ``k`` random positions on every rank (shared ``seed``), so only the
    values are sent and messages can be all-reduced. ``unbiased=True`` scales by numel/k."""

    allreduce_compatible = True
    per_rank = False

    def __init__(self, ratio: float, seed: int = 0, unbiased: bool = False) -> None:
        super().__init__(seed)
        self.ratio = _check_ratio(ratio)
        self.unbiased = bool(unbiased)

    def _config(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "seed": self.seed, "unbiased": self.unbiased}

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1)
        k = max(1, math.ceil(flat.numel() * self.ratio))
        indices = torch.randperm(flat.numel(), generator=self.generator())[:k].to(flat.device)
        values = flat[indices].clone()
        if self.unbiased:
            values *= flat.numel() / k
        return Compressed((values,), tensor.shape, tensor.dtype, {"indices": indices})

    def decompress(self, message: Compressed) -> Tensor:
        return _scatter(message, message.tensors[0], message.context["indices"])


class ScaledSign(Compressor):
    r"""Scaled sign (Karimireddy et al. 2019): :math:`C(x) = \frac{\|x\|_1}{d}\,\mathrm{sign}(x)`.

    Sends 1 bit per entry (packed, zeros count as +) and one float32 scale.
    """

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1)
        scale = flat.abs().float().mean().reshape(1)
        return Compressed((pack_bits(flat >= 0, 1), scale), tensor.shape, tensor.dtype)

    def decompress(self, message: Compressed) -> Tensor:
        packed, scale = message.tensors
        signs = unpack_bits(packed, 1, math.prod(message.shape)).to(torch.float32) * 2 - 1
        return (signs * scale).to(message.dtype).reshape(message.shape)


class QSGD(_Seeded):
    r"""QSGD-style stochastic quantization (Alistarh, Grubic, Li, Tomioka & Vojnovic, "QSGD:
    Communication-Efficient SGD via Gradient Quantization and Encoding", NeurIPS 2017,
    arXiv:1610.02132), per bucket of ``bucket_size`` entries:

    .. math:: Q(v_i) = \|v\|_2\,\mathrm{sign}(v_i)\,\xi_i/s,\quad
              \xi_i = \lfloor s|v_i|/\|v\|_2 + u_i \rfloor,\; u_i \sim U[0, 1)

    with :math:`s = 2^{b-1}-1` levels; the signed level :math:`\pm\xi_i` is stored in ``bits``
    bits (``bits`` in 2, 4, 8; 2 bits is ternary). Sends the packed codes and one float32 norm
    per bucket. Unbiased. The paper's Elias coding is not used (fixed-width codes).
    """

    def __init__(self, bits: int = 4, bucket_size: int = 512, seed: int = 0) -> None:
        super().__init__(seed)
        if bits not in (2, 4, 8):
            raise ValueError(f"Invalid bits: {bits!r} (choose one of 2, 4, 8)")
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"Invalid bucket_size: {bucket_size!r} (must be an integer >= 1)")
        self.bits, self.bucket_size = bits, bucket_size
        self.levels = 2 ** (bits - 1) - 1

    def _config(self) -> dict[str, Any]:
        return {"bits": self.bits, "bucket_size": self.bucket_size, "seed": self.seed}

    def _buckets(self, flat: Tensor) -> Tensor:
        padded = torch.zeros(
            math.ceil(flat.numel() / self.bucket_size) * self.bucket_size,
            dtype=torch.float32,
            device=flat.device,
        )
        padded[: flat.numel()] = flat
        return padded.view(-1, self.bucket_size)

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1)
        buckets = self._buckets(flat)
        norms = buckets.norm(dim=1)
        scaled = buckets.abs() / norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        noise = torch.rand(buckets.shape, generator=self.generator()).to(flat.device)
        level = torch.floor(scaled * self.levels + noise).clamp_(max=self.levels)
        signed = torch.where(buckets < 0, -level, level).reshape(-1)[: flat.numel()]
        codes = (signed + self.levels).to(torch.uint8)
        return Compressed((pack_bits(codes, self.bits), norms), tensor.shape, tensor.dtype)

    def decompress(self, message: Compressed) -> Tensor:
        packed, norms = message.tensors
        numel = math.prod(message.shape)
        signed = unpack_bits(packed, self.bits, numel).to(torch.float32) - self.levels
        per_entry = norms.repeat_interleave(self.bucket_size)[:numel]
        return (signed * per_entry / self.levels).to(message.dtype).reshape(message.shape)


class FP4E3M0(Compressor):
    r"""4-bit floating point with 3 exponent bits and no mantissa (E3M0), the outer-gradient
    format of Streaming DiLoCo (Douillard et al., arXiv:2501.18512, section 2.3), with one
    float32 scale per block of ``block_size`` entries (as microscaling formats share a scale).

    Code = sign bit + 3-bit exponent index :math:`j`: :math:`j = 0` is zero and :math:`j \ge 1`
    is :math:`s\,2^{j-7}`, so a block holds magnitudes :math:`s\{2^{-6}, \dots, 2^{-1}, 1\}` with
    :math:`s` its absmax (the block's largest entry is exact). Each entry rounds to the nearest
    representable magnitude (ties and the gap below :math:`s\,2^{-6}` to nearest, in the
    linear domain), or, with ``stochastic=True``, to one of its two neighbours with the
    probabilities that make the code unbiased. Sends ``ceil(n / 2)`` bytes of codes and
    ``4 * ceil(n / block_size)`` bytes of scales.

    The paper does not specify the scaling granularity or rounding; the block scale and nearest
    rounding are our choices (torchft, the reference implementation, sends fp8/int8 instead).
    """

    MAX_EXPONENT = 7

    def __init__(self, block_size: int = 128, stochastic: bool = False, seed: int = 0) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"Invalid block_size: {block_size!r} (must be an integer >= 1)")
        if not isinstance(stochastic, bool):
            raise ValueError(f"Invalid stochastic: {stochastic!r} (expected True or False)")
        self.block_size, self.stochastic, self.seed = block_size, stochastic, seed
        self._generator = torch.Generator().manual_seed(seed)

    def _config(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "stochastic": self.stochastic}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._generator.set_state(state["generator"])

    def levels(self, device: torch.device | None = None) -> Tensor:
        """Representable magnitudes of a unit-scale block, code order: 0, 2^-6, ..., 1."""
        powers = torch.arange(1, self.MAX_EXPONENT + 1, dtype=torch.float32, device=device)
        return torch.cat([torch.zeros(1, device=device), torch.exp2(powers - self.MAX_EXPONENT)])

    def compress(self, tensor: Tensor) -> Compressed:
        flat = tensor.reshape(-1).float()
        n = flat.numel()
        padded = torch.zeros(math.ceil(n / self.block_size) * self.block_size, device=flat.device)
        padded[:n] = flat
        blocks = padded.view(-1, self.block_size)
        scales = blocks.abs().amax(dim=1)
        unit = (blocks.abs() / scales.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).view(-1)
        levels = self.levels(flat.device)
        upper = torch.searchsorted(levels, unit.clamp(max=1.0)).clamp_(1, self.MAX_EXPONENT)
        low, high = levels[upper - 1], levels[upper]
        frac = (unit - low) / (high - low)
        if self.stochastic:
            draw = torch.rand(unit.shape, generator=self._generator).to(flat.device)
            up = draw < frac
        else:
            up = frac >= 0.5
        index = torch.where(up, upper, upper - 1)
        sign = (padded < 0) & (index > 0)
        codes = (index + 8 * sign.long())[:n]
        return Compressed((pack_bits(codes, 4), scales), tensor.shape, tensor.dtype)

    def decompress(self, message: Compressed) -> Tensor:
        packed, scales = message.tensors
        n = math.prod(message.shape)
        codes = unpack_bits(packed, 4, n)
        magnitude = self.levels(packed.device)[codes % 8]
        per_entry = scales.repeat_interleave(self.block_size)[:n]
        values = torch.where(codes >= 8, -magnitude, magnitude) * per_entry
        return values.to(message.dtype).reshape(message.shape)


class ChunkTopK(Compressor):
    """Chunk-wise Top-K (SparseLoCo, Sarfi et al. 2025, arXiv:2508.15706; production code
    tplr-ai/templar ``src/tplr/compress.py``): the flattened tensor is cut into chunks of
    ``chunk_size`` entries (the last one zero-padded) and the ``k`` largest magnitudes of each
    chunk are kept, with int16 in-chunk indices (templar packs 12 bits; we send int16).

    ``value_bits`` (2, 4, 8 or None) quantizes the kept values as templar does: centre on their
    mean, bin width ``range_sigmas * std / 2**bits``, and send each bin's mean value as a float32
    lookup table. Deviation: templar chunks 2-D weights into 64x64 tiles; we chunk the
    flattened tensor (same chunk size, rows instead of tiles).
    """

    def __init__(
        self,
        chunk_size: int = 4096,
        k: int = 64,
        value_bits: int | None = None,
        range_sigmas: float = 6.0,
    ) -> None:
        if (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, int)
            or not (1 <= chunk_size <= 2**15)
        ):
            raise ValueError(f"Invalid chunk_size: {chunk_size!r} (must be in [1, 32768])")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= chunk_size:
            raise ValueError(f"Invalid k: {k!r} (must be an integer in [1, chunk_size])")
        if value_bits not in (None, 2, 4, 8):
            raise ValueError(f"Invalid value_bits: {value_bits!r} (choose None, 2, 4 or 8)")
        if not range_sigmas > 0:
            raise ValueError(f"Invalid range_sigmas: {range_sigmas!r} (must be > 0)")
        self.chunk_size, self.k, self.value_bits = chunk_size, k, value_bits
        self.range_sigmas = float(range_sigmas)

    def _config(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, "k": self.k, "value_bits": self.value_bits}

    def _chunks(self, flat: Tensor) -> Tensor:
        size = min(self.chunk_size, flat.numel())
        padded = torch.zeros(
            math.ceil(flat.numel() / size) * size, dtype=flat.dtype, device=flat.device
        )
        padded[: flat.numel()] = flat
        return padded.view(-1, size)

    def compress(self, tensor: Tensor) -> Compressed:
        chunks = self._chunks(tensor.reshape(-1))
        k = min(self.k, chunks.shape[1])
        indices = torch.topk(chunks.abs(), k, dim=1, sorted=False).indices
        values = chunks.gather(1, indices).reshape(-1)
        wire_indices = indices.to(torch.int16).reshape(-1)
        if self.value_bits is None:
            return Compressed((values, wire_indices), tensor.shape, tensor.dtype)
        codes, table = self._quantize(values.float())
        return Compressed(
            (pack_bits(codes, self.value_bits), table, wire_indices), tensor.shape, tensor.dtype
        )

    def _quantize(self, values: Tensor) -> tuple[Tensor, Tensor]:
        bins = 2**self.value_bits
        centre, spread = values.mean(), values.std(unbiased=False)
        width = (self.range_sigmas * spread / bins).clamp_min(torch.finfo(torch.float32).tiny)
        codes = (torch.floor((values - centre) / width) + bins // 2).clamp_(0, bins - 1).long()
        sums = torch.zeros(bins, device=values.device).index_add_(0, codes, values)
        counts = torch.zeros(bins, device=values.device).index_add_(
            0, codes, torch.ones_like(values)
        )
        fallback = centre + (torch.arange(bins, device=values.device) - bins // 2 + 0.5) * width
        table = torch.where(counts > 0, sums / counts.clamp_min(1), fallback)
        return codes, table

    def decompress(self, message: Compressed) -> Tensor:
        numel = math.prod(message.shape)
        size = min(self.chunk_size, numel)
        n_chunks = math.ceil(numel / size)
        indices = message.tensors[-1].long().view(n_chunks, -1)
        if self.value_bits is None:
            values = message.tensors[0]
        else:
            codes = unpack_bits(message.tensors[0], self.value_bits, indices.numel())
            values = message.tensors[1][codes]
        out = torch.zeros(n_chunks, size, dtype=message.dtype, device=indices.device)
        out.scatter_(1, indices, values.view(n_chunks, -1).to(message.dtype))
        return out.reshape(-1)[:numel].reshape(message.shape)


# --------------------------------------------------------------------------------------------
# Codecs: per-tensor state around a compressor
# --------------------------------------------------------------------------------------------


class GradientCodec:
    """What communication code talks to. Per-tensor state is keyed by parameter name.

    - ``encode(key, tensor, param)`` -> the message this rank sends for a compressed tensor;
    - ``finish(key, mean)`` -> the tensor to use, given the average of all ranks' decoded messages;
    - ``prepare_dense(key, tensor, param)`` / ``finish_dense(key, mean)`` for tensors sent dense;
    - ``end_step()`` once per synchronization; ``state_dict()`` / ``load_state_dict()``.
    """

    compressor: Compressor

    def encode(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Compressed:
        raise NotImplementedError

    def finish(self, key: str, mean: Tensor) -> Tensor:
        return mean

    def prepare_dense(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Tensor:
        return tensor

    def finish_dense(self, key: str, mean: Tensor) -> Tensor:
        return mean

    def end_step(self) -> None:
        """Called once after each synchronization."""

    def state_dict(self) -> dict[str, Any]:
        return {"compressor": self.compressor.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compressor.load_state_dict(state["compressor"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compressor!r})"


class NoFeedback(GradientCodec):
    """Send :math:`C(g)`; what the compressor drops is lost."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor

    def encode(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Compressed:
        return self.compressor.compress(tensor)


def _tensor_map_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in tensors.items()}


class ErrorFeedback(GradientCodec):
    r"""Error feedback: :math:`p = \beta e + g`, send :math:`C(p)`, keep :math:`e = p - C(p)`.

    ``decay`` :math:`\beta` = 1 is classic EF; so ``C(p) + e_new == e_old + g`` (exactly for
    sparsifiers, up to one rounding of the subtraction for quantizers).
    """

    def __init__(self, compressor: Compressor, decay: float = 1.0) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(f"Invalid decay: {decay!r} (must be in [0, 1])")
        self.compressor, self.decay = compressor, float(decay)
        self.residuals: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.compressor!r}, decay={self.decay})"

    def encode(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Compressed:
        residual = self.residuals.get(key)
        if residual is None:
            corrected = tensor.clone()
        elif self.decay == 1.0:
            corrected = residual + tensor
        else:
            corrected = residual * self.decay + tensor
        message = self.compressor.compress(corrected)
        self.residuals[key] = corrected - self.compressor.decompress(message)
        return message

    def state_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor.state_dict(),
            "residuals": _tensor_map_state(self.residuals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compressor.load_state_dict(state["compressor"])
        self.residuals = _tensor_map_state(state["residuals"])


class EF21(GradientCodec):
    r"""EF21: send :math:`C(\nabla f_i - g_i)`, :math:`g_i \mathrel{+}= C(\cdot)`, use
    :math:`g \mathrel{+}= \mathrm{mean}_i\, C(\cdot)` (identical on every rank)."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.local: dict[str, Tensor] = {}
        self.shared: dict[str, Tensor] = {}

    def encode(self, key: str, tensor: Tensor, param: Tensor | None = None) -> Compressed:
        estimate = self.local.get(key)
        difference = tensor.clone() if estimate is None else tensor - estimate
        message = self.compressor.compress(difference)
        sent = self.compressor.decompress(message)
        self.local[key] = sent if estimate is None else estimate + sent
        return message

    def finish(self, key: str, mean: Tensor) -> Tensor:
        shared = self.shared.get(key)
        self.shared[key] = mean.clone() if shared is None else shared + mean
        return self.shared[key].clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "compressor": self.compressor.state_dict(),
            "local": _tensor_map_state(self.local),
            "shared": _tensor_map_state(self.shared),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compressor.load_state_dict(state["compressor"])
        self.local = _tensor_map_state(state["local"])
        self.shared = _tensor_map_state(state["shared"])


def as_codec(codec: GradientCodec | Compressor | None) -> GradientCodec:
    """A codec from a codec, a bare compressor (no feedback) or None (dense)."""
    if codec is None:
        return NoFeedback(NoCompression())
    if isinstance(codec, GradientCodec):
        return codec
    if isinstance(codec, Compressor):
        return NoFeedback(codec)
    raise ValueError(f"Invalid codec: {codec!r} (expected a GradientCodec, Compressor or None)")
