"""diffGrad's friction coefficient really varies, and the previous gradient is a copy.

The first official release stored a reference to ``p.grad`` as the previous gradient; with
in-place ``zero_grad`` the friction coefficient froze at 0.5 (shivram1987/diffGrad#2). These tests
train with in-place zeroing, where that bug shows, and check that gradkit's xi is
sigmoid(|g_{t-1} - g_t|) and differs from the frozen one.
"""

from __future__ import annotations

import math

import torch

import gradkit
from gradkit.optim.diffgrad import DiffGrad

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-8


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 4, generator=g, dtype=torch.float64),
         torch.randn(16, 1, generator=g, dtype=torch.float64))
        for _ in range(6)
    ]  # fmt: skip
    return model, batches


def _backward(model, x, y):
    torch.nn.functional.mse_loss(model(x), y).backward()


def _observed_friction(opt, p, before, t):
    """xi recovered from the step: delta = -lr * xi * m_hat / (sqrt(v_hat) + eps)."""
    st = opt.state[p]
    m_hat = st["diffgrad.exp_avg"] / (1 - B1**t)
    v_hat = st["diffgrad.exp_avg_sq"] / (1 - B2**t)
    return (before - p.detach()) / (LR * m_hat / (v_hat.sqrt() + EPS))


def _official_step(p, state, lr, wd, clone):
    """The authors' diffGrad step (diffGrad_v2.py with ``clone=True``; the first release's
    aliasing with ``clone=False``), re-stated here. Like theirs it adds L2 to ``p.grad`` in
    place."""
    grad = p.grad
    if not state:
        state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), prev=torch.zeros_like(p))
    state["t"] += 1
    t = state["t"]
    if wd != 0:
        grad.add_(p.detach(), alpha=wd)
    state["m"].mul_(B1).add_(grad, alpha=1 - B1)
    state["v"].mul_(B2).addcmul_(grad, grad, value=1 - B2)
    xi = torch.sigmoid((state["prev"] - grad).abs())
    state["prev"] = grad.clone() if clone else grad
    step_size = lr * math.sqrt(1 - B2**t) / (1 - B1**t)
    with torch.no_grad():
        p.addcdiv_(state["m"] * xi, state["v"].sqrt() + EPS, value=-step_size)
    return xi


def _train_official(clone, wd=0.0):
    model, batches = _model_and_data()
    states = {p: {} for p in model.parameters()}
    frictions = []
    for x, y in batches:
        model.zero_grad(set_to_none=False)
        _backward(model, x, y)
        xis = [_official_step(p, states[p], LR, wd, clone) for p in model.parameters()]
        frictions.append(xis[0])
    return model, frictions


def test_friction_varies_elementwise_and_is_not_frozen_at_one_half() -> None:
    model, batches = _model_and_data()
    opt = DiffGrad(model.parameters(), lr=LR)
    p = model[0].weight
    previous = torch.zeros_like(p)
    for t, (x, y) in enumerate(batches, start=1):
        opt.zero_grad(set_to_none=False)  # in place: where the aliasing bug bites
        _backward(model, x, y)
        grad = p.grad.clone()
        before = p.detach().clone()
        opt.step()
        xi = _observed_friction(opt, p, before, t)
        torch.testing.assert_close(xi, torch.sigmoid((previous - grad).abs()), rtol=1e-6, atol=0)
        previous = grad
        if t >= 2:
            assert xi.std() > 1e-3, f"xi is (nearly) constant at step {t}: {xi.mean()}"
            assert (xi - 0.5).abs().max() > 1e-2, f"xi frozen at 0.5 at step {t}"
            assert xi.min() >= 0.5 and xi.max() < 1.0

    # the setup does expose the first release's bug: aliasing freezes xi at 0.5 from step 2 on
    _, frozen = _train_official(clone=False)
    assert all(torch.equal(f, torch.full_like(f, 0.5)) for f in frozen[1:])


def test_matches_official_v2_and_differs_from_frozen_v1() -> None:
    """gradkit with the official eps placement reproduces diffGrad_v2's trajectory (coupled L2
    included); the first release's frozen-friction trajectory is a different one."""
    wd = 0.01
    model, batches = _model_and_data()
    opt = DiffGrad(model.parameters(), lr=LR, weight_decay=wd, eps_placement="uncorrected")
    for x, y in batches:
        opt.zero_grad(set_to_none=False)
        _backward(model, x, y)
        opt.step()
    v2, _ = _train_official(clone=True, wd=wd)
    v1, _ = _train_official(clone=False, wd=wd)
    for ours, official, frozen in zip(
        model.parameters(), v2.parameters(), v1.parameters(), strict=True
    ):
        torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
        assert (ours - frozen).abs().max() > 1e-4


def test_previous_gradient_is_a_copy_not_the_grad_tensor() -> None:
    p = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    opt = DiffGrad([p], lr=LR)
    g1 = torch.randn(5, 3, dtype=torch.float64)
    p.grad = g1.clone()
    opt.step()
    stored = opt.state[p]["diffgrad.previous_grad"]
    assert torch.equal(stored, g1)
    assert stored.data_ptr() != p.grad.data_ptr()
    opt.zero_grad(set_to_none=False)  # zeroes p.grad in place
    assert torch.equal(p.grad, torch.zeros_like(p))
    assert torch.equal(opt.state[p]["diffgrad.previous_grad"], g1)
    # and the next step's friction compares against g1, not against the zeroed tensor
    g2 = torch.randn(5, 3, dtype=torch.float64)
    p.grad.add_(g2)
    before = p.detach().clone()
    opt.step()
    xi = _observed_friction(opt, p, before, 2)
    torch.testing.assert_close(xi, torch.sigmoid((g1 - g2).abs()), rtol=1e-6, atol=0)


def test_previous_gradient_includes_l2_term_as_official() -> None:
    p = torch.randn(4, dtype=torch.float64, requires_grad=True)
    p0 = p.detach().clone()
    opt = DiffGrad([p], lr=LR, weight_decay=0.5)
    g = torch.randn(4, dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(opt.state[p]["diffgrad.previous_grad"], g + 0.5 * p0)


def test_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["DiffGrad"]
    assert info.year == 2020 and "1909.11015" in info.url and "diffGrad" in info.paper
    assert info.state_bytes_per_param == 12.0
    assert (
        math.isclose(info.defaults["eps"], 1e-8) and info.defaults["eps_placement"] == "corrected"
    )
