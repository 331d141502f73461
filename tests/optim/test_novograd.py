"""NovoGrad: the second moment is one scalar per tensor, the first step is normalized by the layer
norm, eps sits outside the root, and grad averaging scales the weight-decay term too."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.novograd import NovoGrad

F64 = torch.float64


def test_second_moment_is_one_scalar_per_tensor() -> None:
    w = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    opt = NovoGrad([w], betas=(0.9, 0.5))
    g1, g2 = torch.full((3, 4), 2.0, dtype=F64), torch.full((3, 4), 1.0, dtype=F64)
    w.grad = g1
    opt.step()
    v = opt.state[w]["novograd.exp_avg_sq"]
    assert v.dim() == 0 and v.item() == pytest.approx(48.0)  # ||g_1||^2, no EMA at step 1
    w.grad = g2
    opt.step()
    assert v.item() == pytest.approx(0.5 * 48.0 + 0.5 * 12.0)


def test_first_step_is_the_layer_normalized_gradient_whatever_its_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 2, generator=gen, dtype=F64)
    results = []
    for scale in (1e-3, 1.0, 1e3):
        w = torch.zeros(5, 2, dtype=F64, requires_grad=True)
        opt = NovoGrad([w], lr=0.1, eps=1e-12)
        w.grad = scale * g
        opt.step()
        results.append(w.detach().clone())
    expected = -0.1 * g / torch.linalg.vector_norm(g)
    for r in results:
        torch.testing.assert_close(r, expected, rtol=1e-8, atol=1e-10)


def test_eps_is_added_outside_the_root() -> None:
    w = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = NovoGrad([w], lr=1.0, eps=1.0)
    w.grad = torch.tensor([3.0, 4.0], dtype=F64)
    opt.step()
    # g / (||g|| + eps) = g / 6; inside the root (OpenSeq2Seq) it would be g / sqrt(26)
    torch.testing.assert_close(w.detach(), -torch.tensor([3.0, 4.0], dtype=F64) / 6.0)


def test_grad_averaging_scales_gradient_and_weight_decay_terms() -> None:
    g = torch.tensor([3.0, 4.0], dtype=F64)
    start = torch.tensor([1.0, -1.0], dtype=F64)
    moved = {}
    for averaging in (False, True):
        w = start.clone().requires_grad_()
        opt = NovoGrad([w], lr=1.0, betas=(0.8, 0.9), eps=1e-12, weight_decay=0.5,
                       grad_averaging=averaging)  # fmt: skip
        w.grad = g.clone()
        opt.step()
        moved[averaging] = start - w.detach()
    torch.testing.assert_close(moved[False], g / 5.0 + 0.5 * start)
    torch.testing.assert_close(moved[True], 0.2 * moved[False])


def test_first_step_is_the_step_count_not_a_zero_moment() -> None:
    """NeMo/OpenSeq2Seq re-initialize v from ||g||^2 whenever v == 0 (e.g. after an all-zero
    gradient); here v_2 is the EMA (1 - b2) ||g_2||^2."""
    w = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = NovoGrad([w], betas=(0.9, 0.5))
    w.grad = torch.zeros(2, dtype=F64)
    opt.step()
    assert torch.equal(w.detach(), torch.zeros(2, dtype=F64))
    w.grad = torch.tensor([3.0, 4.0], dtype=F64)
    opt.step()
    assert opt.state[w]["novograd.exp_avg_sq"].item() == pytest.approx(0.5 * 25.0)


def test_momentum_accumulates_without_dampening() -> None:
    w = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = NovoGrad([w], lr=1.0, betas=(0.5, 0.98), eps=1e-12)
    g = torch.tensor([0.0, 2.0], dtype=F64)
    for _ in range(2):
        w.grad = g.clone()
        opt.step()
    # m_1 = (0, 1); v_2 = ||g||^2 again, so m_2 = 0.5 m_1 + (0, 1): total move 1 + 1.5
    torch.testing.assert_close(w.detach(), torch.tensor([0.0, -2.5], dtype=F64))
