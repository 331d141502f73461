"""Step guards: the non-finite policy and the spike detector share one skip mechanism."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gradkit
from gradkit.core import SpikeGuard, nonfinite_indices


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    grads = [torch.randn(6, 4, generator=g) * 0.1 for _ in range(60)]
    return w, grads


def test_nonfinite_indices_is_exact():
    ok = torch.full((3,), 1e20)  # squares overflow in fp32, values are finite
    assert nonfinite_indices([ok, torch.tensor([1.0, float("nan")]), torch.zeros(0)]) == [1]
    assert nonfinite_indices([torch.tensor([float("-inf")])]) == [0]
    assert nonfinite_indices([]) == []


def test_spike_guard_skips_a_gradient_spike_and_records_why():
    w, grads = _problem()
    opt = gradkit.optim.AdamW([w], lr=0.01)
    guard = opt.add_guard(SpikeGuard(threshold=6.0, window=50, min_history=20))
    for g in grads[:30]:
        w.grad = g.clone()
        opt.step()
    before = w.detach().clone()
    state_before = copy.deepcopy(opt.state[w])
    w.grad = grads[30] * 1000.0
    with pytest.warns(RuntimeWarning, match="grad_norm spike"):
        opt.step()
    assert torch.equal(w, before)
    assert all(torch.equal(state_before[k], opt.state[w][k]) for k in state_before)
    assert opt.param_groups[0]["spike_skips"] == 1 and opt.param_groups[0]["nonfinite_skips"] == 0
    record = opt.skip_log[-1]
    assert record["guard"] == "spike" and record["step"] == 31 and "z=" in record["reason"]
    assert len(guard.history["grad_norm"]) == 30  # the spike did not enter the window
    w.grad = grads[31].clone()
    opt.step()
    assert not torch.equal(w, before)


def test_spike_guard_watches_the_closure_loss():
    w, grads = _problem(1)
    opt = gradkit.optim.SGD([w], lr=0.01)
    opt.add_guard(SpikeGuard(monitor=("loss",), min_history=10))
    losses = iter([1.0 + 0.01 * (i % 3) for i in range(25)] + [50.0])
    for g in grads[:26]:

        def closure(g=g):
            w.grad = g.clone()
            return torch.tensor(next(losses))

        with warnings.catch_warnings(record=True):
            opt.step(closure)
    assert opt.param_groups[0]["spike_skips"] == 1
    assert opt.skip_log[-1]["reason"].startswith("loss spike: 50")


def test_nonfinite_runs_first_and_spike_never_sees_nan():
    w, grads = _problem(2)
    opt = gradkit.optim.AdamW([w], lr=0.01)
    guard = opt.add_guard(SpikeGuard(min_history=5))
    for g in grads[:10]:
        w.grad = g.clone()
        opt.step()
    w.grad = torch.full_like(w, float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert [r["guard"] for r in opt.skip_log] == ["nonfinite"]
    assert len(guard.history["grad_norm"]) == 10


def test_guard_state_and_skip_log_resume_bit_exactly():
    w, grads = _problem(3)
    ref = w.detach().clone().requires_grad_()
    o_ref = gradkit.optim.AdamW([ref], lr=0.01)
    o_ref.add_guard(SpikeGuard(min_history=5, window=10))
    opt = gradkit.optim.AdamW([w], lr=0.01)
    opt.add_guard(SpikeGuard(min_history=5, window=10))
    spiky = [g * (500.0 if i in (12, 25) else 1.0) for i, g in enumerate(grads[:40])]
    with warnings.catch_warnings(record=True):
        for g in spiky:
            ref.grad = g.clone()
            o_ref.step()
        for g in spiky[:20]:
            w.grad = g.clone()
            opt.step()
        saved = opt.state_dict()
        resumed = w.detach().clone().requires_grad_()
        fresh = gradkit.optim.AdamW([resumed], lr=0.01)
        fresh.add_guard(SpikeGuard(min_history=5, window=10))
        fresh.load_state_dict(saved)
        for g in spiky[20:]:
            resumed.grad = g.clone()
            fresh.step()
    assert torch.equal(resumed, ref)
    assert list(fresh.skip_log) == list(o_ref.skip_log)
    assert [r["step"] for r in o_ref.skip_log] == [13, 26]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"window": 1}, "window"),
        ({"min_history": 500}, "min_history"),
        ({"monitor": ("accuracy",)}, "monitor"),
    ],
)
def test_spike_guard_validates(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SpikeGuard(**kwargs)


def test_duplicate_guard_is_rejected():
    opt = gradkit.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    opt.add_guard(SpikeGuard())
    with pytest.raises(ValueError, match="spike"):
        opt.add_guard(SpikeGuard())
