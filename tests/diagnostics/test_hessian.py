"""Curvature tools against brute force: the explicit Hessian and numpy's symmetric solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradkit.diagnostics import hessian as hs


def _mlp_problem(seed: int = 0, hidden: int = 12, batch_norm: bool = False, dropout: float = 0.0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 3)]
    model = nn.Sequential(*layers).double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, (x, y)


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _explicit_hessian(model, loss_fn, batch) -> torch.Tensor:
    """Reference: torch.autograd.functional.hessian of the loss as a function of the flat params."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta):
        chunks, offset = {}, 0
        for n, s in zip(names, shapes, strict=True):
            size = math.prod(s)
            chunks[n] = theta[offset : offset + size].view(s)
            offset += size
        x, y = batch
        return nn.functional.cross_entropy(functional_call(model, chunks, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.fixture(scope="module")
def problem():
    model, batch = _mlp_problem()
    model.eval()
    dense = _explicit_hessian(model, _ce, batch)
    return model, batch, dense, np.linalg.eigh(dense.numpy())[0]


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_hvp_equals_explicit_hessian_times_vector(problem, method):
    model, batch, dense, _ = problem
    op = hs.HessianOperator(model, _ce, [batch], train=False, method=method)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-10, atol=1e-12)
    vec = hs.unflatten(v, op.params)
    hv = hs.hvp(model, _ce, batch, vec, train=False, method=method)
    torch.testing.assert_close(hs.flatten(hv), dense @ v, rtol=1e-10, atol=1e-12)


def test_hvp_split_batches_is_mean_of_batch_hessians(problem):
    model, (x, y), _, _ = problem
    halves = [(x[:20], y[:20]), (x[20:], y[20:])]
    op = hs.HessianOperator(model, _ce, halves, train=False)
    ref = sum(_explicit_hessian(model, _ce, b) for b in halves) / 2
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_top5_matches_eigh(problem):
    model, batch, _, exact = problem
    op = hs.HessianOperator(model, _ce, [batch], train=False)
    assert op.dim > 60  # fewer Lanczos steps than dimensions: a real test of convergence
    res = hs.top_eigenpairs(op, k=5, max_steps=60)
    top = exact[::-1][:5]
    np.testing.assert_allclose(res.eigenvalues.numpy(), top, rtol=1e-4)
    assert res.num_matvecs <= 60
    # eigenvectors: unit norm and H v = lambda v
    for lam, vec in zip(res.eigenvalues, res.eigenvectors, strict=True):
        assert abs(float(vec.norm()) - 1) < 1e-8
        assert float((op.matvec(vec) - lam * vec).norm()) < 1e-4 * abs(float(lam))


def test_lanczos_both_ends_and_smallest(problem):
    model, batch, _, exact = problem
    op = hs.HessianOperator(model, _ce, [batch], train=False)
    both = hs.top_eigenpairs(op, k=3, which="both", max_steps=80).eigenvalues.numpy()
    expected = np.concatenate([exact[::-1][:3], exact[:3][::-1]])
    np.testing.assert_allclose(both, expected, rtol=1e-4, atol=1e-8 * abs(exact).max())
    low = hs.top_eigenpairs(op, k=2, which="smallest", max_steps=80).eigenvalues.numpy()
    np.testing.assert_allclose(low, exact[:2], rtol=1e-4, atol=1e-8 * abs(exact).max())
    assert exact[0] < 0  # the test MLP's Hessian is indefinite, so "smallest" is meaningful


def test_largest_algebraic_not_largest_magnitude():
    values = torch.tensor([-10.0, 1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    op = hs.MatrixOperator(q @ torch.diag(values) @ q.T)
    top = hs.top_eigenpairs(op, k=1).eigenvalues
    assert float(top[0]) == pytest.approx(3.0, rel=1e-10)


def test_lanczos_handles_repeated_eigenvalues_via_restart():
    op = hs.MatrixOperator(torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 1.0], dtype=torch.float64)))
    res = hs.top_eigenpairs(op, k=4, max_steps=5)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [5, 5, 5, 1], rtol=1e-10)


def test_hutchinson_trace_within_statistical_tolerance(problem):
    model, batch, dense, _ = problem
    op = hs.HessianOperator(model, _ce, [batch], train=False)
    est = hs.hutchinson_trace(op, num_probes=300, seed=3)
    exact = float(dense.trace())
    # theoretical Rademacher standard error: sqrt(2 (|H|_F^2 - sum H_ii^2) / N)
    se = math.sqrt(2 * (float(dense.square().sum()) - float(dense.diagonal().square().sum())) / 300)
    assert abs(est.trace - exact) < 4 * se
    assert est.stderr == pytest.approx(se, rel=0.3)


def test_hutchinson_exact_for_diagonal_and_gaussian_unbiased():
    diag = torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64)
    op = hs.MatrixOperator(torch.diag(diag))
    assert hs.hutchinson_trace(op, num_probes=2).trace == pytest.approx(
        float(diag.sum()), abs=1e-12
    )
    est = hs.hutchinson_trace(op, num_probes=4000, distribution="gaussian", seed=1)
    assert abs(est.trace - float(diag.sum())) < 4 * est.stderr


def test_slq_density_integrates_to_one_and_matches_moments(problem):
    _, _, dense, exact = problem
    op = hs.MatrixOperator(dense)  # the MLP's explicit Hessian: products are cheap here
    slq = hs.spectral_density(op, num_runs=40, num_steps=25, seed=0)
    grid, values = slq.density()
    assert float(torch.trapezoid(values, grid)) == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(slq.weights.sum(dim=1), torch.ones(40, dtype=torch.float64))
    n = op.dim
    mean, second = exact.mean(), (exact**2).mean()
    # per-probe variance of v^T H^p v / n, Rademacher: 2 (|A|_F^2 - sum A_ii^2) / n^2
    for p, target in ((1, mean), (2, second)):
        a = np.linalg.matrix_power(dense.numpy(), p)
        var = 2 * ((a**2).sum() - (np.diag(a) ** 2).sum()) / n**2
        assert abs(slq.moment(p) - target) < 4 * math.sqrt(var / 40)
    # the support of the Ritz values lies within [lambda_min, lambda_max]
    assert float(slq.nodes.min()) >= exact[0] - 1e-8 and float(slq.nodes.max()) <= exact[-1] + 1e-8


def test_slq_quadrature_exact_on_low_degree_polynomials():
    """Gauss quadrature with m nodes is exact for degree <= 2m-1: per probe q^T H^p q."""
    torch.manual_seed(0)
    a = torch.randn(30, 30, dtype=torch.float64)
    mat = (a + a.T) / 2
    op = hs.MatrixOperator(mat)
    nodes, weights = hs.lanczos_tridiagonal(op, 4, seed=5)
    gen = hs._generator(5)
    q = hs._random_vector("rademacher", 30, torch.float64, "cpu", gen)
    q = q / q.norm()
    for p in range(8):
        exact = float(q @ torch.linalg.matrix_power(mat, p) @ q)
        assert float((weights * nodes**p).sum()) == pytest.approx(exact, rel=1e-8, abs=1e-8)


def test_subspace_overlap_one_inside_zero_orthogonal(problem):
    model, batch, _, _ = problem
    op = hs.HessianOperator(model, _ce, [batch], train=False)
    basis = hs.top_eigenpairs(op, k=4, max_steps=60).eigenvectors
    inside = 0.3 * basis[0] - 2.0 * basis[2]
    assert hs.subspace_overlap(inside, basis) == pytest.approx(1.0, abs=1e-10)
    outside = torch.randn(op.dim, dtype=torch.float64)
    outside = outside - basis.T @ (basis @ outside)
    assert hs.subspace_overlap(outside, basis) == pytest.approx(0.0, abs=1e-10)
    overlap = hs.gradient_subspace_overlap(op, k=4, max_steps=60)
    assert 0.0 <= overlap <= 1.0


def test_train_mode_batchnorm_dropout_is_a_fixed_symmetric_operator():
    model, batch = _mlp_problem(hidden=5, batch_norm=True, dropout=0.3)
    before = [b.clone() for b in model.buffers()]
    ops = [
        hs.HessianOperator(model, _ce, [batch], train=True, method=m)
        for m in ("double_backward", "func")
    ]
    h = [op.dense() for op in ops]
    torch.testing.assert_close(h[0], h[0].T, rtol=1e-8, atol=1e-10)  # same masks every product
    torch.testing.assert_close(h[0], h[1], rtol=1e-8, atol=1e-10)
    for b, saved in zip(model.buffers(), before, strict=True):  # running stats untouched
        torch.testing.assert_close(b, saved)
    assert model.training  # mode restored
    eval_op = hs.HessianOperator(model, _ce, [batch], train=False)
    assert not torch.allclose(eval_op.dense(), h[0])  # the two modes are different functions


def test_cached_graph_follows_parameter_updates(problem):
    model, batch, _, _ = problem
    model = _mlp_problem(seed=4)[0].eval()
    op = hs.HessianOperator(model, _ce, [batch], train=False)
    v = torch.randn(op.dim, dtype=torch.float64)
    first = op.matvec(v)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    fresh = hs.HessianOperator(model, _ce, [batch], train=False).matvec(v)
    torch.testing.assert_close(op.matvec(v), fresh)
    assert not torch.allclose(first, fresh)


def test_stability_threshold_and_tracker():
    assert hs.stability_threshold(0.01) == pytest.approx(200.0)
    assert hs.stability_threshold(0.01, 0.9) == pytest.approx(380.0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    assert hs.optimizer_threshold(opt) == pytest.approx(30.0)
    op = hs.MatrixOperator(torch.diag(torch.tensor([25.0, 1.0], dtype=torch.float64)))
    tracker = hs.SharpnessTracker(lr=0.1, momentum=0.5)
    rec = tracker.measure(0, op)
    assert rec.sharpness == pytest.approx(25.0) and rec.ratio == pytest.approx(25 / 30)
    with pytest.raises(ValueError, match="nesterov"):
        hs.optimizer_threshold(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, nesterov=True)
        )


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda op: hs.top_eigenpairs(op, k=0), "Invalid k: 0"),
        (lambda op: hs.top_eigenpairs(op, which="magnitude"), "Invalid which"),
        (lambda op: hs.hutchinson_trace(op, num_probes=0), "Invalid num_probes: 0"),
        (lambda op: hs.spectral_density(op, num_runs=-1), "Invalid num_runs: -1"),
        (lambda op: op.matvec(torch.zeros(3)), "Invalid vector"),
        (lambda op: hs.stability_threshold(-1.0), "Invalid lr: -1.0"),
    ],
)
def test_bad_input_is_named(call, needle):
    op = hs.MatrixOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=needle):
        call(op)


def test_train_must_be_chosen_explicitly():
    model, batch = _mlp_problem()
    with pytest.raises(ValueError, match="Invalid train: None"):
        hs.HessianOperator(model, _ce, [batch], train=None)
