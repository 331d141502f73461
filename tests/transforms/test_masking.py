"""Update pruning (keep_top_fraction / drop_top_fraction) and MIGU masking."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradkit
from gradkit.transforms.masking import (
    OutputMagnitudes,
    drop_top_fraction,
    keep_top_fraction,
    migu,
)
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


# -- top-k / ignore-k -------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.55, 1.0])
@pytest.mark.parametrize("shape", [(10,), (4, 5), (2, 3, 4), ()])
def test_top_fraction_matches_reference(fraction, shape):
    u = rand(shape, seed=2)
    for factory, keep in ((keep_top_fraction, True), (drop_top_fraction, False)):
        (out,) = run(factory(fraction), [u])
        torch.testing.assert_close(out, ref.top_fraction(u, fraction, keep), rtol=0, atol=0)


def test_counts_are_robust_to_floating_point():
    """0.3 * 10 = 3.0000000000000004 must keep 3 entries, not 4."""
    (out,) = run(keep_top_fraction(0.3), [torch.arange(1.0, 11.0)])
    assert torch.count_nonzero(out) == 3
    assert out[-3:].tolist() == [8.0, 9.0, 10.0]


def test_keep_top_is_update_stage_and_prunes_the_adam_update_not_its_state():
    """Via transforms=, the pruning acts on Adam's proposed update (the moments see the full
    gradient), so per step exactly ceil(f n) coordinates move."""
    w = torch.zeros(20, requires_grad=True)
    opt = gradkit.optim.Adam([w], lr=0.1, transforms=[keep_top_fraction(0.25)])
    assert keep_top_fraction().stage == "update"
    twin = torch.zeros(20, requires_grad=True)
    plain = gradkit.optim.Adam([twin], lr=0.1)
    plain.use_native = False  # the same (readable) arithmetic as opt, which has transforms=
    for step in range(3):
        g = rand((20,), seed=step)
        before = w.detach().clone()
        w.grad, twin.grad = g.float(), g.float()
        opt.step()
        plain.step()
        assert torch.count_nonzero(w.detach() - before) == 5
    torch.testing.assert_close(
        opt.state[w]["adam.exp_avg"], plain.state[twin]["adam.exp_avg"], rtol=0, atol=0
    )


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    fraction=st.floats(0.0, 1.0),
    zero=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_top_fraction_properties(shape, dtype, fraction, zero, seed):
    u = rand(shape, seed, dtype, 0.0 if zero else 1.0)
    (kept,) = run(keep_top_fraction(fraction), [u])
    (dropped,) = run(drop_top_fraction(fraction), [u])
    assert kept.shape == u.shape and kept.dtype == u.dtype
    # the two are complementary: together they rebuild the update exactly
    assert torch.equal(kept + dropped, u)
    k = min(u.numel(), max(0, math.ceil(fraction * u.numel() - 1e-6)))
    if not zero:
        assert torch.count_nonzero(kept) == k
        if 0 < k < u.numel():  # every kept entry is at least as large as every dropped one
            assert kept[kept != 0].abs().min() >= dropped[dropped != 0].abs().max()
    else:
        assert torch.count_nonzero(kept) == 0


def test_nan_counts_as_largest_and_is_not_spread():
    u = torch.tensor([1.0, math.nan, -3.0, 0.5])
    (kept,) = run(keep_top_fraction(0.5), [u])
    assert math.isnan(kept[1]) and kept[2] == -3.0 and kept[0] == 0 and kept[3] == 0


def test_top_fraction_validation():
    for factory, name in (
        (keep_top_fraction, "keep_fraction"),
        (drop_top_fraction, "drop_fraction"),
    ):
        for bad in (-0.1, 1.5, math.nan, "0.5"):
            with pytest.raises(ValueError, match=name):
                factory(bad)


# -- MIGU -------------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_migu_matches_reference_with_gradient_accumulation(threshold):
    """Two micro-batches add up; each weight's gradient rows are masked by the L1-normalized
    output magnitudes; biases pass through."""
    model = _mlp()
    recorder = OutputMagnitudes(model)
    outputs = {0: [], 2: []}
    hooks = [
        model[i].register_forward_hook(lambda m, x, y, i=i: outputs[i].append(y.detach()))
        for i in (0, 2)
    ]
    opt = gradkit.optim.SGD(model.parameters(), lr=1.0, transforms=[migu(recorder, threshold)])
    for seed in (1, 2):
        x = torch.randn(5, 3, 6, generator=torch.Generator().manual_seed(seed))
        model(x).square().mean().backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        delta = (before[n] - p.detach()).double()
        layer = int(n.split(".")[0])
        if n.endswith("bias"):
            expected = grads[n].double()
        else:
            expected = ref.migu(grads[n], outputs[layer], threshold)
        torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-7)
    assert recorder.sums == {}  # reset after the step


def test_migu_keeps_about_the_top_half_and_ignores_no_grad_passes():
    model = torch.nn.Linear(4, 10)
    recorder = OutputMagnitudes(model)
    with torch.no_grad():
        model(torch.randn(3, 4))
    assert recorder.sums == {}
    opt = gradkit.optim.SGD(model.parameters(), lr=0.1, transforms=[migu(recorder)])
    model(torch.randn(16, 4)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert int((model.weight.detach() != before).any(dim=1).sum()) == 5


def test_migu_update_stage_freezes_masked_rows_under_momentum():
    """Step 1 selects rows 0-2, step 2 rows 3-5. With stage="gradient" (official) SGD momentum
    still moves rows 0-2 at step 2; with stage="update" only the selected rows move."""

    def rows_moved_at_step_2(stage):
        model = torch.nn.Linear(3, 6, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[1.0, 0, 0]] * 3 + [[0, 1.0, 0]] * 3))
        recorder = OutputMagnitudes(model)
        opt = gradkit.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, transforms=[migu(recorder, stage=stage)]
        )
        for step, x in enumerate(([10.0, 0.1, 1.0], [0.1, 10.0, 1.0])):
            model.zero_grad()
            model(torch.tensor([x])).sum().backward()
            before = model.weight.detach().clone()
            opt.step()
            moved = (model.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
            if step == 0:
                assert moved == [0, 1, 2]
        return moved

    assert rows_moved_at_step_2("update") == [3, 4, 5]
    assert rows_moved_at_step_2("gradient") == [0, 1, 2, 3, 4, 5]


def test_migu_matches_by_name_for_bf16_parameters():
    model = torch.nn.Linear(4, 8).to(torch.bfloat16)
    recorder = OutputMagnitudes(model)
    opt = gradkit.optim.SGD(model.named_parameters(), lr=0.5, transforms=[migu(recorder)])
    model(torch.randn(6, 4, dtype=torch.bfloat16)).float().square().sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert int((model.weight.detach() != before).any(dim=1).sum()) == 4


def test_migu_validation_and_repr():
    recorder = OutputMagnitudes(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="migu_threshold"):
        migu(recorder, 1.5)
    with pytest.raises(ValueError, match="stage"):
        migu(recorder, stage="after")
    with pytest.raises(TypeError, match="OutputMagnitudes"):
        migu({"w": torch.ones(2)})
    assert "OutputMagnitudes(1 layers)" in repr(migu(recorder))
    recorder.remove()


def test_migu_state_dict_round_trip_has_no_state():
    model = _mlp()
    recorder = OutputMagnitudes(model)
    opt = gradkit.optim.AdamW(model.parameters(), transforms=[migu(recorder)])
    model(torch.randn(2, 6)).sum().backward()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert not any(k.startswith("migu") for s in sd["state"].values() for k in s)
