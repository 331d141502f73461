"""Lion: one momentum buffer, a signed step of exactly lr per coordinate, decoupled decay."""

from __future__ import annotations

import torch

import gradkit
from gradkit.optim.lion import Lion


def test_two_steps_by_hand() -> None:
    """b1 = 0.9, b2 = 0.99: c1 = 0.1 g1, m1 = 0.01 g1; c2 = 0.9 m1 + 0.1 g2 (m1 still matters)."""
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Lion([w], lr=0.5, weight_decay=0.2)
    w.grad = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.5, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(opt.state[w]["lion.exp_avg"], 0.01 * w.grad)
    # c2 = 0.9 * [0.01, -0.01, 0] + 0.1 * [-0.05, 0.2, 0] = [0.004, 0.011, 0]
    w.grad = torch.tensor([-0.05, 0.2, 0.0], dtype=torch.float64)
    opt.step()
    decayed = torch.tensor([-0.5, 0.5, 0.0], dtype=torch.float64) * (1 - 0.5 * 0.2)
    expected = decayed - 0.5 * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), expected)


def test_every_coordinate_moves_by_exactly_lr() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=g).requires_grad_()
    opt = Lion([w], lr=1e-3)
    for _ in range(5):
        before = w.detach().clone()
        w.grad = torch.randn(50, generator=g) * torch.logspace(-6, 3, 50)  # wildly varying scale
        opt.step()
        torch.testing.assert_close((w.detach() - before).abs(), torch.full((50,), 1e-3))


def test_registry_entry_and_docstring() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["Lion"]
    assert info.year == 2023 and "2302.06675" in info.url
    assert info.state_bytes_per_param == 4.0
    assert info.defaults["lr"] == 1e-4 and info.defaults["betas"] == (0.9, 0.99)
    assert "3-10x smaller" in Lion.__doc__ and "3-10x larger" in Lion.__doc__
