"""Gravity: seeded random initial velocity, the saturating step, and the warming-up average."""

from __future__ import annotations

import torch

import gradkit
from gradkit.optim.gravity import Gravity
from reference import sign_misc as ref
from support.harness import (
    checkpoint_roundtrip,
    grad_sequence,
    make_params,
    quadratic_problem,
    rosenbrock,
    run,
)


def _documented_initial_velocity(params, alpha, lr, seed):
    """The docstring's rule, written independently: one CPU generator, parameters in order."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) * (alpha / lr) for p in params]


def test_matches_reference_from_the_documented_random_start() -> None:
    hp = {"lr": 0.05, "alpha": 0.02, "beta": 0.9}
    params = make_params()
    ref_params = [p.detach().clone() for p in params]
    states = [{"v": v} for v in _documented_initial_velocity(params, 0.02, 0.05, seed=7)]
    opt = Gravity(params, lr=0.05, alpha=0.02, seed=7)
    for t, grads in enumerate(grad_sequence(6), start=1):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for rp, g, st in zip(ref_params, grads, states, strict=True):
            ref.gravity(rp, g, st, t, hp)
        for p, rp, st in zip(params, ref_params, states, strict=True):
            torch.testing.assert_close(p.detach(), rp, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(opt.state[p]["gravity.velocity"], st["v"])


def test_seed_makes_runs_reproducible_and_distinct() -> None:
    def final(seed):
        params = make_params()
        run(Gravity(params, seed=seed), params, grad_sequence(3))
        return torch.cat([p.detach().flatten() for p in params])

    assert torch.equal(final(1), final(1))
    assert not torch.equal(final(1), final(2))


def test_resume_after_the_first_step_ignores_the_seed() -> None:
    """The velocity is state: a checkpoint after step 1 carries it, so resuming is bit-exact."""
    grads = grad_sequence(4)
    a = make_params()
    run(Gravity(a, seed=5), a, grads)
    b = make_params()
    opt = Gravity(b, seed=5)
    run(opt, b, grads[:1])
    saved = checkpoint_roundtrip(opt.state_dict())
    resumed = Gravity(b, seed=999)  # a different seed must not matter once the state exists
    resumed.load_state_dict(saved)
    run(resumed, b, grads[1:])
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_step_saturates_and_first_average_is_one_half() -> None:
    """From rest, step 1 is lr * zeta / 2 (beta_hat = 1/2 at the paper's t = 0); zeta = g/(1+g^2
    max|g|^2) peaks at |g| = 1/max|g| and falls beyond it, so the largest gradient gets a small
    step."""
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Gravity([w], lr=1.0, alpha=0.0)
    g = torch.tensor([0.25, 0.5, 2.0], dtype=torch.float64)  # max|g| = 2, peak at |g| = 0.5
    w.grad = g
    opt.step()
    zeta = g / (1 + (g * 2.0) ** 2)
    torch.testing.assert_close(w.detach(), -zeta / 2)
    assert zeta[1] > zeta[0] and zeta[1] > zeta[2]  # 0.25 > 0.2 > 0.1176


def test_converges_on_the_quadratic_and_a_gently_scaled_rosenbrock() -> None:
    """Gravity's step vanishes for |g| >> 1 (Rosenbrock's start has |g| ~ 155), by design; on the
    same valley scaled by 0.01 it converges."""
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = Gravity([xy], lr=0.5)
    for _ in range(3000):
        opt.zero_grad()
        (0.01 * rosenbrock(xy)).backward()
        opt.step()
    assert rosenbrock(xy).item() < 1e-3 * 12.5
    a, b, optimum = quadratic_problem()
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = Gravity([x])
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * x @ a @ x - b @ x).backward()
        opt.step()
    assert torch.linalg.vector_norm(x.detach() - optimum) < 0.05 * torch.linalg.vector_norm(optimum)


def test_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["Gravity"]
    assert info.year == 2021 and "2101.09192" in info.url
    assert info.state_bytes_per_param == 4.0
    assert (info.defaults["lr"], info.defaults["alpha"], info.defaults["beta"]) == (0.1, 0.01, 0.9)
