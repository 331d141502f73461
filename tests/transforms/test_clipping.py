"""Clipping transforms: float64 references, torch parity, properties, composition, resume."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.transforms.clipping import (
    adaptive_grad_clip,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_pixel_norm,
    clip_by_value,
    limit_norm_growth,
)
from gradkit.transforms.selection import masked
from reference import clipping_masking as ref

F64 = torch.float64


def run(t, updates, params=None):
    """One standalone step of ``t`` (its construction defaults as hyperparameters)."""
    params = params if params is not None else [torch.zeros_like(u) for u in updates]
    c = gradkit.chain(t)
    return c.update(updates, c.init(params), params)


def rand(*shape, seed=0, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=dtype) * scale


SHAPES = [(7,), (4, 5), (3, 2, 3, 3), ()]


# -- global norm ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [0.3, 100.0])
def test_global_norm_equals_torch_clip_grad_norm_bit_for_bit(dtype, max_norm):
    grads = [rand(*s, seed=i, dtype=dtype, scale=2.0) for i, s in enumerate(SHAPES)]
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in SHAPES]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    out = run(clip_by_global_norm(max_norm), grads)
    for o, p in zip(out, params, strict=True):
        assert torch.equal(o, p.grad)


def test_global_norm_matches_float64_reference_across_groups():
    grads = [rand(*s, seed=i, scale=3.0) for i, s in enumerate(SHAPES)]
    expected = ref.clip_global_norm(grads, 1.5)
    for o, e in zip(run(clip_by_global_norm(1.5), grads), expected, strict=True):
        torch.testing.assert_close(o, e, rtol=1e-14, atol=1e-15)


def test_global_norm_spans_all_groups_with_per_group_limits():
    """Two groups: one norm over both; each group scales by its own limit."""
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = gradkit.optim.SGD(
        [{"params": [a]}, {"params": [b], "global_max_norm": 0.5}],
        lr=1.0,
        transforms=[clip_by_global_norm(1.0)],
    )
    ga, gb = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    a.grad, b.grad = ga.clone(), gb.clone()
    opt.step()
    total = 5.0
    torch.testing.assert_close(a.detach(), -ga * (1.0 / (total + 1e-6)))
    torch.testing.assert_close(b.detach(), -gb * (0.5 / (total + 1e-6)))


def test_clip_then_adamw_equals_torch_clip_grad_norm_then_adamw():
    """Composition through transforms=: the same numbers as the hand-written torch loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    opt = gradkit.optim.AdamW(model.parameters(), lr=0.01, transforms=[clip_by_global_norm(0.5)])
    ref_opt = torch.optim.AdamW(twin.parameters(), lr=0.01)
    for step in range(6):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        for m in (model, twin):
            m.zero_grad()
            m(x).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_clip_then_adam_chain_equals_hand_written_float64():
    lr, b1, b2, eps, c = 0.05, 0.9, 0.999, 1e-8, 0.7
    t = gradkit.chain(clip_by_global_norm(c), gradkit.scale_by_adam(), gradkit.scale_by_lr(lr))
    p = [rand(3, 2, seed=1), rand(4, seed=2)]
    state = t.init(p)
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    expected = [x.clone() for x in p]
    for step in range(1, 6):
        grads = [rand(3, 2, seed=10 + step, scale=3.0), rand(4, seed=20 + step, scale=3.0)]
        out = t.update(grads, state, p)
        p = [x + u for x, u in zip(p, out, strict=True)]
        clipped = ref.clip_global_norm(grads, c)
        for i, g in enumerate(clipped):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat, vhat = m[i] / (1 - b1**step), v[i] / (1 - b2**step)
            expected[i] = expected[i] - lr * mhat / (vhat.sqrt() + eps)
        for x, e in zip(p, expected, strict=True):
            torch.testing.assert_close(x, e, rtol=1e-12, atol=1e-13)


# -- value, per-tensor norm, AGC, PGC: float64 references -------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_value_and_norm_clips_match_reference(shape):
    g = rand(*shape, seed=3, scale=2.0)
    torch.testing.assert_close(run(clip_by_value(0.5), [g])[0], ref.clip_value(g, 0.5))
    torch.testing.assert_close(
        run(clip_by_norm(0.8), [g])[0], ref.clip_norm(g, 0.8), rtol=1e-14, atol=1e-15
    )


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3), (7,), ()])
@pytest.mark.parametrize("scale", [1e-3, 0.05, 5.0])
def test_agc_matches_reference(shape, scale):
    w = rand(*shape, seed=5)
    if len(shape) >= 2:
        w[0] = 0.0  # a zero-initialized unit: the eps floor decides its limit
    g = rand(*shape, seed=6, scale=scale)
    out = run(adaptive_grad_clip(0.02, 1e-3), [g], [w])[0]
    torch.testing.assert_close(out, ref.agc(g, w, 0.02, 1e-3), rtol=1e-13, atol=1e-15)


def test_agc_clips_unit_ratio_to_lambda():
    w = rand(8, 6, seed=7)
    g = rand(8, 6, seed=8, scale=10.0)
    g[3] *= 1e-6  # one unit well below the limit stays untouched
    out = run(adaptive_grad_clip(0.01), [g], [w])[0]
    ratio = out.norm(dim=1) / w.norm(dim=1).clamp(min=1e-3)
    assert torch.all(ratio <= 0.01 * (1 + 1e-12))
    torch.testing.assert_close(out[3], g[3], rtol=0, atol=0)
    assert torch.allclose(ratio[[0, 1, 2, 4]], torch.full((4,), 0.01, dtype=F64))


def test_agc_skips_a_layer_through_masked():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    agc = masked(adaptive_grad_clip(1e-4), lambda p, name: not name.startswith("1."))
    opt = gradkit.optim.SGD(model.named_parameters(), lr=1.0, transforms=[agc])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.ones(5, 3)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        delta = before[n] - p.detach()
        if n.startswith("1."):
            torch.testing.assert_close(delta, grads[n])  # the classifier is not clipped
        else:
            assert delta.norm() < grads[n].norm() * 0.1


@pytest.mark.parametrize("norm", ["l2", "inf"])
@pytest.mark.parametrize(("shape", "dim"), [((5, 6, 3), -1), ((3, 5, 6), 0), ((2, 3, 4, 4), 1)])
def test_pixel_clip_matches_reference(norm, shape, dim):
    g = rand(*shape, seed=9, scale=0.2)
    g.movedim(dim, -1)[0, 0] = 0.0  # a zero pixel
    out = run(clip_by_pixel_norm(0.1, dim, norm), [g])[0]
    torch.testing.assert_close(out, ref.pixel_clip(g, 0.1, dim, norm), rtol=1e-14, atol=1e-16)
    sizes = torch.linalg.vector_norm(out, ord=2 if norm == "l2" else math.inf, dim=dim)
    assert torch.all(sizes <= 0.1 * (1 + 1e-12))


def test_pixel_clip_inf_is_the_official_pwclip():
    """Official PGC-3D ``grad_suppress_type == 0`` on an (N, C, H, W) image gradient."""
    grad = rand(2, 3, 8, 8, seed=11, scale=0.3)
    clip_value = 0.1
    ratio = 1.0 / grad.abs() * clip_value
    ratio[ratio > 1.0] = 1.0
    official = grad * torch.amin(ratio, dim=[1], keepdim=True)
    out = run(clip_by_pixel_norm(clip_value, dim=1, norm="inf"), [grad])[0]
    torch.testing.assert_close(out, official, rtol=1e-15, atol=0)


def test_pixel_clip_rejects_a_missing_dim():
    with pytest.raises(ValueError, match="pixel_dim"):
        run(clip_by_pixel_norm(0.1, dim=2), [torch.ones(4, 3)])


# -- Fira's norm-growth limiter ---------------------------------------------------------------
def _spiky_sequence(n=8, shape=(4, 3)):
    scales = [1.0, 1.005, 3.0, 50.0, 0.5, 0.6, 2.0, 1.0][:n]
    return [rand(*shape, seed=30 + t, scale=s) for t, s in enumerate(scales)]


def test_norm_growth_matches_reference_over_steps():
    t = gradkit.chain(limit_norm_growth(1.01))
    seq_a, seq_b = _spiky_sequence(), [rand(5, seed=60 + i) * (i + 1) for i in range(8)]
    params = [torch.zeros(4, 3, dtype=F64), torch.zeros(5, dtype=F64)]
    state = t.init(params)
    refs = [ref.NormGrowth(1.01), ref.NormGrowth(1.01)]
    for a, b in zip(seq_a, seq_b, strict=True):
        out = t.update([a, b], state, params)
        torch.testing.assert_close(out[0], refs[0].step(a), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(out[1], refs[1].step(b), rtol=1e-13, atol=1e-15)
        assert float(state["norm_growth.prev_norm"][0]) == pytest.approx(refs[0].prev, rel=1e-13)


def test_norm_growth_first_step_unchanged_then_ratio_bounded():
    t = gradkit.chain(limit_norm_growth(1.05))
    params = [torch.zeros(4, 3, dtype=F64)]
    state = t.init(params)
    norms = []
    for i, s in enumerate(_spiky_sequence()):
        (out,) = t.update([s], state, params)
        if i == 0:
            assert torch.equal(out, s)
        norms.append(float(out.norm()))
    for prev, cur in itertools.pairwise(norms):
        assert cur <= 1.05 * (prev + 1e-8) * (1 + 1e-12)  # the official +1e-8 in the ratio
    assert norms[3] < 2 * norms[0]  # the 50x spike is contained


def test_norm_growth_state_dict_resume_is_bit_exact():
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, gradkit.optim.AdamW(model.parameters(), transforms=[limit_norm_growth()])

    def step(model, opt, t):
        model.zero_grad()
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(t)) * (1 + t % 3)
        model(x).square().sum().backward()
        opt.step()

    model, opt = make()
    for t in range(6):
        step(model, opt, t)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = make()
    for t in range(3):
        step(model, opt, t)
    saved = copy.deepcopy(opt.state_dict())
    weights = copy.deepcopy(model.state_dict())
    model2, opt2 = make()
    model2.load_state_dict(weights)
    opt2.load_state_dict(saved)
    for t in range(3, 6):
        step(model2, opt2, t)
    for p, q in zip(model2.parameters(), straight, strict=True):
        assert torch.equal(p.detach(), q)
    assert "norm_growth.prev_norm" in opt2.state[next(model2.parameters())]


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (clip_by_global_norm, {"max_norm": 0.0}, "global_max_norm"),
        (clip_by_global_norm, {"max_norm": -1.0}, "global_max_norm"),
        (clip_by_value, {"limit": float("nan")}, "clip_value"),
        (clip_by_norm, {"max_norm": float("inf")}, "tensor_max_norm"),
        (adaptive_grad_clip, {"clipping": 0.0}, "agc_clipping"),
        (adaptive_grad_clip, {"eps": -1e-3}, "agc_eps"),
        (clip_by_pixel_norm, {"max_norm": -0.1}, "pixel_max_norm"),
        (clip_by_pixel_norm, {"dim": 1.0}, "pixel_dim"),
        (clip_by_pixel_norm, {"norm": "l1"}, "pixel_norm"),
        (limit_norm_growth, {"gamma": 0.99}, "norm_growth_gamma"),
        (limit_norm_growth, {"gamma": "1.01"}, "norm_growth_gamma"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_bad_per_group_value_is_rejected_by_the_optimizer():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="global_max_norm"):
        gradkit.optim.AdamW(
            [{"params": [p], "global_max_norm": -2.0}], transforms=[clip_by_global_norm()]
        )


# -- properties -------------------------------------------------------------------------------
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])
scales = st.sampled_from([0.0, 1e-4, 1.0, 1e3])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=dtypes, scale=scales, seed=st.integers(0, 1000))
def test_clips_bound_the_output_and_keep_dtype_shape(shape, dtype, scale, seed):
    g = rand(*shape, seed=seed, dtype=dtype, scale=scale)
    w = rand(*shape, seed=seed + 1, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cases = {
        "global": (clip_by_global_norm(0.5), lambda o: o.norm() <= 0.5 * (1 + tol)),
        "value": (clip_by_value(0.3), lambda o: o.abs().max() <= 0.3 if o.numel() else True),
        "norm": (clip_by_norm(0.2), lambda o: o.norm() <= 0.2 * (1 + tol)),
        "agc": (
            adaptive_grad_clip(0.05),
            lambda o: torch.all(ref_ratio(o, w) <= 0.05 * (1 + tol)),
        ),
        "pixel": (
            clip_by_pixel_norm(0.1),
            lambda o: (
                torch.all(o.abs() <= 0.1 * (1 + tol))
                if o.ndim == 0
                else bool(torch.all(torch.linalg.vector_norm(o, dim=-1) <= 0.1 * (1 + tol)))
            ),
        ),
        "growth": (limit_norm_growth(), lambda o: torch.equal(o, g)),  # first step: unchanged
    }
    for label, (t, bounded) in cases.items():
        (out,) = run(t, [g], [w])
        assert out.shape == g.shape and out.dtype == g.dtype, label
        assert bool(bounded(out)), label
        if scale == 0.0:
            assert torch.count_nonzero(out) == 0, label  # zero gradients stay zero
        # every clip keeps each entry's sign or zeroes it
        assert bool(torch.all(out * g >= 0)), label


def ref_ratio(out, w):
    from gradkit.transforms.clipping import unitwise_norm

    return unitwise_norm(out) / unitwise_norm(w).clamp(min=1e-3)


@settings(max_examples=20, deadline=None)
@given(shape=shapes.filter(lambda s: len(s) > 0), bad=st.sampled_from([math.nan, math.inf]))
def test_nonfinite_input_propagates_and_never_poisons_other_tensors(shape, bad):
    g = rand(*shape, seed=1)
    g.reshape(-1)[0] = bad
    clean = rand(3, seed=2)
    for t in (clip_by_norm(1.0), adaptive_grad_clip(), clip_by_pixel_norm(), clip_by_value(1.0)):
        out = run(t, [g, clean], [torch.ones_like(g), torch.ones_like(clean)])
        if t.name == "clip_value" and bad == math.inf:
            assert float(out[0].reshape(-1)[0]) == 1.0  # clamp bounds inf, as clip_grad_value_
        else:
            assert not torch.isfinite(out[0]).all()  # visible, not silently repaired
        assert torch.isfinite(out[1]).all()  # per-tensor: the other tensor is unaffected


def test_optimizer_skips_a_nonfinite_step_before_any_clip_runs():
    model = torch.nn.Linear(3, 2)
    opt = gradkit.optim.AdamW(model.parameters(), transforms=[limit_norm_growth()])
    model(torch.ones(1, 3)).sum().backward()
    model.weight.grad[0, 0] = math.nan
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert not opt.state[model.weight]  # no state created from a NaN step
