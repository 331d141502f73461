"""masked() and partition(): selection by name / predicate / group key, state, resume."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.transforms.clipping import clip_by_global_norm, clip_by_value, limit_norm_growth
from gradkit.transforms.normalization import normalize
from gradkit.transforms.selection import labels_by_name, masked, partition


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def backward(model, seed, scale=1.0):
    model.zero_grad()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed)) * scale
    model(x).square().sum().backward()


def run_and_resume(make):
    """Six steps straight vs three, save, reload into fresh objects, three more: bit-exact.

    Returns the straight run's model and optimizer for further checks."""
    model, opt = make()
    for t in range(6):
        backward(model, t, scale=1 + t % 3)
        opt.step()
    straight = [p.detach().clone() for p in model.parameters()]
    resumed, r_opt = make()
    for t in range(3):
        backward(resumed, t, scale=1 + t % 3)
        r_opt.step()
    saved, weights = copy.deepcopy(r_opt.state_dict()), copy.deepcopy(resumed.state_dict())
    resumed, r_opt = make()
    resumed.load_state_dict(weights)
    r_opt.load_state_dict(saved)
    for t in range(3, 6):
        backward(resumed, t, scale=1 + t % 3)
        r_opt.step()
    for p, q in zip(resumed.parameters(), straight, strict=True):
        assert torch.equal(p.detach(), q)
    return model, opt


@pytest.mark.parametrize(
    "mask",
    [
        "*.bias",
        re.compile(r"bias$"),
        ["0.bias", "2.bias"],
        lambda p, name: p.ndim == 1,
    ],
    ids=["glob", "regex", "globs", "predicate"],
)
def test_masked_transforms_only_the_selected_parameters(mask):
    model = mlp()
    opt = gradkit.optim.SGD(
        model.named_parameters(), lr=1.0, transforms=[masked(clip_by_value(1e-3), mask)]
    )
    backward(model, 0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        delta = before[n] - p.detach()
        expected = grads[n].clamp(-1e-3, 1e-3) if n.endswith("bias") else grads[n]
        torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-7)


def test_masked_global_clip_then_adamw_equals_hand_written_torch():
    """The global norm inside masked spans the selected parameters only."""
    model, twin = mlp(), mlp()
    opt = gradkit.optim.AdamW(
        model.named_parameters(), lr=0.01, transforms=[masked(clip_by_global_norm(0.3), "0.*")]
    )
    ref = torch.optim.AdamW(twin.parameters(), lr=0.01)
    for step in range(5):
        backward(model, step)
        backward(twin, step)
        torch.nn.utils.clip_grad_norm_(twin[0].parameters(), 0.3)
        opt.step()
        ref.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_unselected_parameters_keep_no_state_and_resume_is_bit_exact():
    def make():
        model = mlp()
        opt = gradkit.optim.AdamW(
            model.named_parameters(), transforms=[masked(limit_norm_growth(), "*.weight")]
        )
        return model, opt

    model, opt = run_and_resume(make)
    for n, p in model.named_parameters():
        prev = opt.state[p]["norm_growth.prev_norm"]
        assert (prev.numel() == 0) == n.endswith("bias")


def test_masked_adam_inside_a_chain_keeps_moments_only_where_selected():
    model = mlp()
    chain = gradkit.chain(masked(gradkit.scale_by_adam(), "2.*"), gradkit.scale_by_lr(0.1))
    opt = gradkit.ChainOptimizer(model.named_parameters(), chain)
    backward(model, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        size = opt.state[p]["adam.exp_avg"].numel()
        assert size == (p.numel() if n.startswith("2.") else 0)
        if not n.startswith("2."):  # unselected: the raw gradient times -lr
            torch.testing.assert_close(before[n] - p.detach(), 0.1 * grads[n])


def test_masked_by_name_releases_state_of_bf16_parameters_at_the_first_step():
    model = mlp().to(torch.bfloat16)
    opt = gradkit.optim.SGD(
        model.named_parameters(), lr=0.1, transforms=[masked(limit_norm_growth(), "*.bias")]
    )
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    model(x).float().sum().backward()
    opt.step()
    for n, p in model.named_parameters():
        prev = opt.state[p]["norm_growth.prev_norm"]
        assert (prev.numel() == 0) == n.endswith("weight")


def test_masked_chain_and_stage_carry_over():
    from gradkit.transforms.masking import keep_top_fraction

    t = masked(gradkit.chain(clip_by_value(0.5), normalize()), lambda p, n: p.ndim == 2)
    assert t.name == "masked" and t.stage == "gradient"
    assert masked(keep_top_fraction(0.5), "*").stage == "update"
    u = [torch.full((2, 2), 3.0), torch.full((2,), 3.0)]
    out = gradkit.chain(t).update(u, gradkit.chain(t).init(u), u)
    torch.testing.assert_close(out[0], torch.full((2, 2), 0.5 / (1.0 + 1e-6)))
    assert torch.equal(out[1], u[1])


def test_name_masks_need_names():
    p = torch.zeros(2, requires_grad=True)
    opt = gradkit.optim.SGD([p], lr=0.1, transforms=[masked(clip_by_value(1.0), "*.bias")])
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="named_parameters"):
        opt.step()
    with pytest.raises(TypeError, match="mask"):
        masked(clip_by_value(1.0), 3)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 3), max_size=2).map(tuple), min_size=1, max_size=5),
    pick=st.lists(st.booleans(), min_size=5, max_size=5),
    zero=st.booleans(),
    seed=st.integers(0, 100),
)
def test_masked_equals_the_inner_transform_on_the_subset(shapes, pick, zero, seed):
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(s, generator=gen, dtype=torch.float64) * (0 if zero else 3) for s in shapes]
    chosen = {id(u) for u, k in zip(ups, pick, strict=False) if k}
    t = gradkit.chain(masked(clip_by_global_norm(1.0), lambda p, n: id(p) in chosen))
    out = t.update(ups, t.init(ups), ups)
    subset = [u for u in ups if id(u) in chosen]
    alone = gradkit.chain(clip_by_global_norm(1.0))
    expected = iter(alone.update(subset, alone.init(subset), subset) if subset else [])
    for u, o in zip(ups, out, strict=True):
        assert torch.equal(o, next(expected) if id(u) in chosen else u)


# -- partition --------------------------------------------------------------------------------
def test_partition_by_group_key_equals_separate_torch_optimizers():
    model, twin = mlp(), mlp()
    routes = partition(
        {
            "sgd": gradkit.chain(gradkit.trace(0.9), gradkit.scale_by_lr(0.05)),
            "adam": gradkit.chain(gradkit.scale_by_adam(), gradkit.scale_by_lr(0.05)),
        },
        "route",
    )
    opt = gradkit.ChainOptimizer(
        [
            {"params": model[0].parameters(), "route": "sgd"},
            {"params": model[2].parameters(), "route": "adam", "lr": 0.01},
        ],
        routes,
    )
    sgd = torch.optim.SGD(twin[0].parameters(), lr=0.05, momentum=0.9)
    adam = torch.optim.Adam(twin[2].parameters(), lr=0.01)
    for step in range(5):
        backward(model, step)
        backward(twin, step)
        opt.step()
        sgd.step()
        adam.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    keys = set(opt.state[model[0].weight])
    assert "partition.sgd.trace.momentum_buffer" in keys
    # the first group was created all-"sgd": no Adam moments exist for its parameters at all
    assert not any(k.startswith("partition.adam.") for k in keys)


def test_partition_by_name_with_pass_through_and_resume():
    def make():
        model = mlp()
        t = partition(
            {"w": limit_norm_growth(), "b": clip_by_value(1e-2), "frozen": None},
            labels_by_name({"2.bias": "frozen", "*.weight": "w"}, default="b"),
        )
        return model, gradkit.optim.AdamW(model.named_parameters(), transforms=[t])

    run_and_resume(make)


def test_partition_pass_through_route_leaves_updates_unchanged():
    t = gradkit.chain(
        partition(
            {"clip": clip_by_value(0.1), "keep": None}, lambda p, n: "clip" if p.ndim else "keep"
        )
    )
    u = [torch.full((3,), 5.0), torch.tensor(5.0)]
    out = t.update(u, t.init(u), u)
    assert torch.equal(out[0], torch.full((3,), 0.1)) and out[1] is u[1]


def test_partition_errors_name_the_problem():
    p = torch.zeros(2, requires_grad=True)
    routes = {"a": clip_by_value(1.0), "b": normalize()}
    with pytest.raises(ValueError, match="route"):
        gradkit.optim.SGD([{"params": [p], "route": "c"}], transforms=[partition(routes, "route")])
    opt = gradkit.optim.SGD([p], transforms=[partition(routes, "route")])
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="'route'"):
        opt.step()  # the group never set its label
    model = mlp()
    opt = gradkit.optim.SGD(
        model.named_parameters(),
        transforms=[partition(routes, labels_by_name({"*.weight": "a"}))],
    )
    backward(model, 0)
    with pytest.raises(ValueError, match=r"0\.bias"):
        opt.step()
    with pytest.raises(ValueError, match="label"):
        partition({"a.b": normalize()}, "route")
    with pytest.raises(ValueError, match="tensor_max_norm"):
        from gradkit.transforms.clipping import clip_by_norm

        partition({"a": clip_by_norm(1.0), "b": clip_by_norm(2.0)}, "route")
    with pytest.raises(TypeError, match="label_fn"):
        partition(routes, 3)
