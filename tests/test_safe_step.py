"""The Ghosts-of-Softmax radius and the SafeStep controller."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

import gradkit
from gradkit.demo import load_digits_split
from gradkit.safe_step import logit_directional_derivatives


def _model(seed=0, classes=5):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, classes)
    ).double()


def _direction(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]


def test_jvp_matches_finite_differences_of_the_logits():
    model, x = _model(), torch.randn(7, 6, dtype=torch.float64)
    d = _direction(model)
    a = logit_directional_derivatives(model, x, d)
    h = 1e-5

    def logits_at(shift: float) -> torch.Tensor:
        with torch.no_grad():
            for p, di in zip(model.parameters(), d, strict=True):
                p.add_(shift * di)
            out = model(x)
            for p, di in zip(model.parameters(), d, strict=True):
                p.sub_(shift * di)
        return out

    central = (logits_at(h) - logits_at(-h)) / (2 * h)
    torch.testing.assert_close(a, central, rtol=1e-7, atol=1e-8)


def test_radius_is_sign_and_scale_invariant():
    model, x = _model(), torch.randn(7, 6, dtype=torch.float64)
    d = _direction(model)
    rho = gradkit.softmax_radius(model, x, d)
    assert rho == pytest.approx(gradkit.softmax_radius(model, x, [-t for t in d]), rel=1e-12)
    assert rho == pytest.approx(gradkit.softmax_radius(model, x, [3.7 * t for t in d]), rel=1e-12)
    assert gradkit.softmax_radius(model, x, [torch.zeros_like(t) for t in d]) == math.inf


def _zeros_of_partition_function(z, a, radius):
    """Complex zeros of F(tau) = sum_k exp(z_k + a_k tau) within ``radius``, by Newton from a grid."""
    f = lambda t: sum(mpmath.exp(zk + ak * t) for zk, ak in zip(z, a, strict=True))  # noqa: E731
    roots = []
    for re in range(-12, 13):
        for im in range(-12, 13):
            start = mpmath.mpc(re * radius / 12, im * radius / 12)
            try:
                root = mpmath.findroot(f, start, tol=1e-20, maxsteps=60)
            except (ValueError, ZeroDivisionError):
                continue
            if abs(f(root)) < 1e-12 and abs(root) <= radius:
                roots.append(root)
    return roots


def test_binary_exact_radius_is_the_nearest_zero():
    z, a = [0.3, -1.9], [1.1, -0.4]
    rho = gradkit.binary_exact_radius(z[0] - z[1], a[0] - a[1])
    roots = _zeros_of_partition_function(z, a, 2 * rho)
    assert roots, "no zero found within twice the radius"
    assert min(abs(r) for r in roots) == pytest.approx(rho, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_radius_is_a_lower_bound_on_the_nearest_zero(seed):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(5, generator=g) * 2).tolist()
    a = (torch.randn(5, generator=g) * 1.5).tolist()
    rho = math.pi / (max(a) - min(a))
    roots = _zeros_of_partition_function(z, a, 4 * rho)
    assert roots, "no zero found within four times the bound"
    assert min(abs(r) for r in roots) >= rho * (1 - 1e-9)


def test_logit_range_proxy_is_named_apart_and_direction_free():
    logits = torch.tensor([[0.0, 2.0, -1.0], [0.5, 0.5, 0.5]])
    assert gradkit.logit_range_radius(logits) == pytest.approx(math.pi / 3.0)


def test_binary_radius_validates():
    with pytest.raises(ValueError, match="delta_a"):
        gradkit.binary_exact_radius(1.0, -1.0)
    assert gradkit.binary_exact_radius(1.0, 0.0) == math.inf


def test_safe_step_caps_the_step_and_leaves_small_steps_alone():
    model, x = _model(), torch.randn(16, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    for lr, capped in ((1e3, True), (1e-4, False)):
        opt = gradkit.SafeStep(torch.optim.SGD(model.parameters(), lr=lr), model)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(x)
        moved = math.sqrt(
            sum(
                float((p.detach() - b).square().sum())
                for p, b in zip(model.parameters(), before, strict=True)
            )
        )
        if capped:
            assert opt.last["r"] > 1 and moved == pytest.approx(opt.last["rho"], rel=1e-9)
        else:
            assert opt.last["scale"] == 1.0 and moved == pytest.approx(opt.last["tau"], rel=1e-9)
    with pytest.raises(ValueError, match="ratio"):
        gradkit.SafeStep(torch.optim.SGD(model.parameters(), lr=0.1), model, ratio=0.0)


def _train_through_a_spike(mode: str) -> tuple[float, float]:
    """Adam on the digits MLP with a 1,000x learning-rate spike for 10 steps (steps 100-109)."""
    x_tr, y_tr, x_va, y_va = load_digits_split(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    opt = gradkit.optim.Adam(model.parameters(), lr=1e-3)
    safe = gradkit.SafeStep(opt, model)
    g = torch.Generator().manual_seed(1)
    for t in range(130):
        idx = torch.randint(0, len(x_tr), (64,), generator=g)
        opt.param_groups[0]["lr"] = 1e-3 * (1000.0 if 100 <= t < 110 else 1.0)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
        if mode == "clip":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        else:
            safe.step(x_tr[idx])
    with torch.no_grad():
        logits = model(x_va)
        return (logits.argmax(1) == y_va).float().mean().item(), torch.nn.functional.cross_entropy(
            logits, y_va
        ).item()


def test_safe_step_survives_a_1000x_lr_spike_where_clipping_does_not():
    clip_acc, clip_loss = _train_through_a_spike("clip")
    safe_acc, safe_loss = _train_through_a_spike("safe")
    assert safe_acc > 0.9 and safe_loss < 0.5
    assert clip_loss > 5 * safe_loss and clip_acc < safe_acc - 0.05
