"""LARS: the paper's local learning rate (sum of norms), zero-norm ratios, the learning rate inside
the momentum buffer, and layer_adaptation=False being torch's momentum SGD."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.lars import LARS

F64 = torch.float64


def test_local_learning_rate_uses_the_sum_of_norms() -> None:
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.1, trust_coefficient=0.01)
    g = torch.tensor([0.0, 10.0], dtype=F64)
    w.grad = g.clone()
    opt.step()
    local = 0.01 * 5.0 / (10.0 + 0.1 * 5.0)  # Optax's ||g + wd w|| would give 0.05 / 10.41
    expected = torch.tensor([3.0, 4.0], dtype=F64) - local * (g + 0.1 * torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(w.detach(), expected.to(F64))


def test_ratio_is_one_for_zero_weights_and_the_gradient_scale_does_not_matter() -> None:
    zero = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = LARS([zero], lr=0.5, momentum=0.0)
    zero.grad = torch.tensor([1.0, -2.0, 2.0], dtype=F64)
    opt.step()
    torch.testing.assert_close(zero.detach(), -0.5 * torch.tensor([1.0, -2.0, 2.0], dtype=F64))

    moved = []
    for scale in (1e-3, 1.0, 1e3):
        w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
        opt = LARS([w], lr=1.0, momentum=0.0)
        w.grad = scale * torch.tensor([1.0, 1.0], dtype=F64)
        opt.step()
        moved.append(torch.linalg.vector_norm(w.detach() - torch.tensor([3.0, 4.0], dtype=F64)))
    assert all(m.item() == pytest.approx(1e-3 * 5.0) for m in moved)  # eta ||w||, whatever ||g||

    # zero gradient and no decay: denominator 0, ratio 1, nothing moves and nothing is NaN
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LARS([w])
    w.grad = torch.zeros(2, dtype=F64)
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0], dtype=F64))


def test_learning_rate_is_inside_the_momentum_buffer() -> None:
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LARS([w], lr=1.0, momentum=0.9, trust_coefficient=0.1)
    g = torch.tensor([0.0, 1.0], dtype=F64)
    w.grad = g.clone()
    opt.step()
    lam1 = 0.1 * 5.0 / 1.0
    v1 = 1.0 * lam1 * g
    opt.param_groups[0]["lr"] = 0.1  # a schedule step: the past update keeps its lr
    w_norm = torch.linalg.vector_norm(w.detach())
    w.grad = g.clone()
    opt.step()
    v2 = 0.9 * v1 + 0.1 * (0.1 * w_norm / 1.0) * g
    expected = torch.tensor([3.0, 4.0], dtype=F64) - v1 - v2
    torch.testing.assert_close(w.detach(), expected)
    # timm/apex form (lr outside the buffer) would move by 0.1 * (0.9 * lam1 g + lam2 g) instead
    timm = torch.tensor([3.0, 4.0], dtype=F64) - v1 - 0.1 * (0.9 * lam1 * g + 0.1 * w_norm * g)
    assert not torch.allclose(w.detach(), timm)


def test_layer_adaptation_off_in_a_group_is_torch_momentum_sgd() -> None:
    gen = torch.Generator().manual_seed(0)
    adapted = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    plain = torch.randn(5, generator=gen, dtype=F64, requires_grad=True)
    copy = plain.detach().clone().requires_grad_()
    opt = LARS([{"params": [adapted]}, {"params": [plain], "layer_adaptation": False}],
               lr=0.1, momentum=0.9, weight_decay=0.01)  # fmt: skip
    sgd = torch.optim.SGD([copy], lr=0.1, momentum=0.9, weight_decay=0.01)
    start = adapted.detach().clone()
    for _ in range(5):
        adapted.grad = torch.randn(4, 3, generator=gen, dtype=F64)
        g = torch.randn(5, generator=gen, dtype=F64)
        plain.grad, copy.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
    torch.testing.assert_close(plain.detach(), copy.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.equal(adapted.detach(), start)
