r"""State storage policies: keep optimizer state in fp32, bf16 or block-wise 8-bit.

Every :class:`~gradkit.core.ChainOptimizer` (so every gradkit optimizer) takes
``state_dtype="fp32" | "bf16" | "q8"``, per optimizer or per param group. The policy is orthogonal
to the update rule: the chain always sees fp32 tensors. Inside ``step()`` each stored tensor is
decoded to an fp32 temporary, the unchanged chain updates it, and it is encoded again:

* ``"q8"``: block-wise dynamic quantization (:mod:`gradkit.memory.quantization`; Dettmers et
  al., ICLR 2022). ``optimizer.state[p][key]`` holds ``uint8`` codes (the state's shape) and
  ``optimizer.state[p][key + "::absmax:<s|u><block>"]`` the fp32 maximum of each block (``s`` /
  ``u``: signed or unsigned code map, then the block size), so a checkpoint describes itself.
  State a transform declares non-negative (``nonnegative_state``, e.g. Adam's ``exp_avg_sq``)
  uses the unsigned map, other state the signed one.
* ``"bf16"``: the state tensor is stored in bfloat16, written with unbiased stochastic rounding
  from the optimizer's ``storage_generator`` (seeded, saved in ``state_dict`` so a resumed run
  draws the same bits).

Only floating state with at least ``state_min_numel`` values (default 4,096, as bitsandbytes and
torchao) is compressed; smaller tensors, integer state, the ``step`` counter and state a transform
declares exact (``exact_state``) stay as they are. Group keys: ``state_block_size`` (256),
``state_min_numel`` (4096), ``state_chunk_numel`` (``2**20``; 0 turns chunking off) and
``stochastic_rounding`` (False; True writes bf16 *parameters* with stochastic rounding too).

**Chunks.** When every transform of the chain is ``per_parameter``, the step runs on chunks of
about ``state_chunk_numel`` parameter values (whole tensors), so the fp32 temporaries (decoded
state and the chain's own intermediates) exist for one chunk at a time and peak memory stays near
the compressed size. A chain with a cross-parameter transform (global-norm clipping) runs in one
piece; the result is the same either way.

**Checkpoints.** ``state_dict()`` holds the codes and block maxima themselves, never dequantized
floats, and resuming with the same policy is bit-exact. Loading a checkpoint written under another
policy converts it: the *loading* optimizer's ``state_dtype`` (and block size) win over the saved
group's, and every state tensor is re-encoded at load time (fp32 -> q8/bf16 rounds once;
q8/bf16 -> fp32 is exact).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gradkit.core.optimizer import restrict, restrict_state
from gradkit.core.transform import Segment
from gradkit.memory.quantization import (
    code_map,
    dequantize_blockwise,
    quantize_blockwise,
    stochastic_round_bf16,
)

if TYPE_CHECKING:
    from gradkit.core.optimizer import ChainOptimizer

Q8_TAG = "::absmax:"
STORAGE_DEFAULTS: dict[str, Any] = {
    "state_dtype": "fp32",
    "state_block_size": 256,
    "state_min_numel": 4096,
    "state_chunk_numel": 1 << 20,
    "stochastic_rounding": False,
}


@dataclass(frozen=True)
class Policy:
    dtype: str
    block_size: int
    min_numel: int


def policy_of(hp: Mapping[str, Any]) -> Policy:
    d = STORAGE_DEFAULTS
    return Policy(
        hp.get("state_dtype", d["state_dtype"]),
        int(hp.get("state_block_size", d["state_block_size"])),
        int(hp.get("state_min_numel", d["state_min_numel"])),
    )


# -- one state entry ------------------------------------------------------------------------
def is_meta_key(key: str) -> bool:
    return Q8_TAG in key


def q8_meta_key(key: str, kind: str, block_size: int) -> str:
    """Where the block maxima of q8 state ``key`` live: ``key::absmax:<s|u><block>``."""
    return f"{key}{Q8_TAG}{'u' if kind == 'unsigned' else 's'}{block_size}"


def q8_meta(entry: Mapping[str, Any], key: str) -> tuple[str, Tensor] | None:
    """``(meta_key, absmax)`` when ``entry[key]`` is stored quantized, else None."""
    prefix = key + Q8_TAG
    for k, v in entry.items():
        if k.startswith(prefix):
            return k, v
    return None


def decode(entry: Mapping[str, Any], key: str) -> Tensor:
    """The fp32 value of ``entry[key]``: the stored tensor itself when it is not compressed."""
    stored = entry[key]
    if stored.dtype == torch.uint8:
        meta = q8_meta(entry, key)
        if meta is not None:
            meta_key, absmax = meta
            tag = meta_key[len(key) + len(Q8_TAG) :]  # "s256": map kind, then block size
            return dequantize_blockwise(stored, absmax, code_map(tag[0] == "s"), int(tag[1:]))
    if stored.dtype == torch.bfloat16:
        return stored.float()
    return stored


def encode(
    entry: dict[str, Any],
    key: str,
    value: Tensor,
    policy: Policy,
    kind: str,
    generator: torch.Generator,
) -> None:
    """Store fp32 ``value`` under ``key`` according to ``policy`` (reusing buffers in place)."""
    stored = entry.get(key)
    meta = q8_meta(entry, key)
    mode = _mode(value, policy, kind)
    if mode == "q8":
        meta_key = q8_meta_key(key, kind, policy.block_size)
        codes = stored if _reusable(stored, value, torch.uint8) and meta else None
        absmax = meta[1] if meta is not None and meta[0] == meta_key else None
        codes, absmax = quantize_blockwise(
            value, code_map(kind != "unsigned"), policy.block_size, codes=codes, absmax=absmax
        )
        if meta is not None and meta[0] != meta_key:
            del entry[meta[0]]
        entry[key], entry[meta_key] = codes, absmax
        return
    if meta is not None:
        del entry[meta[0]]
    if mode == "bf16":
        target = stored if _reusable(stored, value, torch.bfloat16) else None
        entry[key] = stochastic_round_bf16(value, generator, out=target)
    elif stored is not value:
        entry[key] = value


def _mode(value: Tensor, policy: Policy, kind: str) -> str:
    if (
        policy.dtype == "fp32"
        or kind == "exact"
        or value.dtype != torch.float32
        or value.numel() < max(policy.min_numel, 1)
    ):
        return "fp32"
    return policy.dtype


def _reusable(stored: Any, value: Tensor, dtype: torch.dtype) -> bool:
    return isinstance(stored, Tensor) and stored.dtype == dtype and stored.shape == value.shape


def state_keys(entry: Mapping[str, Any]) -> list[str]:
    """The state names of one parameter (no ``step``, no block-maxima entries)."""
    return [k for k in entry if k != "step" and not is_meta_key(k)]


# -- the step -------------------------------------------------------------------------------
def update_with_storage(
    opt: ChainOptimizer,
    params: list[Tensor],
    grads: list[Tensor],
    segments: list[Segment],
    names: list[str | None],
) -> None:
    """``ChainOptimizer._update`` for groups whose state is (or may be) stored compressed."""
    segments = _fused_q8(opt, params, grads, segments)
    if not segments:
        return
    for chunk in _chunks(opt, params, segments):
        sub_params = [params[i] for i in chunk.index]
        sub_grads = [grads[i] for i in chunk.index]
        sub_names = [names[i] for i in chunk.index] if names else []
        work = [p.float() if p.dtype in _LOW else p for p in sub_params]
        sub_grads = [
            g if g.dtype == w.dtype else g.to(w.dtype) for g, w in zip(sub_grads, work, strict=True)
        ]
        opt._init_state(sub_params, work, chunk.segments)
        step_tensors = [opt.state[p]["step"] for p in sub_params]
        torch._foreach_add_(step_tensors, 1.0)
        state = _decode_all(opt, sub_params)
        rest = opt._fast_step(sub_params, work, sub_grads, chunk.segments, state)
        if len(rest) == len(chunk.segments):
            opt._run_chain(
                sub_params, work, sub_grads, chunk.segments, step_tensors, sub_names, state=state
            )
        elif rest:
            args = restrict(rest, sub_params, work, sub_grads, step_tensors, sub_names)
            opt._run_chain(*args, state=restrict_state(rest, state))
        _encode_all(opt, sub_params, state, chunk.segments)
        _write_params(opt, sub_params, work, chunk.segments)
        del state, work


_LOW = (torch.bfloat16, torch.float16)

use_fused_q8 = True
"""Run element-wise native kernels directly on 8-bit state (:func:`_fused_q8`); False decodes
whole tensors to fp32 first (tests compare the two: the results are bit-identical)."""

_FUSED_SLICE = 8192  # values per slice of the fused q8 step: 32 KB of fp32 per state buffer


def _fused_q8(
    opt: ChainOptimizer, params: list[Tensor], grads: list[Tensor], segments: list[Segment]
) -> list[Segment]:
    """Update the groups whose kernel is element-wise straight on their q8 state; return the
    others.

    Without it every step decodes each 8-bit state tensor to an fp32 temporary, runs the kernel
    over memory, and encodes it again: three passes and about 2.5x the bytes of the update itself.
    ``gk_q8_fused`` instead runs the kernel slice by slice, each slice's state decoded into a
    cache-sized buffer and encoded back at once (bit-identical results). It applies once the
    state exists in its stored form (from the second step on), to fp32 parameters on the CPU.
    """
    spec_of = getattr(opt, "elementwise_spec", None)
    if not use_fused_q8 or spec_of is None:
        return segments
    rest = []
    for seg in segments:
        done = False
        spec = spec_of(seg.hp)
        policy = policy_of(seg.hp)
        if spec is not None and policy.dtype == "q8":
            done = _run_fused_q8(opt, spec, params[seg.start : seg.stop],
                                 grads[seg.start : seg.stop], policy)  # fmt: skip
        if not done:
            rest.append(seg)
    return rest


def _run_fused_q8(opt, spec, params: list[Tensor], grads: list[Tensor], policy: Policy) -> bool:
    import ctypes

    from gradkit import _native

    if not params or params[0].dtype != torch.float32 or not _native.eligible([params, grads]):
        return False
    entries = [opt.state[p] for p in params]
    if not all(entries):  # first step: the state is created (fp32) and encoded by the slow path
        return False
    stored: list[Tensor] = []
    maxima: list[int] = []
    signed: list[int] = []
    for key in spec.state:
        kind = opt.transform.state_kind(key)
        meta_key = q8_meta_key(key, kind, policy.block_size)
        signed.append(int(kind != "unsigned"))
        for e in entries:
            value = e.get(key)
            if not isinstance(value, Tensor) or not value.is_contiguous():
                return False
            if value.dtype == torch.uint8:
                absmax = e.get(meta_key)
                if absmax is None or q8_meta(e, key)[0] != meta_key:  # type: ignore[index]
                    return False
                maxima.append(absmax.data_ptr())
            elif value.dtype == torch.float32 and _mode(value, policy, kind) == "fp32":
                maxima.append(0)  # kept fp32 (small tensor): the kernel reads it in place
            else:
                return False
            stored.append(value)
    kernel = _native.kernel(spec.kernel)
    fused = _native.function(
        "gk_q8_fused", [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4
        + [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int],
    )  # fmt: skip
    if fused is None or not kernel.ready(torch.float32):
        return False
    fused.restype = ctypes.c_int
    steps = [e["step"] for e in entries]
    torch._foreach_add_(steps, 1.0)
    maps = (code_map(False), code_map(True))
    table = torch.tensor([t.data_ptr() for t in [*params, *grads, *stored]], dtype=torch.int64)
    # every array the C side reads is bound to a name until the call returns
    numel = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    step_values = torch.stack(steps).to(torch.float64)
    hp = torch.tensor(spec.hp, dtype=torch.float64)
    absmax_table = torch.tensor(maxima, dtype=torch.int64)
    tables = torch.tensor([m.table.data_ptr() for m in maps], dtype=torch.int64)
    values = torch.tensor([m.values.data_ptr() for m in maps], dtype=torch.int64)
    signs = torch.tensor(signed, dtype=torch.int32)
    block = policy.block_size
    rc = fused(
        ctypes.cast(kernel._fn(torch.float32), ctypes.c_void_p).value,
        len(params), numel.data_ptr(), step_values.data_ptr(), table.data_ptr(), hp.data_ptr(),
        2 + len(spec.state), absmax_table.data_ptr(), tables.data_ptr(), values.data_ptr(),
        signs.data_ptr(), block, block * max(1, _FUSED_SLICE // block), torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        torch._foreach_add_(steps, -1.0)
        raise MemoryError("gradkit: no memory for the fused 8-bit step's per-thread buffers")
    return True


@dataclass
class _Chunk:
    index: list[int]
    segments: list[Segment]


def _chunks(opt: ChainOptimizer, params: list[Tensor], segments: list[Segment]) -> Iterator[_Chunk]:
    """Runs of whole tensors of about ``state_chunk_numel`` values (all at once when the chain
    reduces across parameters or chunking is off)."""
    limits = [
        int(seg.hp.get("state_chunk_numel", STORAGE_DEFAULTS["state_chunk_numel"]))
        for seg in segments
    ]
    if not opt.transform.per_parameter or min(limits, default=0) <= 0:
        yield _Chunk(list(range(len(params))), list(segments))
        return
    index: list[int] = []
    pieces: list[Segment] = []
    size = 0
    for seg, limit in zip(segments, limits, strict=True):
        start = len(index)
        for i in range(seg.start, seg.stop):
            index.append(i)
            size += params[i].numel()
            if size >= limit:
                yield _Chunk(index, [*pieces, Segment(start, len(index), seg.hp)])
                index, pieces, size, start = [], [], 0, 0
        if len(index) > start:
            pieces.append(Segment(start, len(index), seg.hp))
    if index:
        yield _Chunk(index, pieces)


def _decode_all(opt: ChainOptimizer, params: list[Tensor]) -> dict[str, list[Tensor]]:
    keys: dict[str, None] = {}
    for p in params:
        keys.update(dict.fromkeys(state_keys(opt.state[p])))
    return {
        k: [decode(opt.state[p], k) if k in opt.state[p] else None for p in params] for k in keys
    }  # type: ignore[misc]


def _encode_all(
    opt: ChainOptimizer,
    params: list[Tensor],
    state: dict[str, list[Tensor]],
    segments: list[Segment],
) -> None:
    generator = opt.storage_generator
    for seg in segments:
        policy = policy_of(seg.hp)
        for i in range(seg.start, seg.stop):
            entry = opt.state[params[i]]
            for key, values in state.items():
                if values[i] is not None:
                    kind = opt.transform.state_kind(key)
                    encode(entry, key, values[i], policy, kind, generator)


def _write_params(
    opt: ChainOptimizer, params: list[Tensor], work: list[Tensor], segments: list[Segment]
) -> None:
    for seg in segments:
        stochastic = bool(seg.hp.get("stochastic_rounding", False))
        for i in range(seg.start, seg.stop):
            p, w = params[i], work[i]
            if w is p:
                continue
            if stochastic and p.dtype == torch.bfloat16:
                stochastic_round_bf16(w, opt.storage_generator, out=p)
            else:
                p.copy_(w)


# -- outside the step -----------------------------------------------------------------------
def group_of(opt: ChainOptimizer, p: Tensor) -> Mapping[str, Any]:
    for group in opt.param_groups:
        if any(q is p for q in group["params"]):
            return group
    raise ValueError("Invalid parameter: not in this optimizer's param_groups")


def write_state(opt: ChainOptimizer, p: Tensor, key: str, value: Tensor) -> None:
    """Store fp32 ``value`` as ``opt.state[p][key]`` under ``p``'s group policy."""
    policy = policy_of(group_of(opt, p))
    kind = opt.transform.state_kind(key)
    encode(opt.state[p], key, value, policy, kind, opt.storage_generator)


def convert_all(opt: ChainOptimizer) -> None:
    """Re-encode every state tensor under its group's current policy (after loading)."""
    for group in opt.param_groups:
        policy = policy_of(group)
        for p in group["params"]:
            entry = opt.state.get(p)
            if not entry:
                continue
            for key in state_keys(entry):
                stored = entry[key]
                if not isinstance(stored, Tensor) or _matches(entry, key, policy, opt):
                    continue
                encode(
                    entry,
                    key,
                    decode(entry, key),
                    policy,
                    opt.transform.state_kind(key),
                    opt.storage_generator,
                )


def _matches(entry: Mapping[str, Any], key: str, policy: Policy, opt: ChainOptimizer) -> bool:
    """Whether ``entry[key]`` is already stored the way ``policy`` would store it."""
    stored = entry[key]
    meta = q8_meta(entry, key)
    kind = opt.transform.state_kind(key)
    value_dtype = (
        torch.float32 if (meta is not None or stored.dtype == torch.bfloat16) else stored.dtype
    )
    probe = torch.empty(stored.shape, dtype=value_dtype, device="meta")
    mode = _mode(probe, policy, kind)
    if mode == "q8":
        return meta is not None and meta[0] == q8_meta_key(key, kind, policy.block_size)
    if mode == "bf16":
        return stored.dtype == torch.bfloat16
    return meta is None and stored.dtype != torch.bfloat16


def has_compressed_state(opt: ChainOptimizer) -> bool:
    return any(
        any(is_meta_key(k) for k in entry)
        or any(isinstance(v, Tensor) and v.dtype == torch.bfloat16 for v in entry.values())
        for entry in opt.state.values()
    )
