"""LAMB and the shared trust-ratio transform: the step of each tensor has norm lr * phi(||w||),
zero norms give a ratio of 1, the bounds clamp phi, and layer_adaptation=False is AdamW."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.lamb import LAMB
from gradkit.transforms.trust_ratio import scale_by_trust_ratio

F64 = torch.float64


def _params(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64, requires_grad=True) for s in [(6, 5), (7,)]]


def _grads(gen):
    return [torch.randn(s, generator=gen, dtype=F64) for s in [(6, 5), (7,)]]


def test_each_tensor_moves_by_lr_times_its_norm() -> None:
    params = _params()
    opt = LAMB(params, lr=0.01, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, _grads(gen), strict=True):
            p.grad = 100.0 * g  # the gradient scale does not matter
        opt.step()
        for p, b in zip(params, before, strict=True):
            moved = torch.linalg.vector_norm(p.detach() - b)
            assert moved.item() == pytest.approx(0.01 * torch.linalg.vector_norm(b).item())


def test_weight_norm_bounds_clamp_phi() -> None:
    for norm, expected in ((5.0, 2.0), (0.25, 0.5), (1.0, 1.0)):
        w = torch.tensor([0.6 * norm, 0.8 * norm], dtype=F64, requires_grad=True)
        opt = LAMB([w], lr=0.1, weight_norm_bounds=(0.5, 2.0))
        before = w.detach().clone()
        w.grad = torch.tensor([1.0, -3.0], dtype=F64)
        opt.step()
        assert torch.linalg.vector_norm(w.detach() - before).item() == pytest.approx(0.1 * expected)


def test_zero_weight_norm_gives_ratio_one_and_zero_update_no_nan() -> None:
    zero = torch.zeros(3, dtype=F64, requires_grad=True)
    still = torch.ones(3, dtype=F64, requires_grad=True)
    copy = zero.detach().clone().requires_grad_()
    opt = LAMB([zero, still], lr=0.1, eps=1e-6)
    adamw = torch.optim.AdamW([copy], lr=0.1, eps=1e-6, weight_decay=0.0)
    zero.grad = copy.grad = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    still.grad = torch.zeros(3, dtype=F64)  # r = 0 and wd = 0: ||u|| = 0
    opt.step()
    adamw.step()
    torch.testing.assert_close(zero.detach(), copy.detach())  # ratio 1: plain AdamW
    assert torch.equal(still.detach(), torch.ones(3, dtype=F64))


def test_layer_adaptation_off_in_a_group_is_adamw() -> None:
    adapted, plain = _params()
    copy = plain.detach().clone().requires_grad_()
    opt = LAMB([{"params": [adapted]}, {"params": [plain], "layer_adaptation": False}],
               lr=0.01, weight_decay=0.1)  # fmt: skip
    adamw = torch.optim.AdamW([copy], lr=0.01, eps=1e-6, weight_decay=0.1)
    gen = torch.Generator().manual_seed(2)
    start = adapted.detach().clone()
    for _ in range(4):
        grads = _grads(gen)
        adapted.grad, plain.grad, copy.grad = grads[0], grads[1].clone(), grads[1].clone()
        opt.step()
        adamw.step()
    torch.testing.assert_close(plain.detach(), copy.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.equal(adapted.detach(), start)


def test_bias_correction_off_uses_the_raw_moments() -> None:
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LAMB([w], lr=1.0, bias_correction=False, eps=1e-6, layer_adaptation=False)
    w.grad = torch.tensor([1.0, 1.0], dtype=F64)
    opt.step()
    # m = 0.1, v = 0.001: r = 0.1 / (sqrt(0.001) + 1e-6) (with correction it would be ~1)
    r = 0.1 / (0.001**0.5 + 1e-6)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - r, 4.0 - r], dtype=F64))


def test_trust_ratio_transform_is_scale_invariant_and_exposes_only_given_hyperparameters() -> None:
    t = gradkit.chain(scale_by_trust_ratio(weight_norm_bounds=(0.0, 10.0)))
    w = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64)
    u = torch.tensor([[0.5, -1.0], [3.0, 0.0]], dtype=F64)
    out = [t.update([k * u], t.init([w]), [w])[0] for k in (1e-3, 1.0, 1e3)]
    for o in out:
        torch.testing.assert_close(o, u * (5.0 / torch.linalg.vector_norm(u)))
    opt = LAMB([torch.zeros(2, requires_grad=True)])
    assert "trust_coefficient" not in opt.param_groups[0]
    with pytest.raises(TypeError, match="weight_decay"):
        scale_by_trust_ratio(weight_decay=0.1)
