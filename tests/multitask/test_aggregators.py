"""Golden values (TorchJD tests/unit/aggregation/test_values.py) and properties of the aggregators."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradkit.multitask import IMTLG, MGDA, CAGrad, Mean, PCGrad, Sum, UPGrad

J_GOLDEN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("aggregator", "expected", "weights"),
    [
        (Mean(), [1.0, 1.0, 1.0], [0.5, 0.5]),
        (Sum(), [2.0, 2.0, 2.0], [1.0, 1.0]),
        (MGDA(), [0.0, 1.0, 1.0], [0.6, 0.4]),
        (UPGrad(), [0.2929, 1.9004, 1.9004], [1.1109, 0.7894]),
        (PCGrad(generator=0), [0.5848, 3.8012, 3.8012], [2.2222, 1.5789]),
        (IMTLG(), [0.0767, 1.0, 1.0], [0.5923, 0.4077]),
        (CAGrad(c=0.5, rescale=0), [0.1835, 1.2041, 1.2041], None),
    ],
    ids=repr,
)
def test_golden_values(aggregator, expected, weights):
    for dtype in (torch.float32, torch.float64):
        out = aggregator(J_GOLDEN.to(dtype))
        assert out.dtype == dtype and not out.requires_grad
        torch.testing.assert_close(out, torch.tensor(expected, dtype=dtype), atol=1e-4, rtol=0)
        if weights is not None:
            torch.testing.assert_close(
                aggregator.weights(J_GOLDEN.to(dtype)),
                torch.tensor(weights, dtype=dtype),
                atol=1e-4,
                rtol=0,
            )


@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_golden_independent_of_order(seed):
    # two tasks: each gradient has one other gradient to project on, so no order can matter
    for rows in (J_GOLDEN, J_GOLDEN.flip(0)):
        out = PCGrad(generator=seed)(rows)
        torch.testing.assert_close(
            out, torch.tensor([0.5848, 3.8012, 3.8012], dtype=torch.float64), atol=1e-4, rtol=0
        )


def _pcgrad_reference(matrix, orders):
    """Algorithm 1 of Yu et al. on vectors, with given projection orders."""
    out = []
    for i, order in enumerate(orders):
        g = matrix[i].clone()
        for j in order:
            if j != i and g @ matrix[j] < 0:
                g = g - (g @ matrix[j]) / (matrix[j] @ matrix[j]) * matrix[j]
        out.append(g)
    return torch.stack(out).sum(0)


def test_pcgrad_matches_vector_algorithm_and_is_seedable():
    torch.manual_seed(0)
    matrix = torch.randn(4, 7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    orders = [torch.randperm(4, generator=gen).tolist() for _ in range(4)]
    torch.testing.assert_close(PCGrad(generator=3)(matrix), _pcgrad_reference(matrix, orders))
    # orders matter for m > 2 and differ between steps; state_dict resumes the sequence
    agg = PCGrad(generator=5)
    agg(matrix)
    state = agg.state_dict()
    nxt = agg(matrix)
    fresh = PCGrad(generator=11)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(matrix), nxt)
    mean = PCGrad(reduction="mean", generator=3)(matrix)
    torch.testing.assert_close(mean, _pcgrad_reference(matrix, orders) / 4)


def test_pcgrad_order_is_random_for_three_tasks():
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 0.2], [-0.3, -1.0]], dtype=torch.float64)
    outs = {tuple(PCGrad(generator=s)(matrix).round(decimals=6).tolist()) for s in range(20)}
    assert len(outs) > 1


def test_mgda_frank_wolfe_agrees_with_closed_form_on_two_tasks():
    from gradkit.multitask._solvers import min_norm_simplex

    torch.manual_seed(1)
    for _ in range(20):
        matrix = torch.randn(2, 5, dtype=torch.float64)
        gram = matrix @ matrix.T
        torch.testing.assert_close(
            min_norm_simplex(gram, 1e-12, 10000), MGDA().weights(matrix), atol=1e-5, rtol=0
        )


def test_upgrad_equals_pcgrad_over_m_for_two_tasks_without_regularisation():
    # TorchJD's equivalence: for m=2, PCGrad == UPGrad with preference ones and no regulariser
    torch.manual_seed(2)
    for _ in range(10):
        matrix = torch.randn(2, 6, dtype=torch.float64)
        up = UPGrad(pref_vector=torch.ones(2), reg_eps=0.0, norm_eps=0.0)(matrix)
        torch.testing.assert_close(up, PCGrad(generator=0)(matrix))


def test_imtlg_equal_projections_on_unit_gradients():
    torch.manual_seed(3)
    matrix = torch.randn(3, 8, dtype=torch.float64)
    d = IMTLG()(matrix)
    proj = (matrix / matrix.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj.mean().expand(3))
    assert IMTLG().weights(matrix).sum().item() == pytest.approx(1.0)


def test_cagrad_limits_and_rescale():
    torch.manual_seed(4)
    matrix = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(CAGrad(c=0.0, rescale=0)(matrix), matrix.mean(0), atol=1e-6, rtol=0)
    d0 = CAGrad(c=0.4, rescale=0)(matrix)
    torch.testing.assert_close(CAGrad(c=0.4, rescale=1)(matrix), d0 / 1.16)
    torch.testing.assert_close(CAGrad(c=0.4, rescale=2)(matrix), d0 / 1.4)


# ----------------------------------------------------------------------------- properties

finite = st.floats(-10.0, 10.0, allow_nan=False, width=64)


@st.composite
def matrices(draw, max_m=5, max_n=6):
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(1, max_n))
    values = draw(st.lists(finite, min_size=m * n, max_size=m * n))
    return torch.tensor(values, dtype=torch.float64).reshape(m, n)


NON_CONFLICTING = [UPGrad(), MGDA()]
PERMUTATION_INVARIANT = [Mean(), Sum(), UPGrad(), MGDA(), IMTLG()]
ALL = [Mean(), Sum(), PCGrad(generator=0), MGDA(), UPGrad(), IMTLG(), CAGrad()]


@pytest.mark.parametrize("aggregator", NON_CONFLICTING, ids=repr)
@settings(max_examples=40, deadline=None)
@given(matrix=matrices())
def test_non_conflicting(aggregator, matrix):
    d = aggregator(matrix)
    trace = (matrix**2).sum().item()
    if isinstance(aggregator, UPGrad):
        # the ridge reg_eps * I on the trace-normalised Gramian relaxes J d >= 0 to
        # (J d)_i >= -reg_eps * trace(G) * w_i (KKT of the regularised dual); nothing more
        slack = aggregator.reg_eps * trace * aggregator.weights(matrix).abs() + 1e-9 * trace
    else:  # MGDA: Frank-Wolfe converges sublinearly when the min-norm point is ~0
        slack = 5e-3 * trace + 1e-9
    assert bool((matrix @ d >= -slack).all())


@pytest.mark.parametrize("c", [1.0, 1.5])
@settings(max_examples=40, deadline=None)
@given(matrix=matrices(), zero_row=st.booleans())
def test_cagrad_non_conflicting_for_c_at_least_one(c, matrix, zero_row):
    # c >= 1 makes d = 0 feasible in max_d min_i <g_i, d> s.t. |d - g0| <= c |g0|, so the optimum
    # has no conflict; SLSQP solves the dual to ~1e-6 relative accuracy
    if zero_row:
        matrix[0] = 0.0
    d = CAGrad(c=c, rescale=0)(matrix)
    trace = (matrix**2).sum().item()
    assert bool((matrix @ d >= -1e-4 * trace - 1e-9).all())


def test_imtlg_non_conflicting_when_gradients_independent():
    # IMTL-G gives every unit gradient the same projection c; with linearly independent rows and
    # positive weights (as here) c > 0; it does not hold in general (weights can be negative)
    torch.manual_seed(5)
    for _ in range(20):
        matrix = torch.randn(3, 10, dtype=torch.float64)
        weights = IMTLG().weights(matrix)
        if bool((weights > 0).all()):
            assert bool((matrix @ IMTLG()(matrix) > 0).all())


@pytest.mark.parametrize("aggregator", PERMUTATION_INVARIANT, ids=repr)
@settings(max_examples=30, deadline=None)
@given(matrix=matrices(), seed=st.integers(0, 2**16))
def test_permutation_invariant(aggregator, matrix, seed):
    perm = torch.randperm(matrix.shape[0], generator=torch.Generator().manual_seed(seed))
    scale = matrix.abs().max().item() + 1.0
    # IMTL-G's pinv on near-singular Gramians is ill-conditioned; keep the check well-posed
    if isinstance(aggregator, IMTLG) and torch.linalg.matrix_rank(matrix) < matrix.shape[0]:
        return
    torch.testing.assert_close(
        aggregator(matrix[perm]), aggregator(matrix), atol=1e-5 * scale**2, rtol=1e-4
    )


@pytest.mark.parametrize("aggregator", ALL, ids=repr)
@settings(max_examples=25, deadline=None)
@given(matrix=matrices(), factor=st.floats(1e-2, 1e3))
def test_positively_homogeneous(aggregator, matrix, factor):
    if isinstance(aggregator, (UPGrad, CAGrad)) and (matrix**2).sum() * min(factor, 1) ** 2 < 1e-2:
        return  # norm_eps threshold of UPGrad / the 1e-8 guards of CAGrad break homogeneity
    if isinstance(aggregator, IMTLG) and torch.linalg.matrix_rank(matrix) < matrix.shape[0]:
        return
    if isinstance(aggregator, CAGrad):
        # g_w* ~ 0: d = g0 + sqrt(phi) g_w / |g_w| is singular there (official code too)
        g_w = aggregator.simplex_weights(matrix) @ matrix
        if g_w.norm() < 1e-2 * matrix.norm():
            return
    if isinstance(aggregator, PCGrad):
        aggregator = PCGrad(generator=0)
        expected = factor * aggregator(matrix)
        aggregator = PCGrad(generator=0)
    else:
        expected = factor * aggregator(matrix)
    atol = 1e-3 * factor * (matrix.abs().max().item() + 1.0) * matrix.shape[0]
    torch.testing.assert_close(aggregator(factor * matrix), expected, atol=atol, rtol=1e-3)


@pytest.mark.parametrize("aggregator", [Mean(), Sum(), UPGrad()], ids=repr)
def test_linear_under_row_scaling(aggregator):
    # A(diag(a c1 + b c2) J) = a A(diag(c1) J) + b A(diag(c2) J), c1, c2 > 0 (TorchJD's property)
    torch.manual_seed(6)
    matrix = torch.randn(4, 5, dtype=torch.float64)
    c1, c2 = torch.rand(4, dtype=torch.float64) + 0.5, torch.rand(4, dtype=torch.float64) + 0.5
    left = aggregator(torch.diag(0.3 * c1 + 1.7 * c2) @ matrix)
    right = 0.3 * aggregator(torch.diag(c1) @ matrix) + 1.7 * aggregator(torch.diag(c2) @ matrix)
    tol = 5e-3 if isinstance(aggregator, UPGrad) else 1e-10  # UPGrad: reg_eps perturbs it
    torch.testing.assert_close(left, right, atol=tol, rtol=tol)


@pytest.mark.parametrize("aggregator", ALL, ids=repr)
@pytest.mark.parametrize("shape", [(1, 4), (3, 4), (5, 2)])
def test_zero_gradients_give_zero(aggregator, shape):
    out = aggregator(torch.zeros(shape, dtype=torch.float64))
    assert out.shape == (shape[1],)
    torch.testing.assert_close(out, torch.zeros(shape[1], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("aggregator", "factor"),
    [
        (Mean(), 1.0),
        (Sum(), 3.0),
        (PCGrad(generator=0), 3.0),
        (MGDA(), 1.0),
        (UPGrad(), 1.0),
        (IMTLG(), 1.0),
        (CAGrad(rescale=0), 1.5),
    ],
    ids=repr,
)
def test_identical_gradients(aggregator, factor):
    # no conflict: every method returns a multiple of the common gradient
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    out = aggregator(g.expand(3, 4).clone())
    torch.testing.assert_close(out, factor * g, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("aggregator", "factor"),
    [
        (Mean(), 1.0),
        (Sum(), 1.0),
        (PCGrad(generator=0), 1.0),
        (MGDA(), 1.0),
        (UPGrad(), 1.0),
        (IMTLG(), 1.0),
        (CAGrad(rescale=0), 1.5),
    ],
    ids=repr,
)
def test_single_task(aggregator, factor):
    g = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregator(g), factor * g[0], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PCGrad(reduction="max"), "Invalid reduction: 'max'"),
        (lambda: PCGrad(generator="seed"), "Invalid generator: 'seed'"),
        (lambda: MGDA(tol=-1.0), "Invalid tol: -1.0"),
        (lambda: MGDA(max_iter=0), "Invalid max_iter: 0"),
        (lambda: MGDA(max_iter=2.5), "Invalid max_iter: 2.5"),
        (lambda: UPGrad(norm_eps=-1e-3), "Invalid norm_eps: -0.001"),
        (lambda: UPGrad(reg_eps=float("nan")), "Invalid reg_eps: nan"),
        (lambda: UPGrad(pref_vector=torch.tensor([-1.0, 1.0])), "Invalid pref_vector"),
        (lambda: CAGrad(c=-0.5), "Invalid c: -0.5"),
        (lambda: CAGrad(rescale=3), "Invalid rescale: 3"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_bad_matrix_shape():
    with pytest.raises(ValueError, match="shape"):
        Mean()(torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        UPGrad()(torch.ones(0, 3))


def test_repr_shows_arguments():
    assert repr(CAGrad()) == "CAGrad(c=0.5, rescale=1)"
    assert repr(MGDA(tol=1e-5, max_iter=7)) == "MGDA(tol=1e-05, max_iter=7)"
    assert repr(PCGrad(generator=3)) == "PCGrad(reduction='sum', generator=3)"
    assert repr(UPGrad()) == "UPGrad(pref_vector=None, norm_eps=0.0001, reg_eps=0.0001)"
    assert repr(Mean()) == "Mean()"


def test_stateless_load_state_dict_rejects_state():
    assert Mean().state_dict() == {}
    with pytest.raises(ValueError, match="stateless"):
        UPGrad().load_state_dict({"x": 1})


def test_imtlg_tiny_gradients_keep_their_direction():
    # found by hypothesis in CI: a 1x1 matrix of 3.8e-157 has a subnormal Gramian and pinv gave nan
    matrix = torch.tensor([[3.8383e-157]], dtype=torch.float64)
    torch.testing.assert_close(IMTLG()(matrix), matrix[0])
    pair = torch.tensor([[1e-160, 0.0], [0.0, 2e-160]], dtype=torch.float64)
    torch.testing.assert_close(IMTLG()(pair) / 1e-160, IMTLG()(pair / 1e-160))
