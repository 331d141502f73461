"""DGC's codec on one process against a float64 reference written from the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.distributed import DGC, PAPER_SPARSITY_SCHEDULE, sparsity_at


def _reference_dgc(
    grads,
    *,
    momentum,
    densities,
    nesterov=False,
    masking=True,
    clip=None,
    weight=None,
    weight_decay=0.0,
):
    """Lin et al. 2018, Alg. 4 + Sec. 3.3, in float64 with explicit loops over entries."""
    n = grads[0].numel()
    u, v = [0.0] * n, [0.0] * n
    sent_all = []
    for grad, density in zip(grads, densities, strict=True):
        g = [float(x) for x in grad.reshape(-1)]
        if weight_decay:
            g = [gi + weight_decay * float(w) for gi, w in zip(g, weight.reshape(-1), strict=True)]
        if clip is not None:
            norm = math.sqrt(sum(x * x for x in g))
            if norm > clip:
                g = [x * clip / norm for x in g]
        for i in range(n):
            if nesterov:
                u[i] = (u[i] + g[i]) * momentum
                v[i] = v[i] + u[i] + g[i]
            else:
                u[i] = momentum * u[i] + g[i]  # momentum correction
                v[i] = v[i] + u[i]  # local accumulation
        k = max(1, math.ceil(n * density))
        chosen = sorted(range(n), key=lambda i: -abs(v[i]))[:k]
        sent = [0.0] * n
        for i in chosen:
            sent[i] = v[i]
            v[i] = 0.0  # clear what was sent
            if masking:
                u[i] = 0.0  # momentum factor masking
        sent_all.append(torch.tensor(sent, dtype=torch.float64))
    return sent_all, torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)


def _grads(steps=6, shape=(7, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)]


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("masking", [True, False])
def test_momentum_correction_accumulation_and_masking_match_the_paper(nesterov, masking):
    grads = _grads()
    codec = DGC(
        steps_per_stage=2,
        sparsity_schedule=(0.75, 0.9, 0.95),
        momentum=0.9,
        nesterov=nesterov,
        momentum_masking=masking,
        exact=True,
    )
    densities = [1 - codec.sparsity_at(step) for step in range(len(grads))]
    expected, u, v = _reference_dgc(
        grads, momentum=0.9, densities=densities, nesterov=nesterov, masking=masking
    )
    for grad, want in zip(grads, expected, strict=True):
        message = codec.encode("w", grad)
        got = codec.compressor.decompress(message)
        codec.end_step()
        torch.testing.assert_close(got.reshape(-1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(codec.momenta["w"], u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(codec.velocities["w"], v, rtol=1e-12, atol=1e-12)


def test_local_clipping_and_weight_decay_before_accumulation():
    grads = _grads(steps=4)
    weight = torch.randn(7, 9, dtype=torch.float64)
    codec = DGC(
        steps_per_stage=0, sparsity_schedule=(0.9,), clip_norm=1.5, weight_decay=0.1, exact=True
    )
    expected, u, _ = _reference_dgc(
        grads, momentum=0.9, densities=[0.1] * 4, clip=1.5, weight=weight, weight_decay=0.1
    )
    for grad, want in zip(grads, expected, strict=True):
        got = codec.compressor.decompress(codec.encode("w", grad, weight))
        torch.testing.assert_close(got.reshape(-1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(codec.momenta["w"], u, rtol=1e-12, atol=1e-12)


def test_nothing_is_lost_sent_plus_velocity_is_the_sum_of_momenta():
    """Without masking, everything accumulated is either sent or still in v (EF invariant)."""
    grads = _grads(steps=5, shape=(30, 10))
    codec = DGC(steps_per_stage=0, sparsity_schedule=(0.99,), momentum_masking=False, exact=True)
    total_sent = torch.zeros(300, dtype=torch.float64)
    total_u = torch.zeros(300, dtype=torch.float64)
    u = torch.zeros(300, dtype=torch.float64)
    for grad in grads:
        total_sent += codec.compressor.decompress(codec.encode("w", grad)).reshape(-1)
        u = 0.9 * u + grad.reshape(-1)
        total_u += u
    torch.testing.assert_close(total_sent + codec.velocities["w"], total_u)


def test_dense_tensors_get_ordinary_momentum_after_averaging():
    codec = DGC(steps_per_stage=1)
    u = torch.zeros(4, dtype=torch.float64)
    for mean in _grads(steps=3, shape=(4,)):
        u = 0.9 * u + mean
        torch.testing.assert_close(codec.finish_dense("b", mean), u)


def test_paper_warmup_schedule_and_sampled_selection_sizes():
    assert [sparsity_at(s, 10, PAPER_SPARSITY_SCHEDULE) for s in (0, 9, 10, 25, 35, 45, 10**6)] == [
        0.75,
        0.75,
        0.9375,
        0.984375,
        0.996,
        0.999,
        0.999,
    ]
    codec = DGC(steps_per_stage=1, seed=1)
    grad = torch.randn(100, 100, generator=torch.Generator().manual_seed(2))
    for step in range(6):
        message = codec.encode("w", grad)
        k = math.ceil(grad.numel() * (1 - codec.sparsity_at(step)))
        assert message.tensors[0].numel() == k and message.tensors[1].dtype == torch.int32
        assert message.nbytes == k * 8
        assert 0 < message.context["selected"] <= k
        codec.end_step()
    assert codec.density == pytest.approx(0.001)


def test_state_dict_round_trip():
    grads = _grads(steps=6, shape=(40, 30))
    a, b = DGC(steps_per_stage=2), DGC(steps_per_stage=2)
    for grad in grads[:3]:
        a.encode("w", grad)
        a.end_step()
    b.load_state_dict(a.state_dict())
    for grad in grads[3:]:
        ma, mb = a.encode("w", grad), b.encode("w", grad)
        a.end_step()
        b.end_step()
        assert all(torch.equal(x, y) for x, y in zip(ma.tensors, mb.tensors, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps_per_stage": -1}, "steps_per_stage"),
        ({"steps_per_stage": 1, "momentum": 1.0}, "momentum"),
        ({"steps_per_stage": 1, "sparsity_schedule": (1.0,)}, "sparsity_schedule"),
        ({"steps_per_stage": 1, "clip_norm": 0.0}, "clip_norm"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DGC(**kwargs)
