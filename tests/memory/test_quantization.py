"""Block-wise dynamic quantization and bf16 stochastic rounding (gradkit.memory.quantization)."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.memory.quantization import (
    CodeMap,
    code_map,
    dequantize_blockwise,
    dynamic_map,
    max_abs_error_bound,
    q8_bytes,
    quantize_blockwise,
    quantize_blockwise_reference,
    stochastic_round_bf16,
)


def _bnb_functional():
    try:
        import bitsandbytes.functional as bnb_f
    except Exception as e:  # any import failure means "not usable here"
        pytest.skip(f"bitsandbytes is not importable on this machine: {type(e).__name__}: {e}")
    return bnb_f


def _samples(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, generator=g)
    if kind == "student_t3":  # heavy tails: t with 3 degrees of freedom
        z = torch.randn(n, generator=g)
        chi2 = torch.randn(3, n, generator=g).square().sum(0)
        return z / (chi2 / 3).sqrt()
    if kind == "cauchy":
        u = torch.rand(n, generator=g, dtype=torch.float64)
        return torch.tan(math.pi * (u - 0.5)).float()
    if kind == "tiny":
        return torch.randn(n, generator=g) * 1e-30
    raise ValueError(kind)


@pytest.mark.parametrize("signed", [True, False])
def test_maps_have_256_sorted_entries_with_zero_and_one(signed):
    m = dynamic_map(signed)
    assert m.numel() == 256 and m.dtype == torch.float32
    assert bool((m[1:] > m[:-1]).all())
    assert 0.0 in m.tolist() and 1.0 in m.tolist()
    if signed:
        assert -1.0 in m.tolist() and float(m.min()) == -1.0
    else:
        assert float(m.min()) == 0.0


def test_maps_match_bitsandbytes_up_to_the_documented_entry():
    bnb_f = _bnb_functional()
    assert torch.equal(dynamic_map(False), bnb_f.create_dynamic_map(signed=False))
    ours, theirs = set(dynamic_map(True).tolist()), set(bnb_f.create_dynamic_map(True).tolist())
    # we swap bitsandbytes' smallest negative code for -1 (so a negative block max is exact)
    assert ours - theirs == {-1.0}
    (dropped,) = theirs - ours
    assert dropped < 0 and abs(dropped) == min(abs(v) for v in theirs if v != 0)


@pytest.mark.parametrize("kind", ["normal", "student_t3", "cauchy", "tiny"])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block_size", [64, 256, 2048])
def test_fast_path_equals_bucketize_reference(kind, signed, block_size):
    x = _samples(kind, 10_000 + 37, seed=block_size)  # a partial last block
    x[:block_size] = 0.0  # an all-zero block
    if not signed:
        x = x.abs()
        x[block_size + 1 : block_size + 3] = torch.tensor([-0.0, -1e-12])  # rounding noise
    cm = code_map(signed)
    codes, absmax = quantize_blockwise(x, cm, block_size)
    ref_codes, ref_absmax = quantize_blockwise_reference(x, cm, block_size)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(absmax, ref_absmax)


@pytest.mark.parametrize("kind", ["normal", "student_t3", "cauchy"])
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_within_the_code_map_bound(kind, signed):
    x = _samples(kind, 64 * 256 + 100, seed=1).view(-1, 2)  # any shape
    if not signed:
        x = x.abs()
    cm = code_map(signed)
    codes, absmax = quantize_blockwise(x, cm)
    y = dequantize_blockwise(codes, absmax, cm)
    assert y.shape == x.shape and codes.shape == x.shape
    err = (y - x).abs().reshape(-1)
    scale = absmax.repeat_interleave(256)[: err.numel()]
    # half the largest code gap times the block max, plus fp32 rounding of code * absmax
    bound = max_abs_error_bound(cm) * scale + 2 * torch.finfo(torch.float32).eps * x.abs().view(-1)
    assert bool((err <= bound).all())
    # the block maximum itself is stored exactly (codes hold +1 and, signed, -1)
    flat = x.reshape(-1)[: 256 * 64].view(64, 256)
    top = flat.abs().argmax(1)
    assert torch.equal(y.reshape(-1)[: 256 * 64].view(64, 256).gather(1, top[:, None]),
                       flat.gather(1, top[:, None]))  # fmt: skip


def test_never_worse_than_bitsandbytes_with_its_own_map():
    bnb_f = _bnb_functional()
    bnb_map = bnb_f.create_dynamic_map(signed=True)
    cm = CodeMap(bnb_map)
    x = _samples("student_t3", 256 * 40, seed=3)
    ours, absmax = quantize_blockwise(x, cm)
    try:
        theirs, qstate = bnb_f.quantize_blockwise(x, code=bnb_map, blocksize=256)
    except Exception as e:
        pytest.skip(f"bitsandbytes blockwise quantization does not run on CPU here: {e}")
    assert torch.equal(absmax, qstate.absmax)
    scaled = x.view(-1, 256) / absmax[:, None]
    our_err = (bnb_map[ours.long()].view(-1, 256) - scaled).abs()
    their_err = (bnb_map[theirs.long()].view(-1, 256) - scaled).abs()
    assert bool((our_err <= their_err + 1e-7).all())  # nearest code: never a worse choice
    assert (ours == theirs).float().mean() > 0.9  # and mostly the very same codes


def test_nonfinite_values_make_their_block_nonfinite():
    x = torch.randn(512)
    x[3] = float("nan")
    cm = code_map(True)
    y = dequantize_blockwise(*quantize_blockwise(x, cm), cm)
    assert not torch.isfinite(y[:256]).any() and torch.isfinite(y[256:]).all()


def test_sizes_and_bad_block_size():
    assert q8_bytes(4096) == 4096 + 4 * 16 and q8_bytes(300) == 300 + 4 * 2
    with pytest.raises(ValueError, match="Invalid block_size: 0"):
        quantize_blockwise(torch.ones(3), code_map(True), 0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bf16_stochastic_rounding_is_unbiased(sign):
    # 1 + 3 * 2**-10 lies between bf16 neighbours 1 and 1 + 2**-7, at p = 3/8 of the gap
    value = sign * (1.0 + 3 * 2**-10)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    out = stochastic_round_bf16(torch.full((n,), value), g).double()
    low, high = sign * 1.0, sign * (1.0 + 2**-7)
    assert set(out.unique().tolist()) <= {low, high}
    p = 3 / 8
    sigma = abs(high - low) * math.sqrt(p * (1 - p) / n)
    assert abs(out.mean().item() - value) < 5 * sigma
    nearest = torch.tensor(value).to(torch.bfloat16).double().item()
    assert abs(nearest - value) > 50 * sigma  # round-to-nearest would fail this test


def test_bf16_stochastic_rounding_keeps_exact_and_nonfinite_values():
    x = torch.tensor([1.0, -2.5, 0.0, float("inf"), float("-inf"), float("nan")])
    out = stochastic_round_bf16(x, torch.Generator().manual_seed(1)).float()
    assert out[:5].tolist() == x[:5].tolist() and math.isnan(out[5].item())


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("numel", [1, 255, 256, 1000, 70_001])
def test_native_codec_is_bit_identical_to_the_torch_path(signed, numel, monkeypatch):
    from gradkit import _native
    from gradkit.memory import quantization as q

    if not _native.available():
        pytest.skip("native kernels unavailable (no C compiler)")
    g = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=g) * 3 if signed else torch.rand(numel, generator=g)
    x[::7] = 0.0
    if numel > 300:
        x[300:556] = 0.0  # an all-zero block (scale falls back to 1)
    cm = q.code_map(signed)
    results = []
    for native in (True, False):
        monkeypatch.setattr(q, "use_native", native)
        codes, absmax = q.quantize_blockwise(x, cm, 256)
        results.append((codes, absmax, q.dequantize_blockwise(codes, absmax, cm, 256)))
    for fast, slow in zip(*results, strict=True):
        assert torch.equal(fast, slow)


@pytest.mark.parametrize("block", [16, 100, 2048])
@pytest.mark.parametrize("signed", [True, False])
def test_native_codec_matches_on_nonfinite_blocks_and_odd_block_sizes(block, signed, monkeypatch):
    """NaN, +-inf, -0.0 and block sizes that are not a multiple of the 16-wide vector path: the
    native (vectorized) encoder and decoder give the torch path's bits."""
    from gradkit import _native
    from gradkit.memory import quantization as q

    if not _native.available():
        pytest.skip("native kernels unavailable (no C compiler)")
    g = torch.Generator().manual_seed(block)
    x = torch.randn(5 * block + 7, generator=g)
    x = x if signed else x.abs()
    x[3] = float("nan")  # block 0: NaN maximum
    x[block + 1] = float("inf")  # block 1: inf maximum
    if signed:
        x[2 * block + 2] = float("-inf")
        x[3 * block : 3 * block + 5] = -0.0
    cm = q.code_map(signed)
    results = []
    for native in (True, False):
        monkeypatch.setattr(q, "use_native", native)
        codes, absmax = q.quantize_blockwise(x, cm, block)
        results.append((codes, absmax, q.dequantize_blockwise(codes, absmax, cm, block)))
    for fast, slow in zip(*results, strict=True):
        assert torch.equal(fast, slow) or (
            fast.dtype.is_floating_point and torch.equal(fast.nan_to_num(7.0), slow.nan_to_num(7.0))
        )
    assert math.isnan(results[0][1][0].item()) and results[0][1][1].item() == math.inf


@pytest.mark.parametrize("signed", [True, False])
def test_native_encoder_at_every_decision_boundary(signed, monkeypatch):
    """Every midpoint of the map, its float neighbours on both sides, and every code value, in
    blocks whose maximum is 1 (so y = x exactly): the native encoder's search, the torch path's
    lookup table and torch.bucketize agree on each (a tie goes to the lower code)."""
    from gradkit import _native
    from gradkit.memory import quantization as q

    if not _native.available():
        pytest.skip("native kernels unavailable (no C compiler)")
    cm = q.code_map(signed)
    mids = cm.midpoints
    points = torch.cat(
        [
            mids,
            torch.nextafter(mids, torch.full_like(mids, 2.0)),
            torch.nextafter(mids, torch.full_like(mids, -2.0)),
            cm.values,
            torch.tensor([0.0, -0.0, 1e-38, -1e-38, 1e-45]),
        ]
    ).clamp(-1.0 if signed else 0.0, 1.0)
    block = 64  # 63 points and a 1.0 per block
    rows = points.split(block - 1)
    x = torch.cat([torch.cat([r, torch.ones(block - 1 - r.numel() + 1)]) for r in rows])
    expected = torch.bucketize(x, mids, right=False).to(torch.uint8)
    for native in (True, False):
        monkeypatch.setattr(q, "use_native", native)
        codes, absmax = q.quantize_blockwise(x, cm, block)
        assert torch.equal(absmax, torch.ones_like(absmax))
        assert torch.equal(codes.view(-1)[: x.numel()], expected), f"native={native}"
