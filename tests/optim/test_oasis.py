"""OASIS: the adaptive step size against the reference on the concatenated parameters, the
no-curvature case equal to Malitsky-Mishchenko adaptive gradient descent, the warm start, and
convergence to scipy's optimum on L2-regularized logistic regression (scikit-learn digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from gradkit.optim.oasis import OASIS, hutchinson_diagonal
from reference import curvature as ref
from support.harness import grad_sequence, make_params
from support.specs_curvature import gnb_like, signed

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Hundreds of small autograd calls: a second intra-op thread only adds wake-up latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("feed", [None, gnb_like, signed])
def test_adaptive_step_matches_the_reference_on_the_whole_vector(feed) -> None:
    hp = dict(lr=0.05, beta2=0.9, alpha=0.1, adaptive_lr=True, maximize=False)
    params = make_params()
    opt = OASIS(params, **hp)
    flat = _flat(params).detach().clone()
    state: dict = {}
    for t, grads in enumerate(grad_sequence(8), start=1):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        if feed is not None:
            opt.update_hessian([feed(g) for g in grads])
        ref.oasis(flat, _flat(grads), state, t, hp, feed=feed)
        torch.testing.assert_close(_flat(params).detach(), flat, rtol=1e-10, atol=1e-10)
        for p in params:
            assert opt.state[p]["oasis.step_size"].item() == pytest.approx(state["eta"], rel=1e-12)
    assert len({opt.state[p]["oasis.step_size"].item() for p in params}) == 1
    assert state["eta"] != hp["lr"]  # the step size did adapt


def test_without_curvature_it_is_adaptive_gradient_descent() -> None:
    """D = 0 gives D_hat = alpha I: Malitsky & Mishchenko (2020), lambda_k = eta_k / alpha."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(0.5, 8.0, 6, dtype=F64)) @ q.T
    b = torch.randn(6, generator=g, dtype=F64)
    grad = lambda x: a @ x - b  # noqa: E731
    alpha, lam0 = 1e-3, 0.01

    x = torch.zeros(6, dtype=F64, requires_grad=True)
    opt = OASIS([x], lr=lam0 * alpha, alpha=alpha)
    ours = []
    for _ in range(30):
        x.grad = grad(x.detach())
        opt.step()
        ours.append(x.detach().clone())

    prev, cur = torch.zeros(6, dtype=F64), None
    lam, theta = lam0, math.inf
    cur = prev - lam * grad(prev)
    theirs = [cur]
    for _ in range(29):
        bound = (cur - prev).norm() / (2 * (grad(cur) - grad(prev)).norm())
        new_lam = min(math.sqrt(1 + theta) * lam, float(bound))
        theta, lam = new_lam / lam, new_lam
        prev, cur = cur, cur - lam * grad(cur)
        theirs.append(cur)
    for o, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-12)


def test_first_estimate_is_the_warm_start_then_an_ema() -> None:
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = OASIS([p], beta2=0.9)
    opt.update_hessian([torch.tensor([2.0, -4.0, 1e-9], dtype=F64)])
    torch.testing.assert_close(
        opt.state[p]["oasis.hessian"], torch.tensor([2.0, -4.0, 1e-9], dtype=F64)
    )
    opt.update_hessian([torch.tensor([12.0, 6.0, 0.0], dtype=F64)])
    torch.testing.assert_close(
        opt.state[p]["oasis.hessian"], torch.tensor([3.0, -3.0, 9e-10], dtype=F64)
    )
    # the first step is w_0 - eta_0 |D|_alpha^-1 g_0 (the negative entry enters as |D|)
    p.grad = torch.tensor([3.0, 3.0, 1e-4], dtype=F64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, -1.0, -10.0], dtype=F64))


def test_adaptive_lr_cannot_be_switched_on_later() -> None:
    p = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = OASIS([p], lr=0.1, adaptive_lr=False)
    p.grad = torch.ones(2, dtype=F64)
    opt.step()
    assert "oasis.prev_param" not in opt.state[p]
    opt.param_groups[0]["adaptive_lr"] = True
    with pytest.raises(ValueError, match="adaptive_lr"):
        opt.step()


def _digits_problem():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=F64)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)  # bias column
    y = torch.tensor(digits.target % 2 == 0, dtype=F64)  # even vs odd: not separable
    return x, y, 1e-2


def _logistic(w, x, y, lam):
    return F.binary_cross_entropy_with_logits(x @ w, y) + 0.5 * lam * w.square().sum()


def test_converges_to_the_scipy_optimum_on_logistic_regression(one_thread) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    x, y, lam = _digits_problem()

    def fun(w_np):
        w = torch.tensor(w_np, dtype=F64, requires_grad=True)
        loss = _logistic(w, x, y, lam)
        loss.backward()
        return loss.item(), w.grad.numpy()

    best = optimize.minimize(fun, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
                             options=dict(gtol=1e-12, ftol=1e-15, maxiter=10_000))  # fmt: skip
    w_star = torch.tensor(best.x, dtype=F64)
    f_star = _logistic(w_star, x, y, lam).item()

    w = torch.zeros(x.shape[1], dtype=F64, requires_grad=True)
    closure = lambda: _logistic(w, x, y, lam)  # noqa: E731
    opt = OASIS([w])
    gen = torch.Generator().manual_seed(0)
    opt.update_hessian(hutchinson_diagonal(closure, [w], generator=gen, samples=10))  # D_0
    for _ in range(800):
        opt.zero_grad()
        closure().backward()
        opt.step()
        opt.update_hessian(hutchinson_diagonal(closure, [w], generator=gen))
    gap = closure().item() - f_star
    distance = (w.detach() - w_star).norm() / w_star.norm()
    assert gap < 1e-9, gap
    assert distance < 1e-4, distance
    assert opt.state[w]["oasis.step_size"].item() != 1.0  # the step size adapted
