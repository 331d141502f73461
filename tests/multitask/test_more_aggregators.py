"""NashMTL, GradVac and AlignedMTL: golden values (TorchJD test_values.py), paper equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradkit.multitask.aligned_mtl import AlignedMTL
from gradkit.multitask.gradvac import GradVac
from gradkit.multitask.nash_mtl import NashMTL
from gradkit.multitask.pcgrad import PCGrad

J_GOLDEN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("make", "expected", "weights"),
    [
        (lambda: NashMTL(), [0.0542, 0.7061, 0.7061], None),
        (lambda: GradVac(generator=0), [0.5848, 3.8012, 3.8012], [2.2222, 1.5789]),
        (lambda: AlignedMTL(), [0.2133, 0.9673, 0.9673], [0.5591, 0.4083]),
    ],
)
def test_golden_values(make, expected, weights):
    for dtype in (torch.float32, torch.float64):
        out = make()(J_GOLDEN.to(dtype))
        assert out.dtype == dtype and not out.requires_grad
        torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype), atol=1e-4, rtol=0)
        if weights is not None:
            torch.testing.assert_close(
                make().weights(J_GOLDEN.to(dtype)),
                torch.tensor(weights, dtype=dtype),
                atol=1e-4,
                rtol=0,
            )


# ----------------------------------------------------------------------------- Nash-MTL


def test_nash_weights_solve_bargaining_equation():
    torch.manual_seed(0)
    for m in (2, 3, 5):
        matrix = torch.randn(m, 12, dtype=torch.float64) * torch.rand(m, 1, dtype=torch.float64)
        alpha = NashMTL(max_norm=0.0).weights(matrix)
        gram = matrix @ matrix.T
        assert bool((alpha > 0).all())
        torch.testing.assert_close((gram @ alpha) * alpha, torch.ones(m, dtype=torch.float64))
        # every task improves equally in "log" terms: g_i . d = 1 / alpha_i
        torch.testing.assert_close(matrix @ NashMTL(max_norm=0.0)(matrix), 1.0 / alpha)


def test_nash_two_tasks_matches_scipy_and_hand():
    from scipy.optimize import fsolve

    gram = (J_GOLDEN @ J_GOLDEN.T).numpy()
    ref = fsolve(lambda a: gram @ a - 1.0 / a, np.ones(2), xtol=1e-14)
    alpha = NashMTL(max_norm=0.0).weights(J_GOLDEN)
    torch.testing.assert_close(alpha, torch.tensor(ref, dtype=torch.float64))
    # orthogonal gradients: G diagonal, alpha_i = 1 / |g_i| (hand computation)
    diag = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(
        NashMTL(max_norm=0.0).weights(diag), torch.tensor([1 / 3, 2.0]).double()
    )


def test_nash_max_norm_and_special_cases():
    out = NashMTL(max_norm=0.0)(J_GOLDEN)
    assert out.norm().item() == pytest.approx(math.sqrt(2))  # |d|^2 = alpha^T G alpha = m
    clipped = NashMTL(max_norm=0.5)(J_GOLDEN)
    torch.testing.assert_close(clipped, out * 0.5 / out.norm())
    torch.testing.assert_close(NashMTL(max_norm=10.0)(J_GOLDEN), out)
    g = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(NashMTL(max_norm=0.0)(g), g[0] / g.norm())
    torch.testing.assert_close(NashMTL()(torch.zeros(3, 4)), torch.zeros(4))
    # Pareto-stationary (0 in the convex hull): no fixed point; finite weights, ~zero direction
    stationary = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=torch.float64)
    assert bool(torch.isfinite(NashMTL().weights(stationary)).all())
    torch.testing.assert_close(NashMTL()(stationary), torch.zeros(2, dtype=torch.float64))
    # scale equivariance of the weights: alpha(cJ) = alpha(J) / c
    torch.testing.assert_close(
        NashMTL(max_norm=0.0).weights(1e3 * J_GOLDEN), NashMTL(max_norm=0.0).weights(J_GOLDEN) / 1e3
    )


def test_nash_update_every_and_state_dict():
    torch.manual_seed(1)
    mats = [torch.randn(3, 6, dtype=torch.float64) for _ in range(5)]
    agg = NashMTL(max_norm=0.0, update_weights_every=2)
    weights = [agg.weights(mat) for mat in mats[:3]]
    torch.testing.assert_close(weights[0], NashMTL(max_norm=0.0).weights(mats[0]))
    torch.testing.assert_close(weights[1], weights[0])  # reused on the second call
    torch.testing.assert_close(weights[2], NashMTL(max_norm=0.0).weights(mats[2]))
    assert not torch.allclose(weights[2], weights[0])
    state = agg.state_dict()
    fresh = NashMTL(max_norm=0.0, update_weights_every=2)
    fresh.load_state_dict(state)
    for mat in mats[3:]:
        torch.testing.assert_close(fresh.weights(mat), agg.weights(mat))
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict({})


# ----------------------------------------------------------------------------- GradVac


def _gradvac_reference(matrix, orders, targets, beta):
    """Paper Eq. 2-3 on plain vectors (float64), given the visiting orders; updates targets."""
    out = []
    for i, order in enumerate(orders):
        g = matrix[i].clone()
        for j in order:
            if j == i:
                continue
            gj = matrix[j]
            phi = float(g @ gj / (g.norm() * gj.norm()))
            t = targets[i][j]
            if phi < t:
                coef = g.norm() * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2))
                g = g + coef / (gj.norm() * math.sqrt(1 - t**2)) * gj
                assert float(g @ gj / (g.norm() * gj.norm())) == pytest.approx(t)
            targets[i][j] = (1 - beta) * t + beta * phi
        out.append(g)
    return torch.stack(out).sum(0)


def test_gradvac_two_tasks_several_calls_against_hand_computation():
    torch.manual_seed(2)
    agg = GradVac(beta=0.3, eps=0.0, generator=0)
    targets = [[0.0, 0.0], [0.0, 0.0]]
    for step in range(6):
        matrix = torch.randn(2, 5, dtype=torch.float64)
        if step % 2:
            matrix[1] = -matrix[0] + 0.3 * torch.randn(5, dtype=torch.float64)
        expected = _gradvac_reference(matrix, [[1], [0]], targets, 0.3)
        torch.testing.assert_close(agg(matrix), expected)
        torch.testing.assert_close(agg.targets, torch.tensor(targets, dtype=torch.float64))


def test_gradvac_many_tasks_seeded_orders_and_state_dict():
    torch.manual_seed(3)
    mats = [torch.randn(4, 7, dtype=torch.float64) for _ in range(4)]
    agg = GradVac(beta=0.5, eps=0.0, generator=5)
    gen = torch.Generator().manual_seed(5)
    targets = [[0.0] * 4 for _ in range(4)]
    for mat in mats[:2]:
        orders = [torch.randperm(4, generator=gen).tolist() for _ in range(4)]
        torch.testing.assert_close(agg(mat), _gradvac_reference(mat, orders, targets, 0.5))
    state = agg.state_dict()
    fresh = GradVac(beta=0.5, eps=0.0, generator=99)
    fresh.load_state_dict(state)
    for mat in mats[2:]:
        torch.testing.assert_close(fresh(mat), agg(mat))
    with pytest.raises(ValueError, match="targets"):
        fresh.load_state_dict({})


def test_gradvac_reduces_to_pcgrad():
    torch.manual_seed(4)
    mat = torch.randn(4, 6, dtype=torch.float64)
    # first call (zero targets) and beta = 0 (targets stay 0) are PCGrad with the same orders
    torch.testing.assert_close(GradVac(eps=0.0, generator=1)(mat), PCGrad(generator=1)(mat))
    agg, pc = GradVac(beta=0.0, eps=0.0, generator=2), PCGrad(generator=2)
    for _ in range(3):
        torch.testing.assert_close(agg(mat), pc(mat))
    # with positive targets GradVac differs from PCGrad after the first call
    agg = GradVac(beta=1.0, generator=2)
    agg(mat.abs())
    assert not torch.allclose(agg(mat), PCGrad(generator=2)(mat))


# ----------------------------------------------------------------------------- Aligned-MTL


def _aligned_reference(matrix, pref, mode):
    gram = matrix @ matrix.T
    lam, vecs = np.linalg.eigh(gram)
    keep = lam > lam.max() * len(gram) * np.finfo(np.float32).eps
    lam, vecs = lam[keep], vecs[:, keep]
    scale = {"min": lam.min(), "median": np.median(lam), "rmse": lam.mean()}[mode]
    b = np.sqrt(scale) * vecs @ np.diag(lam**-0.5) @ vecs.T
    return (b @ pref) @ matrix


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_matches_numpy_eigh(mode):
    rng = np.random.default_rng(5)
    # full rank (m <= n) and rank-deficient (m > n) Jacobians; median: odd number kept
    for m, n in ((3, 8), (2, 5), (5, 3)):
        matrix = rng.normal(size=(m, n)) * rng.uniform(0.1, 3.0, size=(m, 1))
        pref = rng.uniform(0.1, 1.0, size=m)
        if mode == "median" and min(m, n) % 2 == 0:
            continue  # torch.median takes the lower middle value, numpy the average
        agg = AlignedMTL(pref_vector=torch.tensor(pref), scale_mode=mode)
        torch.testing.assert_close(
            agg(torch.tensor(matrix)), torch.tensor(_aligned_reference(matrix, pref, mode))
        )


def test_aligned_mtl_aligns_components():
    torch.manual_seed(6)
    matrix = torch.randn(3, 9, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [10.0]])
    agg = AlignedMTL()
    b = agg.balance_transformation(matrix @ matrix.T)
    aligned = b @ matrix
    gram = aligned @ aligned.T
    lam = torch.linalg.eigvalsh(matrix @ matrix.T).min()
    torch.testing.assert_close(gram, lam * torch.eye(3, dtype=torch.float64))
    default = agg(matrix)
    torch.testing.assert_close(AlignedMTL(pref_vector=torch.ones(3))(matrix), 3 * default)
    torch.testing.assert_close(AlignedMTL()(torch.zeros(3, 4)), torch.zeros(4))


# ----------------------------------------------------------------------------- API


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NashMTL(max_norm=-1.0), "Invalid max_norm: -1.0"),
        (lambda: NashMTL(update_weights_every=0), "Invalid update_weights_every: 0"),
        (lambda: NashMTL(max_iter=1.5), "Invalid max_iter: 1.5"),
        (lambda: NashMTL(tol=0.0), "Invalid tol: 0.0"),
        (lambda: GradVac(beta=1.5), "Invalid beta: 1.5"),
        (lambda: GradVac(eps=float("nan")), "Invalid eps: nan"),
        (lambda: GradVac(generator="x"), "Invalid generator: 'x'"),
        (lambda: AlignedMTL(scale_mode="max"), "Invalid scale_mode: 'max'"),
        (lambda: AlignedMTL(pref_vector=torch.ones(2, 2)), "Invalid pref_vector"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_pref_vector_shape_mismatch():
    with pytest.raises(ValueError, match="pref_vector has shape"):
        AlignedMTL(pref_vector=torch.ones(3))(J_GOLDEN)


def test_repr():
    assert (
        repr(NashMTL()) == "NashMTL(max_norm=1.0, update_weights_every=1, max_iter=100, tol=1e-10)"
    )
    assert repr(GradVac(generator=3)) == "GradVac(beta=0.5, eps=1e-08, generator=3)"
    assert repr(AlignedMTL()) == "AlignedMTL(pref_vector=None, scale_mode='min')"
