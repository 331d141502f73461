"""AuON: the cosh-RMS rule's properties (scale invariance, trust region, tail damping) and
Hybrid-AuON."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.optim.auon import AuON, cosh_rms_scale
from gradkit.transforms.orthogonalize import newton_schulz


def _first_step(grad: torch.Tensor, **kwargs) -> torch.Tensor:
    """The change of a zero parameter after one step at lr=1 (no decay)."""
    p = torch.zeros_like(grad, requires_grad=True)
    opt = AuON([p], lr=1.0, weight_decay=0.0, **kwargs)
    p.grad = grad.clone()
    opt.step()
    return -p.detach()


def _grad(shape=(6, 4), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_step_is_scale_invariant() -> None:
    g = _grad()  # invariant up to the eps terms, so compare where they are negligible
    torch.testing.assert_close(_first_step(1e6 * g), _first_step(1e3 * g), rtol=1e-9, atol=0)
    assert not torch.allclose(_first_step(1e-6 * g), _first_step(g), rtol=1e-3)  # eps matters


def test_step_lies_in_the_unit_spectral_ball() -> None:
    for shape in [(4, 6), (16, 16), (3, 40)]:  # wide or square: the lr factor is 1
        step = _first_step(_grad(shape))
        spectral = torch.linalg.matrix_norm(step, ord=2)
        frobenius = torch.linalg.matrix_norm(step)
        # ||U||_2 <= ||U||_F = 1 / rms(cosh X) < 1, and it stays a rescaling of the momentum
        assert spectral <= frobenius < 1.0
        direction = _grad(shape) / torch.linalg.matrix_norm(_grad(shape))
        rms = torch.cosh(direction).square().mean().sqrt()
        torch.testing.assert_close(step, direction / (rms + 1e-8), rtol=1e-6, atol=0)


def test_tall_matrices_get_muons_aspect_factor() -> None:
    g = _grad((24, 6))
    step = _first_step(g)
    x = g / torch.linalg.matrix_norm(g)
    expected = 2.0 * x / torch.cosh(x).square().mean().sqrt()  # sqrt(24 / 6) = 2
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=0)


def test_spiky_updates_are_shrunk_more_than_flat_ones() -> None:
    spiky = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    flat = torch.full((2, 2), 0.5, dtype=torch.float64)  # same Frobenius norm
    for gamma in (1.0, 1.5):
        shrink = {
            name: torch.linalg.matrix_norm(cosh_rms_scale(x, gamma)).item()
            for name, x in (("spiky", spiky), ("flat", flat))
        }
        assert shrink["spiky"] < shrink["flat"] < 1.0
        # closed form: 1 / sqrt(mean cosh(gamma x)^2)
        expected = 1 / math.sqrt((math.cosh(gamma) ** 2 + 3) / 4)
        assert shrink["spiky"] == pytest.approx(expected, rel=1e-7)


def test_gamma_sharpens_the_brake() -> None:
    g = _grad()
    norms = [torch.linalg.matrix_norm(_first_step(g, gamma=gm)) for gm in (0.5, 1.0, 3.0)]
    assert norms[0] > norms[1] > norms[2]


def test_hybrid_uses_newton_schulz_then_the_cosh_scaling() -> None:
    g = _grad((5, 8))
    for steps in (1, 3):
        step = _first_step(g, hybrid=True, ns_steps=steps)
        ortho = newton_schulz(g, steps, dtype=None)
        expected = ortho / torch.cosh(ortho).square().mean().sqrt()
        torch.testing.assert_close(step, expected, rtol=1e-6, atol=0)
    # one iteration already spreads the spectrum less than the plain normalised momentum does
    plain = torch.linalg.svdvals(_first_step(g))
    hybrid = torch.linalg.svdvals(_first_step(g, hybrid=True))
    assert hybrid.max() / hybrid.min() < plain.max() / plain.min()


def test_momentum_is_nesterov_ema() -> None:
    g1, g2 = _grad(seed=1), _grad(seed=2)
    p = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
    opt = AuON([p], lr=1.0, weight_decay=0.0, momentum=0.9)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    buffer = 0.9 * (0.1 * g1) + 0.1 * g2
    torch.testing.assert_close(opt.state[p]["auon.momentum_buffer"], buffer)


def test_vectors_go_to_adamw_and_matrices_can_too() -> None:
    w, b = torch.zeros(4, 3), torch.zeros(4)
    opt = AuON([{"params": [w]}, {"params": [b]}, {"params": [], "use_auon": False}])
    for p in (w, b):
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[w]["auon.momentum_buffer"].shape == w.shape
    assert opt.state[b]["auon.exp_avg"].shape == b.shape
    with pytest.raises(ValueError, match="use_auon"):
        AuON([{"params": [b], "use_auon": True}])


def test_matrix_path_converges_on_least_squares() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 16, generator=g, dtype=torch.float64)
    target = a @ torch.randn(8, 16, generator=g, dtype=torch.float64).T
    for hybrid in (False, True):
        w = torch.zeros(8, 16, dtype=torch.float64, requires_grad=True)
        opt = AuON([w], lr=0.2, hybrid=hybrid)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / 300)
        start = ((a @ w.T - target) ** 2).mean().item()
        for _ in range(300):
            opt.zero_grad()
            loss = ((a @ w.T - target) ** 2).mean()
            loss.backward()
            opt.step()
            schedule.step()
        assert loss.item() < 1e-2 * start, (hybrid, loss.item(), start)
