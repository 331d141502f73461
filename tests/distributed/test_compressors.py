"""Compressors and error feedback on one process: invariants, exact byte counts, round trips."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradkit.distributed import (
    EF21,
    FP4E3M0,
    QSGD,
    ChunkTopK,
    ErrorFeedback,
    NoCompression,
    NoFeedback,
    RandomK,
    SampledTopK,
    ScaledSign,
    TopK,
    as_codec,
)
from gradkit.distributed.compressors import pack_bits, unpack_bits

SPARSIFIERS = {
    "topk": lambda: TopK(0.1),
    "sampled_topk": lambda: SampledTopK(0.05, sample_ratio=0.2),
    "randomk": lambda: RandomK(0.2, seed=3),
    "chunk_topk": lambda: ChunkTopK(chunk_size=16, k=3),
    "none": NoCompression,
}
QUANTIZERS = {
    "sign": ScaledSign,
    "qsgd2": lambda: QSGD(bits=2, bucket_size=32),
    "qsgd4": lambda: QSGD(bits=4),
    "qsgd8": lambda: QSGD(bits=8, bucket_size=64),
    "chunk_topk_2bit": lambda: ChunkTopK(chunk_size=16, k=4, value_bits=2),
    "fp4": FP4E3M0,
    "fp4_stochastic": lambda: FP4E3M0(block_size=32, stochastic=True),
}
ALL = {**SPARSIFIERS, **QUANTIZERS}


def _grads(seed: int, shape=(13, 11), steps: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g) * 10 ** float(torch.randint(-3, 3, (1,), generator=g))
        for _ in range(steps)
    ]


@pytest.mark.parametrize("name", sorted(SPARSIFIERS))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), cols=st.integers(1, 9))
def test_error_feedback_is_exact_for_sparsifiers(name, seed, rows, cols):
    codec = ErrorFeedback(SPARSIFIERS[name]())
    residual = torch.zeros(rows, cols)
    for grad in _grads(seed, (rows, cols)):
        message = codec.encode("w", grad)
        sent = codec.compressor.decompress(message)
        assert torch.equal(sent + codec.residuals["w"], residual + grad)
        residual = codec.residuals["w"]


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_error_feedback_for_quantizers_up_to_one_rounding(name):
    codec = ErrorFeedback(QUANTIZERS[name]())
    residual = torch.zeros(13, 11)
    for grad in _grads(7):
        sent = codec.compressor.decompress(codec.encode("w", grad))
        total = residual + grad
        # one float32 subtraction (p - C(p)) is rounded: allow one ulp of the larger operand
        ulp = torch.finfo(torch.float32).eps * torch.maximum(total.abs(), sent.abs())
        assert ((sent + codec.residuals["w"]) - total).abs().le(ulp).all()
        assert not torch.equal(sent, total)  # the quantizer really dropped something
        residual = codec.residuals["w"]


def test_error_feedback_decay_scales_the_old_residual():
    codec = ErrorFeedback(TopK(0.1), decay=0.5)
    first, second = _grads(1, steps=2)
    codec.encode("w", first)
    old = codec.residuals["w"].clone()
    sent = codec.compressor.decompress(codec.encode("w", second))
    assert torch.equal(sent + codec.residuals["w"], old * 0.5 + second)


def _expected_bytes(name: str, numel: int) -> int:
    return {
        "topk": math.ceil(0.1 * numel) * (4 + 4),
        "sampled_topk": math.ceil(0.05 * numel) * (4 + 4),
        "randomk": math.ceil(0.2 * numel) * 4,
        "chunk_topk": math.ceil(numel / 16) * 3 * (4 + 2),
        "none": numel * 4,
        "sign": math.ceil(numel / 8) + 4,
        "qsgd2": math.ceil(numel * 2 / 8) + 4 * math.ceil(numel / 32),
        "qsgd4": math.ceil(numel * 4 / 8) + 4 * math.ceil(numel / 512),
        "qsgd8": numel + 4 * math.ceil(numel / 64),
        "fp4": math.ceil(numel / 2) + 4 * math.ceil(numel / 128),
        "fp4_stochastic": math.ceil(numel / 2) + 4 * math.ceil(numel / 32),
        "chunk_topk_2bit": math.ceil(math.ceil(numel / 16) * 4 * 2 / 8)
        + 4 * 4
        + math.ceil(numel / 16) * 4 * 2,
    }[name]


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("shape", [(300,), (64, 33), (5, 7, 9)])
def test_reported_bytes_are_the_bytes_of_the_payload_and_match_the_format(name, shape):
    message = ALL[name]().compress(torch.randn(shape))
    assert message.nbytes == sum(t.numel() * t.element_size() for t in message.tensors)
    assert message.nbytes == _expected_bytes(name, math.prod(shape))


@pytest.mark.parametrize("name", sorted(ALL))
def test_decompress_restores_shape_and_dtype(name):
    x = torch.randn(6, 50)
    compressor = ALL[name]()
    y = compressor.decompress(compressor.compress(x))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_topk_keeps_exactly_the_largest_magnitudes():
    x = torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2, 0.0, 2.0, -1.0, 0.5, 0.05])
    y = TopK(0.3).decompress(TopK(0.3).compress(x))
    assert torch.equal(y, torch.tensor([0, -5.0, 0, 4.0, 0, 0, 2.0, 0, 0, 0]))


def test_sampled_topk_selects_about_k_of_the_largest():
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    compressor = SampledTopK(0.01)
    message = compressor.compress(x)
    k = math.ceil(0.01 * x.numel())
    assert 0.8 * k <= message.context["selected"] <= k
    kept = compressor.decompress(message)
    threshold = x.abs().topk(k).values.min()
    # a sampled threshold: everything kept is large (>= half the exact k-th magnitude)
    assert kept[kept != 0].abs().min() >= 0.5 * threshold


def test_randomk_positions_are_shared_between_identically_seeded_ranks():
    a, b = RandomK(0.1, seed=5), RandomK(0.1, seed=5)
    for _ in range(3):
        ma, mb = a.compress(torch.randn(100)), b.compress(torch.randn(100))
        assert torch.equal(ma.context["indices"], mb.context["indices"])


def test_randomk_unbiased_scaling_is_unbiased():
    x = torch.randn(50)
    compressor = RandomK(0.2, seed=0, unbiased=True)
    mean = sum(compressor.decompress(compressor.compress(x)) for _ in range(2000)) / 2000
    torch.testing.assert_close(mean, x, atol=0.5, rtol=0)


def test_scaled_sign_is_l1_mean_times_sign():
    x = torch.tensor([[1.0, -2.0], [0.0, -5.0]])
    y = ScaledSign().decompress(ScaledSign().compress(x))
    assert torch.equal(y, torch.tensor([[2.0, -2.0], [2.0, -2.0]]))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_is_unbiased_and_levels_are_on_the_grid(bits):
    x = torch.randn(40, generator=torch.Generator().manual_seed(1))
    compressor = QSGD(bits=bits, bucket_size=16)
    draws = torch.stack([compressor.decompress(compressor.compress(x)) for _ in range(3000)])
    torch.testing.assert_close(draws.mean(0), x, atol=0.12, rtol=0)
    norms = torch.cat([x[i : i + 16].norm().repeat(min(16, 40 - i)) for i in range(0, 40, 16)])
    levels = draws[0] / norms * compressor.levels
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


def test_chunk_topk_keeps_k_per_chunk_and_is_lossless_when_k_is_the_chunk():
    x = torch.randn(10, 7)
    kept = ChunkTopK(chunk_size=8, k=2).decompress(ChunkTopK(chunk_size=8, k=2).compress(x))
    flat = torch.cat([kept.reshape(-1), torch.zeros(2)]).view(-1, 8)
    assert ((flat != 0).sum(1) <= 2).all()
    full = ChunkTopK(chunk_size=8, k=8)
    assert torch.equal(full.decompress(full.compress(x)), x)


def test_chunk_topk_two_bit_values_use_four_levels():
    compressor = ChunkTopK(chunk_size=64, k=16, value_bits=2)
    y = compressor.decompress(compressor.compress(torch.randn(256)))
    assert len(torch.unique(y[y != 0])) <= 4


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), codes=st.lists(st.integers(0, 255), max_size=50))
def test_pack_unpack_round_trip(bits, codes):
    values = torch.tensor(codes, dtype=torch.int64) % (1 << bits)
    packed = pack_bits(values, bits)
    assert packed.numel() == math.ceil(len(codes) * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, len(codes)), values)


def test_ef21_estimates_move_by_exactly_what_was_sent():
    codec = EF21(TopK(0.2))
    estimate = torch.zeros(12, 5)
    for grad in _grads(3, (12, 5)):
        sent = codec.compressor.decompress(codec.encode("w", grad))
        assert torch.equal(codec.local["w"], estimate + sent)
        assert torch.equal(codec.finish("w", sent), codec.shared["w"])  # one worker: g = g_1
        estimate = codec.local["w"]
    assert torch.equal(codec.local["w"], codec.shared["w"])


def test_ef21_with_identity_compressor_returns_the_gradient():
    codec = EF21(NoCompression())
    for grad in _grads(4):
        sent = codec.compressor.decompress(codec.encode("w", grad))
        torch.testing.assert_close(codec.finish("w", sent), grad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ErrorFeedback(SampledTopK(0.1)),
        lambda: EF21(QSGD(4)),
        lambda: NoFeedback(RandomK(0.1)),
    ],
)
def test_codec_state_dict_round_trip_continues_identically(make):
    grads = _grads(5, (40, 40), steps=6)
    reference, resumed = make(), make()
    for grad in grads[:3]:
        reference.finish("w", reference.compressor.decompress(reference.encode("w", grad)))
    resumed.load_state_dict(reference.state_dict())
    for grad in grads[3:]:
        a, b = reference.encode("w", grad), resumed.encode("w", grad)
        assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TopK(0.0), "Invalid ratio: 0.0"),
        (lambda: TopK(1.5), "Invalid ratio: 1.5"),
        (lambda: QSGD(bits=3), "Invalid bits: 3"),
        (lambda: QSGD(bucket_size=0), "bucket_size"),
        (lambda: ChunkTopK(chunk_size=8, k=9), "Invalid k: 9"),
        (lambda: ChunkTopK(value_bits=3), "value_bits"),
        (lambda: RandomK(0.1, seed=-1), "seed"),
        (lambda: ErrorFeedback(TopK(0.1), decay=2.0), "Invalid decay"),
        (lambda: as_codec("topk"), "Invalid codec"),
    ],
)
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_fp4_e3m0_represents_signed_powers_of_two_of_the_block_scale_exactly():
    scale = 3.0
    exact = torch.tensor([scale, -scale / 2, scale / 4, 0.0, -scale / 64, scale / 8, 0.0, 0.0])
    compressor = FP4E3M0(block_size=8)
    assert torch.equal(compressor.decompress(compressor.compress(exact)), exact)


def test_fp4_e3m0_rounds_to_the_nearest_level():
    compressor = FP4E3M0(block_size=4)
    x = torch.tensor([1.0, 0.74, 0.76, -0.3])  # levels ... 0.25, 0.5, 1: 0.74 -> 0.5, 0.76 -> 1
    y = compressor.decompress(compressor.compress(x))
    assert torch.equal(y, torch.tensor([1.0, 0.5, 1.0, -0.25]))
    # below the smallest level 2^-6: nearest of {0, 2^-6}
    tiny = compressor.decompress(compressor.compress(torch.tensor([1.0, 0.003, 0.012, 0.0])))
    assert torch.equal(tiny, torch.tensor([1.0, 0.0, 2.0**-6, 0.0]))


def test_fp4_e3m0_error_is_at_most_a_third_of_each_entry_above_the_smallest_level():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    compressor = FP4E3M0()
    y = compressor.decompress(compressor.compress(x))
    scales = x.view(-1, 128).abs().amax(1).repeat_interleave(128)
    above = x.abs() >= scales * 2.0**-6
    assert ((y - x).abs()[above] <= x.abs()[above] / 3 + 1e-7).all()
    assert (torch.sign(y[y != 0]) == torch.sign(x[y != 0])).all()


def test_fp4_e3m0_stochastic_rounding_is_unbiased_and_resumable():
    x = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 0.3
    compressor = FP4E3M0(block_size=64, stochastic=True, seed=1)
    draws = torch.stack([compressor.decompress(compressor.compress(x)) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), x, atol=0.02, rtol=0)
    saved = compressor.state_dict()
    first = compressor.compress(x).tensors[0].clone()
    compressor.load_state_dict(saved)
    assert torch.equal(compressor.compress(x).tensors[0], first)


def test_fp4_e3m0_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Invalid block_size: 0"):
        FP4E3M0(block_size=0)
    with pytest.raises(ValueError, match="Invalid stochastic"):
        FP4E3M0(stochastic=1)
