"""Spike transforms (SPAM clip, AdaClip, AdaGN, momentum reset, post-reset warm-up): float64
references, properties, composition with any optimizer, bit-exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.core import NonFiniteGradientError
from gradkit.optim import Adam, AdamW
from gradkit.optim.lion import Lion
from gradkit.optim.spam import SPAM, StableSPAM
from gradkit.transforms.spike import (
    MomentumReset,
    ada_clip,
    ada_gn,
    momentum_reset,
    post_reset_warmup,
    spam_clip,
)
from reference import spike as ref
from support.harness import checkpoint_roundtrip

SHAPES = [(6, 5), (7,), (2, 3, 2)]


def _grads(steps: int, seed: int = 0, spike: dict[int, float] | None = None):
    """Random float64 gradients; ``spike[t]`` multiplies a few entries at step t."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(1, steps + 1):
        gs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        if spike and t in spike:
            for g in gs:
                g.view(-1)[:2] *= spike[t]
        out.append(gs)
    return out


def _run_standalone(transform, grads):
    chain = gradkit.chain(transform)
    params = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    state = chain.init(params)
    return [chain.update([g.clone() for g in gs], state, params) for gs in grads], state


# -- references -------------------------------------------------------------------------------
def test_ada_clip_matches_reference_and_clips_the_spike() -> None:
    grads = _grads(8, spike={5: 100.0})
    outs, state = _run_standalone(ada_clip(0.9), grads)
    ref_states = [{} for _ in SHAPES]
    clipped = 0
    for t, (gs, ours) in enumerate(zip(grads, outs, strict=True), start=1):
        for g, o, st_ in zip(gs, ours, ref_states, strict=True):
            expected = ref.ada_clipped(g, st_, t, 0.9)
            torch.testing.assert_close(o, expected, rtol=1e-13, atol=1e-15)
            clipped += int((o != g).sum())
    for ours, st_ in zip(state["ada_clip.max_avg"], ref_states, strict=True):
        torch.testing.assert_close(ours, st_["mmax"], rtol=1e-13, atol=0)
    assert clipped >= 2 * len(SHAPES)  # the spike entries (at least) were clipped
    for o, g in zip(outs[4], grads[4], strict=True):  # the 100x entries are scaled down
        assert float(o.abs().max()) < 0.5 * float(g.abs().max())


def test_ada_gn_matches_reference_and_bounds_the_norm() -> None:
    grads = _grads(8, spike={5: 1000.0})
    outs, _ = _run_standalone(ada_gn(0.7, 0.9, 1e-8), grads)
    ref_states = [{} for _ in SHAPES]
    for t, (gs, ours) in enumerate(zip(grads, outs, strict=True), start=1):
        for g, o, st_ in zip(gs, ours, ref_states, strict=True):
            expected = ref.ada_normalized(g, st_, t, 0.7, 0.9, 1e-8)
            torch.testing.assert_close(o, expected, rtol=1e-13, atol=1e-15)
            # mean over root-mean-square of the norms is <= 1
            assert float(o.norm()) <= 1.0 + 1e-12


def test_spam_clip_matches_reference_with_resets() -> None:
    theta, b2, delay, interval = 20.0, 0.9, 2, 4
    grads = _grads(10, spike={7: 50.0})
    outs, state = _run_standalone(spam_clip(theta, b2, delay, interval), grads)
    vs = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    clipped = 0
    for t, (gs, ours) in enumerate(zip(grads, outs, strict=True), start=1):
        for i, (g, o) in enumerate(zip(gs, ours, strict=True)):
            if t % interval == 0:
                vs[i] = torch.zeros_like(vs[i])
            expected = ref.spam_clipped(g, vs[i], theta) if t % interval >= delay else g
            torch.testing.assert_close(o, expected, rtol=1e-13, atol=1e-15)
            clipped += int((o != g).sum())
            vs[i] = b2 * vs[i] + (1 - b2) * expected**2
    for ours, v in zip(state["spam_clip.exp_avg_sq"], vs, strict=True):
        torch.testing.assert_close(ours, v, rtol=1e-13, atol=1e-15)
    assert clipped > 0


# -- composition ------------------------------------------------------------------------------
def _train(make, grads, dtype=torch.float64):
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in SHAPES]
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.to(dtype).clone()
        opt.step()
    return params, opt


def test_ada_clip_then_adam_equals_the_hand_written_combination() -> None:
    grads = _grads(7, spike={4: 30.0})
    lr, (b1, b2), eps = 0.01, (0.9, 0.999), 1e-8
    ours, _ = _train(lambda p: Adam(p, lr=lr, transforms=[ada_clip(0.99), ada_gn()]), grads)
    for i, shape in enumerate(SHAPES):
        w = torch.zeros(shape, dtype=torch.float64)
        m, v, clip_state, gn_state = torch.zeros_like(w), torch.zeros_like(w), {}, {}
        for t, gs in enumerate(grads, start=1):
            g = ref.ada_clipped(gs[i], clip_state, t, 0.99)
            g = ref.ada_normalized(g, gn_state, t, 0.7, 0.9, 1e-8)
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(ours[i].detach(), w, rtol=1e-12, atol=1e-14)


def test_stable_spam_is_adam_with_ada_clip_and_ada_gn_when_never_reset() -> None:
    grads = _grads(12, spike={6: 100.0})

    def readable(p):  # the same arithmetic as the chain below (test_native: kernel == this)
        opt = StableSPAM(p, lr=0.01, weight_decay=0.1, reset_interval=0)
        opt.use_native = False
        return opt

    a, _ = _train(readable, grads)
    b, _ = _train(
        lambda p: AdamW(p, lr=0.01, weight_decay=0.1, transforms=[ada_clip(), ada_gn()]), grads
    )
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_spam_is_the_chain_of_its_generic_pieces() -> None:
    """SPAM's fused clip (against Adam's own v) == a standalone spam_clip keeping its own v."""
    interval, n, theta, delay, lr = 5, 3, 10.0, 2, 0.01
    grads = _grads(14, spike={8: 100.0, 12: 100.0})

    def pieces(params):
        chain = gradkit.chain(
            spam_clip(theta, 0.999, delay, interval),
            momentum_reset(gradkit.scale_by_adam(eps=1e-6), interval, reset_step_count=False),
            post_reset_warmup(interval, n),
            gradkit.scale_by_lr(lr),
        )
        return gradkit.ChainOptimizer(params, chain)

    a, _ = _train(pieces, grads)
    kwargs = dict(spam_threshold=theta, spam_clip_delay=delay, reset_warmup_steps=n)
    b, _ = _train(lambda p: SPAM(p, lr=lr, reset_interval=interval, **kwargs), grads)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-16)


def test_transforms_plug_into_any_optimizer() -> None:
    grads = _grads(6)
    # spam_clip and post_reset_warmup share the group's reset_interval (a chain checks they agree)
    extra = [spam_clip(spam_clip_delay=2, reset_interval=3), ada_clip(), ada_gn(),
             post_reset_warmup(3, 2)]  # fmt: skip
    for make in (
        lambda p: Lion(p, lr=1e-3, transforms=extra),
        lambda p: gradkit.optim.SGD(p, lr=0.1, momentum=0.9, transforms=extra),
        lambda p: AdamW(p, lr=1e-3, transforms=extra),
    ):
        params, opt = _train(make, grads)
        assert all(torch.isfinite(p).all() for p in params)
        keys = set(opt.state[params[0]])
        assert {"spam_clip.exp_avg_sq", "ada_clip.max_avg", "ada_gn.norm_avg"} <= keys


def test_post_reset_warmup_scales_the_update_not_the_decay() -> None:
    """As an update-stage transform it sits before [decay ->] lr: on the reset step the Adam
    step is scaled by 0.01 while the decoupled decay is not."""
    g = [[torch.ones(s, dtype=torch.float64) for s in SHAPES]] * 3
    lr, wd = 0.1, 0.5
    warm, _ = _train(
        lambda p: AdamW(p, lr=lr, weight_decay=wd, transforms=[post_reset_warmup(3, 2)]), g
    )
    cold, _ = _train(lambda p: AdamW(p, lr=lr, weight_decay=wd), g[:2])
    # step 3 of the warm run from the same point as cold: p(1 - lr wd) - lr * 0.01 * 1
    expected = cold[0].detach() * (1 - lr * wd) - lr * 0.01 * (
        1 / (1 + 1e-8 * math.sqrt(1 - 0.999**3))
    )
    torch.testing.assert_close(warm[0].detach(), expected, rtol=1e-9, atol=1e-12)


def test_momentum_reset_restarts_the_inner_transform() -> None:
    grads = _grads(9)
    outs, _ = _run_standalone(momentum_reset(gradkit.scale_by_adam(), 4), grads)
    fresh, _ = _run_standalone(gradkit.scale_by_adam(), grads[3:])  # a new Adam from step 4
    for a, b in zip(outs[3:7], fresh[:4], strict=True):  # steps 4..7 (8 resets again)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-14, atol=0)
    kept, _ = _run_standalone(momentum_reset(gradkit.scale_by_adam(), 4, False), grads)
    assert not torch.allclose(kept[4][0], outs[4][0])  # the count ran on: other bias correction


def test_momentum_reset_arguments() -> None:
    with pytest.raises(TypeError, match="single transform"):
        momentum_reset(gradkit.chain(gradkit.trace(), gradkit.scale_by_lr()))
    with pytest.raises(ValueError, match="reset_interval"):
        momentum_reset(spam_clip(reset_interval=3), reset_interval=4)
    with pytest.raises(ValueError, match="reset_interval"):
        momentum_reset(gradkit.trace(), reset_interval=-2)
    with pytest.raises(ValueError, match="reset_step_count"):
        momentum_reset(gradkit.trace(), reset_step_count=1)
    with pytest.raises(ValueError, match="spam_threshold"):
        spam_clip(spam_threshold=-1.0)
    with pytest.raises(ValueError, match="ada_gn_eps"):
        ada_gn(ada_gn_eps=0.0)
    with pytest.raises(ValueError, match="ada_clip_gamma3"):
        Adam([{"params": [torch.zeros(1, requires_grad=True)], "ada_clip_gamma3": 1.0}],
             transforms=[ada_clip()])  # fmt: skip


# -- resume, non-finite, properties -----------------------------------------------------------
@pytest.mark.parametrize("split", [3, 4, 5])
def test_state_dict_resume_is_bit_exact(split: int) -> None:
    def make(params):
        extra = [spam_clip(50.0, 0.9, 2, 4), ada_clip(0.9), ada_gn(),
                 post_reset_warmup(4, 3)]  # fmt: skip
        return AdamW(params, lr=0.01, transforms=extra)

    grads = _grads(9, spike={6: 40.0})
    full, _ = _train(make, grads)
    first, opt = _train(make, grads[:split])
    saved = checkpoint_roundtrip(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    fresh = make(resumed)
    fresh.load_state_dict(saved)
    for gs in grads[split:]:
        for p, g in zip(resumed, gs, strict=True):
            p.grad = g.clone()
        fresh.step()
    for a, b in zip(full, resumed, strict=True):
        assert torch.equal(a, b)


def test_nonfinite_gradients_leave_state_untouched() -> None:
    def make(params, **kw):
        return Adam(params, lr=0.01, transforms=[spam_clip(), ada_clip(), ada_gn()], **kw)

    params, opt = _train(make, _grads(3))
    before = copy.deepcopy(opt.state_dict())
    for p in params:
        p.grad = torch.full_like(p, float("inf"))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    for idx, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(opt.state_dict()["state"][idx][key], value), key
    params, opt = _train(lambda p: make(p, nonfinite="raise"), _grads(1))
    params[0].grad = torch.full_like(params[0], float("nan"))
    with pytest.raises(NonFiniteGradientError):
        opt.step()


_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(
    shape=_shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([0.0, 1e-20, 1.0, 1e10]),
    seed=st.integers(0, 2**16),
)
def test_properties_shapes_dtypes_zero_and_extreme_gradients(shape, dtype, scale, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    for transform in (spam_clip(spam_clip_delay=1), ada_clip(), ada_gn(), post_reset_warmup(2, 1),
                      momentum_reset(gradkit.scale_by_adam(), 2)):  # fmt: skip
        chain = gradkit.chain(transform)
        params = [torch.zeros(shape, dtype=dtype)]
        state = chain.init(params)
        for _ in range(4):
            g = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
            (out,) = chain.update([g], state, params)
            assert out.shape == g.shape and out.dtype == dtype
            assert torch.isfinite(out).all(), transform
            if scale == 0.0:
                assert not out.abs().sum()  # zero in, zero out
            if not isinstance(transform, MomentumReset):
                # clipping / normalization never turns a coordinate around
                assert (out * g >= 0).all()
        for tensors in state.values():
            assert all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_parameters_keep_fp32_state(dtype) -> None:
    params, opt = _train(lambda p: StableSPAM(p, lr=0.01, reset_interval=2), _grads(3), dtype)
    assert opt.state[params[0]]["ada_gn.norm_avg"].dtype == torch.float32
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params)


def test_momentum_reset_goes_into_any_optimizer_through_transforms():
    """AdamW(transforms=[momentum_reset(...)]) == the chain with momentum_reset(scale_by_adam())."""
    import gradkit
    from gradkit.transforms.spike import momentum_reset

    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours = gradkit.optim.AdamW([p], lr=0.05, transforms=[momentum_reset(reset_interval=3)])
    manual = gradkit.ChainOptimizer(
        [q],
        gradkit.chain(
            momentum_reset(gradkit.scale_by_adam(), reset_interval=3),
            gradkit.add_decayed_weights(0.01),
            gradkit.scale_by_lr(),
        ),
        lr=0.05,
    )
    for _ in range(7):
        grad = torch.randn(4, 3, generator=g, dtype=torch.float64)
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        manual.step()
        assert torch.equal(p, q)
    assert set(ours.state[p]) == set(manual.state[q])
    with pytest.raises(TypeError, match="needs the transform"):
        gradkit.chain(momentum_reset()).update([torch.ones(1)], {}, [torch.zeros(1)])
