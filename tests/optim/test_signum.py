"""signSGD and Signum: steps of size lr in the sign of the gradient or of an EMA momentum."""

from __future__ import annotations

import torch

import gradkit
from gradkit.optim.signum import SignSGD, Signum, scale_by_ema, scale_by_sign
from support.harness import quadratic_problem, rosenbrock


def test_signsgd_is_invariant_to_gradient_scale() -> None:
    a = torch.zeros(4, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt_a, opt_b = SignSGD([a], lr=0.1), SignSGD([b], lr=0.1)
    grad = torch.tensor([3.0, -1e-4, 0.0, 2e5])
    a.grad, b.grad = grad, grad * 1e-3
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)
    assert a.tolist() == [-0.10000000149011612, 0.10000000149011612, 0.0, -0.10000000149011612]


def test_signum_momentum_is_an_ema_from_zero_not_torch_momentum() -> None:
    """Gradients 1 then -5, beta = 0.9. Signum's EMA: m1 = 0.1, m2 = 0.09 - 0.5 = -0.41 < 0, so the
    second step goes up. torch's momentum with the same weights (dampening 0.9) copies the first
    gradient: b1 = 1, b2 = 0.9 - 0.5 = 0.4 > 0, and would step down again."""
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Signum([w], lr=1.0, momentum=0.9)
    for g in (1.0, -5.0):
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert w.item() == 0.0  # down, then back up
    expected = torch.tensor([-0.41], dtype=torch.float64)
    torch.testing.assert_close(opt.state[w]["signum.exp_avg"], expected)
    torch_style = gradkit.chain(gradkit.trace(0.9, dampening=0.9), scale_by_sign())
    params = [torch.zeros(1, dtype=torch.float64)]
    state = torch_style.init(params)
    torch_style.update([torch.ones(1, dtype=torch.float64)], state, params)
    second = torch_style.update([torch.full((1,), -5.0, dtype=torch.float64)], state, params)
    assert second[0].item() == 1.0


def test_transforms_compose_in_any_chain() -> None:
    chain = gradkit.chain(scale_by_ema(0.5), scale_by_sign(), gradkit.scale_by_lr(0.1))
    params = [torch.zeros(2)]
    state = chain.init(params)
    out = chain.update([torch.tensor([2.0, -3.0])], state, params)
    assert out[0].tolist() == [-0.10000000149011612, 0.10000000149011612]
    assert set(state) == {"step", "signum.exp_avg"}


def test_signsgd_converges_on_the_quadratic_and_progresses_on_rosenbrock() -> None:
    a, b, optimum = quadratic_problem()
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = SignSGD([x], lr=1e-3)
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * x @ a @ x - b @ x).backward()
        opt.step()
    assert torch.linalg.vector_norm(x.detach() - optimum) < 0.05 * torch.linalg.vector_norm(optimum)
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = SignSGD([xy], lr=1e-3)
    for _ in range(3000):
        opt.zero_grad()
        rosenbrock(xy).backward()
        opt.step()
    assert rosenbrock(xy).item() < 0.02 * 12.5  # no momentum: it rattles across the valley


def test_registry_entries() -> None:
    info = {i.name: i for i in gradkit.optim.available()}
    assert info["SignSGD"].state_bytes_per_param == 0.0
    assert info["Signum"].state_bytes_per_param == 4.0
    assert info["Signum"].defaults["momentum"] == 0.9 and info["Signum"].year == 2018
    assert "1802.04434" in info["SignSGD"].url
