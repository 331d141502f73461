"""The Transform protocol, chain() and the generic transforms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.core import ChainOptimizer, chain, when


def test_chain_standalone_equals_hand_written_adamw():
    """chain(scale_by_adam, add_decayed_weights, scale_by_lr) == AdamW's equations, float64."""
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    t = chain(gradkit.scale_by_adam(), gradkit.add_decayed_weights(wd), gradkit.scale_by_lr(lr))
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ref = p.clone()
    state = t.init([p])
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for step in range(1, 6):
        grad = torch.randn(4, 3, generator=g, dtype=torch.float64)
        (u,) = t.update([grad], state, [p])
        p = p + u
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        ref = ref - lr * ((m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps) + wd * ref)
        torch.testing.assert_close(p, ref, rtol=1e-12, atol=1e-12)
    assert set(state) == {"adam.exp_avg", "adam.exp_avg_sq", "step"}
    torch.testing.assert_close(state["adam.exp_avg"][0], m)


def test_chain_flattens_nested_chains_and_deduplicates_namespaces():
    inner = chain(gradkit.trace(momentum=0.5), gradkit.scale(2.0))
    t = chain(inner, gradkit.trace(momentum=0.5), gradkit.scale_by_lr())
    assert t.namespaces == ["trace", "scale", "trace_1", "lr"]
    state = t.init([torch.zeros(2)])
    assert set(state) == {"step", "trace.momentum_buffer", "trace_1.momentum_buffer"}


def test_chain_rejects_conflicting_defaults_and_non_transforms():
    with pytest.raises(ValueError, match="momentum"):
        chain(gradkit.trace(momentum=0.9), gradkit.trace(momentum=0.5))
    with pytest.raises(TypeError, match="Transform"):
        chain(gradkit.scale(2.0), lambda u: u)


def test_two_momenta_in_one_chain_keep_separate_state():
    """Same transform twice: each instance owns its buffer (no collision)."""
    p = torch.zeros(3, requires_grad=True)
    opt = ChainOptimizer(
        [p], chain(gradkit.trace(), gradkit.trace(), gradkit.scale_by_lr()), lr=1.0
    )
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    # b1: 1, 1.9, 2.71 ; b2 (momentum of b1): 1, 2.8, 5.23 ; p = -(1 + 2.8 + 5.23)
    torch.testing.assert_close(opt.state[p]["trace.momentum_buffer"], torch.full((3,), 2.71))
    torch.testing.assert_close(opt.state[p]["trace_1.momentum_buffer"], torch.full((3,), 5.23))
    torch.testing.assert_close(p.detach(), torch.full((3,), -(1 + 2.8 + 5.23)))


def test_when_applies_only_in_matching_groups():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    t = chain(when("flip", gradkit.scale(-1.0)), gradkit.scale_by_lr())
    opt = ChainOptimizer([{"params": [a], "flip": True}, {"params": [b]}], t, lr=1.0)
    a.grad = torch.ones(2)
    b.grad = torch.ones(2)
    opt.step()
    assert torch.equal(a.detach(), torch.full((2,), 2.0))
    assert torch.equal(b.detach(), torch.zeros(2))


def test_maximize_and_scale():
    p = torch.zeros(2, requires_grad=True)
    opt = ChainOptimizer([p], chain(gradkit.maximize(True), gradkit.scale_by_lr()), lr=0.5)
    p.grad = torch.tensor([1.0, -2.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.5, -1.0]))
    (u,) = gradkit.scale(-3.0).update([torch.ones(1)], {}, [torch.zeros(1)], _ctx(1))
    assert u.item() == -3.0


def _ctx(n: int):
    from gradkit.core import Context, Segment

    return Context([Segment(0, n, {})], [1] * n, [torch.zeros(1)] * n)


def test_add_l2_before_and_decoupled_after_give_torch_adam_and_adamw():
    """Placement of add_decayed_weights decides coupled vs decoupled decay."""
    for decoupled, ref_cls in ((False, torch.optim.Adam), (True, torch.optim.AdamW)):
        wd = 0.1
        core = [gradkit.scale_by_adam(), gradkit.add_decayed_weights(wd)]
        if not decoupled:
            core = core[::-1]
        p = torch.ones(3, requires_grad=True)
        q = torch.ones(3, requires_grad=True)
        ours = ChainOptimizer([p], chain(*core, gradkit.scale_by_lr()), lr=0.1)
        theirs = ref_cls([q], lr=0.1, weight_decay=wd)
        for i in range(5):
            p.grad = torch.full((3,), float(i) - 2.0)
            q.grad = p.grad.clone()
            ours.step()
            theirs.step()
        torch.testing.assert_close(p, q)


def test_trace_cannot_be_switched_on_after_state_exists():
    p = torch.zeros(2, requires_grad=True)
    opt = gradkit.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ValueError, match="momentum was 0"):
        opt.step()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    zero=st.booleans(),
    name=st.sampled_from(["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adagrad", "RMSprop"]),
)
def test_property_any_shape_dtype_and_zero_gradients(shape, dtype, zero, name):
    """Any shape (0-d included), dtype, and all-zero gradients give finite params of the same
    dtype; all-zero gradients never move a parameter without weight decay."""
    p = torch.randn(shape).to(dtype).requires_grad_()
    start = p.detach().clone()
    cls = getattr(gradkit.optim, name)
    opt = cls([p], lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else cls([p], lr=0.01)
    if name == "AdamW":
        opt.param_groups[0]["weight_decay"] = 0.0
    for _ in range(3):
        p.grad = torch.zeros_like(p) if zero else torch.randn_like(p)
        opt.step()
    assert p.dtype == dtype and p.shape == torch.Size(shape)
    assert torch.isfinite(p.float()).all()
    if zero:
        assert torch.equal(p.detach(), start)


def test_update_stage_transforms_go_after_the_update_rule():
    """AdamW(transforms=[cautious()]) == chain(adam, cautious, decay, lr); clipping goes first."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours = gradkit.optim.AdamW([p], lr=0.1, weight_decay=0.0, transforms=[gradkit.cautious()])
    names = [type(t).__name__ for t in ours.transform.transforms]
    assert names.index("Cautious") == names.index("ScaleByAdam") + 1
    manual = ChainOptimizer(
        [q],
        chain(
            gradkit.scale_by_adam(),
            gradkit.cautious(),
            gradkit.add_decayed_weights(),
            gradkit.scale_by_lr(),
        ),
        lr=0.1,
    )
    for _ in range(4):
        grad = torch.randn(6, 5, generator=g, dtype=torch.float64)
        before = p.detach().clone()
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        manual.step()
        assert torch.equal(p, q)
        assert bool(((p.detach() - before) * grad <= 0).all())  # never climbs the gradient


def test_update_stage_transform_needs_a_learning_rate_tail():
    with pytest.raises(ValueError, match="update-stage"):
        gradkit.optim.LARS([torch.zeros(3, requires_grad=True)], transforms=[gradkit.cautious()])
