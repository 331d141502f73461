"""normalize() and centralize(): float64 references, properties, composition."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.transforms.normalization import centralize, normalize
from reference import clipping_masking as ref

F64 = torch.float64


def run(t, updates):
    params = [torch.zeros_like(u) for u in updates]
    c = gradkit.chain(t)
    return c.update(updates, c.init(params), params)


def rand(shape, seed=0, dtype=F64, scale=1.0):
    return (
        torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)
        * scale
    )


@pytest.mark.parametrize("shape", [(5,), (4, 6), (3, 2, 3, 3), ()])
def test_normalize_and_centralize_match_reference(shape):
    g = rand(shape, seed=1, scale=3.0) + 0.5
    torch.testing.assert_close(
        run(normalize(1e-6), [g])[0], ref.normalize(g, 1e-6), rtol=1e-14, atol=1e-15
    )
    for conv_only in (False, True):
        torch.testing.assert_close(
            run(centralize(conv_only), [g])[0],
            ref.centralize(g, conv_only),
            rtol=1e-13,
            atol=1e-14,
        )


def test_centralize_only_touches_matrices_and_convs():
    v, m, c = rand((5,), 1) + 2, rand((4, 6), 2) + 2, rand((3, 2, 3, 3), 3) + 2
    out_v, out_m, out_c = run(centralize(), [v, m, c])
    assert torch.equal(out_v, v)
    assert out_m.mean(dim=1).abs().max() < 1e-14
    assert out_c.mean(dim=(1, 2, 3)).abs().max() < 1e-14
    out_v, out_m, out_c = run(centralize(conv_only=True), [v, m, c])
    assert torch.equal(out_m, m) and out_c.mean(dim=(1, 2, 3)).abs().max() < 1e-14


def test_centralized_sgd_keeps_row_sums_of_weights():
    """GC projects onto 1^T w = const: plain SGD + GC never changes a row's sum."""
    model = torch.nn.Linear(5, 3)
    opt = gradkit.optim.SGD(model.parameters(), lr=0.1, transforms=[centralize()])
    sums = model.weight.detach().sum(dim=1).clone()
    for step in range(4):
        model.zero_grad()
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(step))
        model(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(model.weight.detach().sum(dim=1), sums, rtol=0, atol=1e-5)
    assert not torch.equal(model.bias.detach(), torch.zeros(3))  # the bias still trains


def test_centralize_then_adam_chain_equals_hand_written():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    t = gradkit.chain(centralize(), gradkit.scale_by_adam(), gradkit.scale_by_lr(lr))
    p = [rand((3, 4), 5)]
    state = t.init(p)
    m = v = torch.zeros(3, 4, dtype=F64)
    expected = p[0].clone()
    for step in range(1, 5):
        g = rand((3, 4), 10 + step)
        p = [p[0] + t.update([g], state, p)[0]]
        gc = ref.centralize(g)
        m = b1 * m + (1 - b1) * gc
        v = b2 * v + (1 - b2) * gc * gc
        expected = expected - lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)
        torch.testing.assert_close(p[0], expected, rtol=1e-12, atol=1e-13)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="normalize_eps"):
        normalize(0.0)
    with pytest.raises(ValueError, match="gc_conv_only"):
        centralize(conv_only=1)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 1e4]),
    seed=st.integers(0, 1000),
)
def test_properties(shape, dtype, scale, seed):
    g = rand(shape, seed, dtype, scale)
    (n,) = run(normalize(), [g])
    (c,) = run(centralize(), [g])
    for out in (n, c):
        assert out.shape == g.shape and out.dtype == g.dtype
    if scale == 0.0:
        assert torch.count_nonzero(n) == 0 and torch.count_nonzero(c) == 0
    else:
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        expected = float(g.norm()) / (float(g.norm()) + 1e-6)
        assert math.isclose(float(n.norm()), expected, rel_tol=tol)
        # normalize keeps the direction: cosine(n, g) = 1
        cosine = float((n.double() * g.double()).sum() / (n.double().norm() * g.double().norm()))
        assert math.isclose(cosine, 1.0, rel_tol=tol)
    if len(shape) >= 2:
        assert float(c.mean(dim=tuple(range(1, len(shape)))).abs().max()) <= 1e-5 * max(scale, 1)
        # idempotent: centralizing twice changes nothing more
        (cc,) = run(centralize(), [c])
        torch.testing.assert_close(cc, c, rtol=1e-5, atol=1e-5 * max(scale, 1))


def test_nonfinite_propagates_per_tensor():
    g = rand((3, 3), 1)
    g[0, 0] = math.nan
    clean = rand((3, 3), 2)
    for t in (normalize(), centralize()):
        bad, good = run(t, [g, clean])
        assert not torch.isfinite(bad).all() and torch.isfinite(good).all()
