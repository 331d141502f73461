"""AdaMomentum: eps accumulates inside the second moment, which tracks the momentum."""

from __future__ import annotations

import torch

import gradkit
from gradkit.optim.adamomentum import AdaMomentum


def test_eps_accumulates_inside_v_and_never_enters_the_denominator() -> None:
    eps, b2 = 1e-4, 0.999
    p = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    start = p.detach().clone()
    opt = AdaMomentum([p], lr=0.1, eps=eps)
    for t in range(1, 6):
        p.grad = torch.zeros_like(p)
        opt.step()
        expected_v = eps * (1 - b2**t) / (1 - b2)
        torch.testing.assert_close(
            opt.state[p]["adamomentum.exp_avg_var"],
            torch.full_like(p, expected_v),
            rtol=1e-12,
            atol=0,
        )
    assert torch.equal(p.detach(), start)  # zero momentum, finite denominator: no move
    # one real gradient: the step is m_hat / sqrt(v_hat), with eps only through v
    g = torch.randn(3, 2, dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    t, b1 = 6, 0.9
    m = (1 - b1) * g
    v = b2 * expected_v + (1 - b2) * m**2 + eps
    step = 0.1 * (m / (1 - b1**t)) / (v / (1 - b2**t)).sqrt()
    torch.testing.assert_close(p.detach(), start - step, rtol=1e-12, atol=1e-14)


def test_second_moment_tracks_momentum_not_gradient() -> None:
    """Alternating gradients: Adam's v sees |g| = 1; AdaMomentum's v sees the small momentum,
    so its steps are larger than Adam's."""
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = AdaMomentum([p], lr=0.01)
    adam = gradkit.optim.Adam([q], lr=0.01, eps=1e-16)
    momentum = torch.zeros(4, dtype=torch.float64)
    v = torch.zeros(4, dtype=torch.float64)
    for t in range(1, 11):
        grad = torch.full((4,), (-1.0) ** t, dtype=torch.float64)
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        adam.step()
        momentum = 0.9 * momentum + 0.1 * grad
        v = 0.999 * v + 0.001 * momentum**2 + 1e-16
        torch.testing.assert_close(opt.state[p]["adamomentum.exp_avg_var"], v, rtol=1e-12, atol=0)
    assert p.detach().abs().min() > 2 * q.detach().abs().max()


def test_defaults_and_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["AdaMomentum"]
    assert info.year == 2021 and "2106.11514" in info.url
    assert info.state_bytes_per_param == 8.0
    assert info.defaults["eps"] == 1e-16 and info.defaults["decoupled_weight_decay"] is True
