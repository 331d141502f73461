r"""Block-wise dynamic 8-bit quantization and bf16 stochastic rounding, in plain torch.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
ICLR 2022, arXiv:2110.02861. Compared against bitsandbytes 0.50
(https://github.com/bitsandbytes-foundation/bitsandbytes, ``functional.create_dynamic_map`` and
the CPU ``quantize_blockwise`` / ``dequantize_blockwise`` kernels).

**Code maps.** The *dynamic* data type spends a variable number of bits on a decimal exponent:
for exponent level :math:`i = 0..6` the fraction range :math:`[0.1, 1]` is cut into
:math:`2^{i}` (signed) or :math:`2^{i+1}` (unsigned: the sign bit becomes a fraction bit) equal
bins, and the code values are the bin centres times :math:`10^{i-6}`; 0 and 1 complete the 256
entries. The values span :math:`10^{-7}` to 1 with fine steps near 1.

.. math::
    \text{codes}_i = \pm 10^{i-6}\,\Big(0.1 + \frac{0.9\,(k + \tfrac12)}{n_i}\Big),
    \quad k = 0..n_i-1

Deviation from bitsandbytes (signed map only): its map holds +1 but not -1 (it spans
:math:`[-0.993, 1]`), so a block whose largest-magnitude value is negative never stores that
value exactly. We replace its smallest negative code (:math:`-5.5\cdot10^{-7}`) by -1, so the
signed map holds 0 and :math:`\pm 1` and the block maximum is exact whatever its sign. The
unsigned map equals bitsandbytes' bit for bit.

**Block-wise quantization.** A tensor is flattened and cut into blocks of ``block_size`` values
(256 by default, as bitsandbytes since 0.44; the paper used 2048; the last block may be shorter).
Each block stores its absolute maximum :math:`N_b` in fp32 and, per value, the index of the
code nearest to :math:`x / N_b` as a ``uint8``; dequantization is :math:`\text{codes}[q]\,N_b`.
An all-zero block stores :math:`N_b = 0` and decodes to zeros.

**Rounding.** Nearest code; a value exactly halfway between two codes (the fp32 midpoint
``(a + b) / 2``) goes to the *lower* code, as ``torch.bucketize(x, midpoints)`` does. The error of
a value is therefore at most half the gap between the two codes around it, times :math:`N_b`.
NaN/inf make the block's :math:`N_b` non-finite, so the whole block decodes non-finite (nothing
is silently made finite).

**How it is fast on CPU without a kernel.** ``bucketize`` (a binary search, ~100 ns per value
here) is the readable reference (:func:`quantize_blockwise_reference`). The fast path maps the
fp32 bit pattern of :math:`x/N_b` to a monotone integer key, looks the top 17 bits up in a
131,072-entry table (built once per map) holding the code below and the single midpoint that may
fall inside that key range, and adds one for keys past the midpoint: ~10 elementwise torch ops
and one ``index_select``, equal to the reference bit for bit (tested).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch
from torch import Tensor

DEFAULT_BLOCK_SIZE = 256
_CELL_SHIFT = 15  # keys are bucketed by their top 32 - 15 = 17 bits
_LOW_MASK = (1 << _CELL_SHIFT) - 1
_CELL_MASK = (1 << (32 - _CELL_SHIFT)) - 1


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7) -> Tensor:
    """The 256-entry dynamic (exponent + fraction) code map, sorted ascending, fp32.

    ``signed=True`` for values of either sign (first moments), ``False`` for non-negative values
    (second moments). See the module docstring for the values and the one deviation from
    bitsandbytes.

    Example:
        >>> from gradkit.memory.quantization import dynamic_map
        >>> m = dynamic_map(signed=True)
        >>> len(m), float(m[0]), float(m[-1]), bool((m == 0).any())
        (256, -1.0, 1.0, True)
    """
    values: list[float] = []
    for i in range(max_exponent_bits):
        bins = 2**i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1.0, bins + 1, dtype=torch.float32)
        centres = ((edges[:-1] + edges[1:]) / 2.0) * 10.0 ** (i - (max_exponent_bits - 1))
        values += centres.tolist()
        if signed:
            values += (-centres).tolist()
    values += [0.0, 1.0]
    if signed:
        values.remove(min((v for v in values if v < 0), key=abs))
        values.append(-1.0)
    if len(values) != 256:
        raise ValueError(f"Invalid max_exponent_bits: {max_exponent_bits} (gives {len(values)})")
    return torch.tensor(sorted(values), dtype=torch.float32)


def _ordered_key(bits: Tensor) -> Tensor:
    """Map fp32 bit patterns (as int32) to int32 keys that sort like the floats (in place)."""
    flip = bits >> 31  # -1 for negative floats, 0 otherwise
    flip &= 0x7FFFFFFF
    bits ^= flip
    return bits


@dataclass(frozen=True)
class CodeMap:
    """A sorted 256-entry code map with its midpoints and the lookup table of the fast path."""

    values: Tensor
    midpoints: Tensor = field(init=False)
    signed: bool = field(init=False)
    table: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        values = self.values.to(torch.float32).contiguous()
        if values.numel() != 256 or not bool((values[1:] > values[:-1]).all()):
            raise ValueError("Invalid code map: need 256 strictly increasing values")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "midpoints", (values[:-1] + values[1:]) / 2.0)
        object.__setattr__(self, "signed", bool(values[0] < 0))
        object.__setattr__(self, "table", self._build_table())

    def _build_table(self) -> Tensor:
        """Per 17-bit key cell: ``(code_below << 16) + (65535 - threshold)`` (see module doc).

        ``threshold`` is the low 15 key bits of the cell's midpoint: keys whose low bits exceed
        it are past the midpoint and take the next code. A cell without a midpoint gets
        threshold ``_LOW_MASK`` (never exceeded).
        """
        cells = torch.arange(1 << (32 - _CELL_SHIFT), dtype=torch.int64)
        first_key = ((cells << _CELL_SHIFT) - (1 << 31)).to(torch.int32)  # signed order
        mid_keys = _ordered_key(self.midpoints.view(torch.int32).clone()).to(torch.int64)
        below = torch.bucketize(first_key.to(torch.int64), mid_keys, right=False)
        # a midpoint m inside [first_key, first_key + _LOW_MASK]: keys k > m go one code up
        inside = below < mid_keys.numel()
        nxt = mid_keys[below.clamp(max=mid_keys.numel() - 1)]
        offset = nxt - first_key.to(torch.int64)
        has_mid = inside & (offset <= _LOW_MASK)
        threshold = torch.where(has_mid, offset, torch.full_like(offset, _LOW_MASK))
        # two midpoints in one cell would need a finer table; the dynamic maps never do that
        if has_mid.any():
            nxt2 = mid_keys[(below + 1).clamp(max=mid_keys.numel() - 1)]
            two = has_mid & (below + 1 < mid_keys.numel()) & (nxt2 - first_key <= _LOW_MASK)
            if bool(two.any()):
                raise ValueError("Invalid code map: codes too close for the lookup table")
        entry = (below << 16) + (65535 - threshold)
        # store by the cell index the encoder computes: key >> shift, masked to 17 bits
        table = torch.empty_like(entry)
        index = ((first_key.to(torch.int64) >> _CELL_SHIFT) & _CELL_MASK).long()
        table[index] = entry
        return table.to(torch.int32)

    @property
    def max_gap(self) -> float:
        """Largest distance between adjacent codes (relative to the block's absmax)."""
        return float((self.values[1:] - self.values[:-1]).max())


_MAPS: dict[bool, CodeMap] = {}


def code_map(signed: bool) -> CodeMap:
    """The cached :class:`CodeMap` of :func:`dynamic_map` (``signed`` or unsigned)."""
    cm = _MAPS.get(signed)
    if cm is None:
        cm = _MAPS[signed] = CodeMap(dynamic_map(signed))
    return cm


def num_blocks(numel: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    return -(-numel // block_size)


TILE_NUMEL = 1 << 16
"""Values per piece in (de)quantization: temporaries of a piece stay in the CPU's L2 cache,
which makes the ~12 elementwise passes several times faster than over a whole tensor."""


def _blocks(flat: Tensor, block_size: int) -> list[Tensor]:
    """``flat`` as ``[rows, block_size]`` pieces of about ``TILE_NUMEL`` values plus a
    ``[1, rest]`` tail (views)."""
    full = flat.numel() // block_size
    rows = max(1, TILE_NUMEL // block_size)
    parts = [
        flat[r * block_size : min(r + rows, full) * block_size].view(-1, block_size)
        for r in range(0, full, rows)
    ]
    if flat.numel() > full * block_size:
        parts.append(flat[full * block_size :].view(1, -1))
    return parts


_WORKSPACE: dict[tuple[int, str], tuple[Tensor, Tensor, Tensor]] = {}


def _workspace(numel: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Reused fp32 / int32 / int32 buffers of at least ``numel`` values: allocating fresh
    temporaries per piece (page faults on every large malloc) cost more than the arithmetic."""
    key = (max(numel, TILE_NUMEL), str(device))
    ws = _WORKSPACE.get(key)
    if ws is None:
        n = key[0]
        ws = _WORKSPACE[key] = (
            torch.empty(n, device=device),
            torch.empty(n, dtype=torch.int32, device=device),
            torch.empty(n, dtype=torch.int32, device=device),
        )
    return ws


def _encode(x: Tensor, absmax: Tensor, codes: Tensor, cm: CodeMap) -> None:
    """Quantize the ``[blocks, size]`` view ``x`` into ``codes`` (same shape) and ``absmax``."""
    n = x.numel()
    y_buf, a_buf, b_buf = _workspace(n, x.device)
    y = y_buf[:n].view_as(x)
    torch.amax(torch.abs(x, out=y), dim=1, out=absmax)  # faster than aminmax on CPU
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    torch.div(x, scale.unsqueeze(1), out=y)
    keys = y.view(torch.int32)
    scratch = a_buf[:n].view_as(keys)
    if cm.signed:  # map float bits to integers that sort like the floats
        torch.bitwise_right_shift(keys, 31, out=scratch)  # -1 for negative floats
        scratch &= 0x7FFFFFFF
        keys ^= scratch
    # unsigned maps skip that: non-negative floats' bits already sort like them, and a negative
    # value (only -0.0 or rounding noise) lands in a cell that holds code 0 (0.0)
    torch.bitwise_right_shift(keys, _CELL_SHIFT, out=scratch)
    scratch &= _CELL_MASK
    entry = b_buf[:n]
    torch.index_select(cm.table, 0, scratch.view(-1), out=entry)
    keys &= _LOW_MASK
    entry += keys.view(-1)
    entry >>= 16
    codes.view(-1).copy_(entry)


use_native = True
"""Encode/decode with the native kernels (gradkit._native, bit-identical) where they apply;
False runs the torch path below (tests compare the two)."""


def _native_q8(
    direction: str, values: Tensor, codes: Tensor, absmax: Tensor, cm: CodeMap, block_size: int
) -> bool:
    """Run the native encoder/decoder on CPU, contiguous tensors; False where it can't."""
    if not use_native or values.device.type != "cpu" or not codes.is_contiguous():
        return False
    if not (values.is_contiguous() and absmax.is_contiguous()):
        return False
    from gradkit import _native

    c = ctypes
    if direction == "encode":
        fn = _native.function(
            "gk_q8_encode",
            [
                c.c_int64,
                c.c_void_p,
                c.c_void_p,
                c.c_void_p,
                c.c_void_p,
                c.c_int64,
                c.c_int,
                c.c_int,
            ],
        )
        if fn is None:
            return False
        fn(values.numel(), values.data_ptr(), codes.data_ptr(), absmax.data_ptr(),
           cm.table.data_ptr(), block_size, int(cm.signed), torch.get_num_threads())  # fmt: skip
        return True
    fn = _native.function(
        "gk_q8_decode",
        [c.c_int64, c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_int64, c.c_int],
    )
    if fn is None:
        return False
    fn(codes.numel(), codes.data_ptr(), absmax.data_ptr(), cm.values.data_ptr(),
       values.data_ptr(), block_size, torch.get_num_threads())  # fmt: skip
    return True


def quantize_blockwise(
    x: Tensor,
    cm: CodeMap,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    codes: Tensor | None = None,
    absmax: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Quantize ``x`` (any shape, fp32) to ``uint8`` codes of the same shape and fp32 block maxima.

    ``codes`` / ``absmax`` may be given to write in place (contiguous, right sizes).

    Example:
        >>> import torch
        >>> from gradkit.memory.quantization import code_map, quantize_blockwise
        >>> codes, absmax = quantize_blockwise(torch.tensor([0.5, -2.0, 0.0]), code_map(True))
        >>> codes.dtype, absmax.tolist()
        (torch.uint8, [2.0])
    """
    _check_block_size(block_size)
    x = x.detach().to(torch.float32).contiguous()
    if codes is None:
        codes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    if absmax is None:
        absmax = torch.empty(num_blocks(x.numel(), block_size), device=x.device)
    if _native_q8("encode", x, codes, absmax, cm, block_size):
        return codes, absmax
    flat_codes = codes.view(-1)
    start = 0
    parts = zip(_blocks(x.view(-1), block_size), _blocks(flat_codes, block_size), strict=True)
    for part, code_part in parts:
        rows = part.shape[0]
        _encode(part, absmax[start : start + rows], code_part, cm)
        start += rows
    return codes, absmax


def dequantize_blockwise(
    codes: Tensor,
    absmax: Tensor,
    cm: CodeMap,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """fp32 values of ``codes`` (``codes.shape``): ``cm.values[codes] * absmax[block]``."""
    _check_block_size(block_size)
    if out is None:
        out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
    if _native_q8("decode", out, codes, absmax, cm, block_size):
        return out
    flat_codes = codes.reshape(-1)
    start = 0
    for part, code_part in zip(
        _blocks(out.view(-1), block_size), _blocks(flat_codes, block_size), strict=True
    ):
        rows = part.shape[0]
        index = _workspace(part.numel(), part.device)[1][: part.numel()]
        index.copy_(code_part.reshape(-1))
        torch.index_select(cm.values, 0, index, out=part.view(-1))
        part.mul_(absmax[start : start + rows].unsqueeze(1))
        start += rows
    return out


def quantize_blockwise_reference(
    x: Tensor, cm: CodeMap, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[Tensor, Tensor]:
    """The readable version of :func:`quantize_blockwise` (``bucketize`` on the midpoints)."""
    flat = x.detach().to(torch.float32).reshape(-1)
    codes = torch.empty(flat.shape, dtype=torch.uint8)
    absmax = torch.empty(num_blocks(flat.numel(), block_size))
    for b, start in enumerate(range(0, flat.numel(), block_size)):
        block = flat[start : start + block_size]
        absmax[b] = block.abs().max()
        scale = absmax[b] if absmax[b] > 0 else torch.tensor(1.0)
        codes[start : start + block_size] = torch.bucketize(block / scale, cm.midpoints)
    return codes.view(x.shape), absmax


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"Invalid block_size: {block_size!r} (must be a positive integer)")


def q8_bytes(numel: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Bytes of one quantized tensor: one code per value plus one fp32 absmax per block."""
    return numel + 4 * num_blocks(numel, block_size)


# -- bf16 stochastic rounding ---------------------------------------------------------------
def stochastic_round_bf16(
    x: Tensor, generator: torch.Generator | None = None, *, out: Tensor | None = None
) -> Tensor:
    r"""Round fp32 ``x`` to bfloat16 stochastically (unbiased): :math:`E[\mathrm{sr}(x)] = x`.

    A bf16 value is the top 16 bits of an fp32 one. Adding a uniform random integer in
    :math:`[0, 2^{16})` to the fp32 bit pattern and truncating the low 16 bits rounds the
    magnitude up with probability (dropped bits) / :math:`2^{16}`, which makes the expected
    value exact (sign-magnitude format: the same holds for negative values). Non-finite values
    are rounded to nearest (they stay NaN / inf). The random integers come from ``generator``
    (CPU); pass a seeded one to make rounding reproducible.

    Example:
        >>> import torch
        >>> from gradkit.memory.quantization import stochastic_round_bf16
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.full((10000,), 1.0 + 2**-9)  # between bf16 neighbours 1 and 1 + 2**-7
        >>> round(float(stochastic_round_bf16(x, g).float().mean()), 3)
        1.002
    """
    x = x.detach().to(torch.float32).contiguous()
    # one 64-bit draw gives two 32-bit words whose low 16 bits are uniform (4x cheaper than
    # randint(0, 2**16) per value on CPU)
    words = torch.empty((x.numel() + 1) // 2, dtype=torch.int64)
    noise = words.random_(generator=generator).view(torch.int32)[: x.numel()].view(x.shape)
    noise &= 0xFFFF
    bits = x.view(torch.int32) + noise.to(x.device)
    bits >>= 16
    rounded = bits.to(torch.int16).view(torch.bfloat16)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        rounded = torch.where(finite, rounded, x.to(torch.bfloat16))
    if out is None:
        return rounded
    out.copy_(rounded)
    return out


def max_abs_error_bound(cm: CodeMap) -> float:
    """Half the largest gap between adjacent codes: the worst error relative to a block's absmax."""
    return cm.max_gap / 2.0


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "CodeMap",
    "code_map",
    "dequantize_blockwise",
    "dynamic_map",
    "max_abs_error_bound",
    "num_blocks",
    "q8_bytes",
    "quantize_blockwise",
    "quantize_blockwise_reference",
    "stochastic_round_bf16",
]
