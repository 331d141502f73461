"""Grams moves every coordinate in the direction of the current gradient, by Adam's amount."""

from __future__ import annotations

import torch

import gradkit
from gradkit.optim.grams import Grams


def _grads(n_steps: int, shape=(6, 5), seed: int = 2) -> list[torch.Tensor]:
    """Gradients whose sign often disagrees with the momentum, with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    grads = []
    for t in range(n_steps):
        grad = torch.randn(shape, generator=g, dtype=torch.float64) + (1.0 if t < 3 else -0.5)
        grad[0, :2] = 0.0
        grads.append(grad)
    return grads


def test_sign_is_the_gradients_and_magnitude_is_adams() -> None:
    lr, eps = 0.01, 1e-6
    w = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = w.clone().requires_grad_()
    adams = w.clone().requires_grad_()
    opt = Grams([ours], lr=lr, eps=eps)
    adam = gradkit.optim.Adam([adams], lr=lr, eps=eps)
    disagreements = 0
    for grad in _grads(8):
        before_ours, before_adam = ours.detach().clone(), adams.detach().clone()
        ours.grad, adams.grad = grad.clone(), grad.clone()
        opt.step()
        adam.step()
        step, adam_step = before_ours - ours.detach(), before_adam - adams.detach()
        assert torch.equal(torch.sign(step), torch.sign(grad))  # zero gradient: no move
        torch.testing.assert_close(
            step.abs(), adam_step.abs() * (grad != 0), rtol=1e-12, atol=1e-15
        )
        assert torch.equal(ours.grad, grad)  # p.grad untouched (official code overwrites it)
        disagreements += int((torch.sign(adam_step) != torch.sign(grad)).sum())
        adams.data.copy_(ours.detach())  # keep both on the same point
    assert disagreements > 10  # Grams really differs from Adam in direction here


def test_eps_placement_uncorrected_is_the_official_step() -> None:
    """eps_placement="uncorrected" is the authors' step,
    lr * sqrt(bc2) / bc1 * sign(g) |m| / (sqrt(v) + eps)."""
    lr, eps, wd, b1, b2 = 0.01, 1e-3, 0.1, 0.9, 0.999
    p = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p.requires_grad_()
    opt = Grams([p], lr=lr, eps=eps, weight_decay=wd, eps_placement="uncorrected")
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    expected = p.detach().clone()
    for t, grad in enumerate(_grads(5, shape=(4, 3)), start=1):
        p.grad = grad.clone()
        opt.step()
        expected = expected * (1 - lr * wd)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        step_size = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        expected = expected - step_size * torch.sign(grad) * m.abs() / (v.sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


def test_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["Grams"]
    assert info.year == 2024 and "2412.17107" in info.url
    assert info.state_bytes_per_param == 8.0
    assert info.defaults["eps"] == 1e-6 and info.defaults["eps_placement"] == "corrected"
