"""Method-specific properties of the low-rank optimizers and their projectors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradkit.memory import projection as pj
from gradkit.memory.fira import Fira
from gradkit.memory.frugal import FRUGAL, active_blocks
from gradkit.memory.galore import GaLore, QGaLore
from gradkit.optim import AdamW
from support.harness import checkpoint_roundtrip


def _step(opt, params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


# -- projectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_svd_and_random_bases_are_orthonormal(shape, dtype) -> None:
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for side in ("left", "right"):
        rank = min(shape) - 1
        svd = pj.svd_basis(g, side, rank)
        rnd = pj.random_basis(pj.basis_rows(shape, side), rank, torch.Generator().manual_seed(1),
                              dtype=dtype)  # fmt: skip
        for basis in (svd, rnd):
            assert basis.shape == (pj.basis_rows(shape, side), rank)
            eye = torch.eye(rank, dtype=dtype)
            torch.testing.assert_close(basis.mT @ basis, eye, atol=tol, rtol=0)
        # the SVD basis spans the top singular directions: projecting keeps the top energy
        s = torch.linalg.svdvals(g)
        kept = torch.linalg.matrix_norm(pj.project(g, svd, side)) ** 2
        torch.testing.assert_close(kept, (s[:rank] ** 2).sum(), rtol=tol * 10, atol=0)


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    rank=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_out_of_subspace_residual_is_orthogonal_to_the_basis(m, n, rank, seed) -> None:
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for side in ("left", "right"):
        basis = pj.svd_basis(g, side, pj.effective_rank((m, n), rank))
        low = pj.project(g, basis, side)
        residual = pj.out_of_subspace(g, low, basis, side)
        torch.testing.assert_close(pj.project(residual, basis, side), torch.zeros_like(low),
                                   atol=1e-12, rtol=0)  # fmt: skip
        torch.testing.assert_close(residual + pj.project_back(low, basis, side), g)


@settings(max_examples=40, deadline=None)
@given(
    numel=st.integers(1, 700),
    group=st.integers(1, 300),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_int4_bound_holds_for_any_size_and_group(numel, group, scale, seed) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)) * scale
    codes, scales, zeros = pj.quantize_int4(x, group)
    assert codes.numel() == (numel + 1) // 2
    back = pj.dequantize_int4(codes, scales, zeros, (numel,), group)
    bound = scales.repeat_interleave(group)[:numel] / 2
    assert ((back - x).abs() <= bound * (1 + 1e-5) + 1e-6 * scale).all()


def test_canonical_signs_make_the_largest_entry_positive() -> None:
    b = torch.tensor([[0.6, -0.8], [-0.8, 0.6]])
    out = pj.canonical_signs(b)
    assert torch.equal(out, torch.tensor([[-0.6, 0.8], [0.8, -0.6]]))


def test_state_basis_is_orthonormal_after_refreshes() -> None:
    p = torch.randn(20, 9, requires_grad=True)
    opt = GaLore([p], rank=4, update_proj_gap=2)
    for _ in range(3):
        _step(opt, [p], [torch.randn(20, 9)])
        basis = opt.state[p]["galore.proj"]
        torch.testing.assert_close(basis.mT @ basis, torch.eye(4), atol=1e-5, rtol=0)


def test_reprojection_is_exact_for_a_signed_permutation() -> None:
    old = torch.eye(4, dtype=torch.float64)[:, :3]
    new = torch.eye(4, dtype=torch.float64)[:, [2, 0, 1]] * torch.tensor([1.0, -1.0, 1.0])
    m, v = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    full_m, full_v = old @ m, (old**2) @ v  # the moments as full-space coordinates
    pj.reproject_moments(m, v, old, new, "left")
    torch.testing.assert_close(new @ m, full_m)
    torch.testing.assert_close((new**2) @ v, full_v)


# -- GaLore -------------------------------------------------------------------------------------
def _diagonal_gradients(steps: int, n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Diagonal 5x4 gradients whose singular bases are (changing) permutations of the axes."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        values = (torch.randperm(n, generator=gen) + 1.0) * torch.sign(
            torch.randn(n, generator=gen)
        )
        g = torch.zeros(n + 1, n, dtype=torch.float64)
        g[range(n), range(n)] = values.double()
        out.append(g)
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_full_rank_galore_with_gap_one_equals_adam_on_permuted_bases(weight_decay) -> None:
    grads = _diagonal_gradients(8)
    p = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    galore = GaLore([p], lr=0.01, rank=4, update_proj_gap=1, scale=1.0, eps=1e-8,
                    weight_decay=weight_decay)  # fmt: skip
    adam = AdamW([q], lr=0.01, eps=1e-8, weight_decay=weight_decay)
    for g in grads:
        _step(galore, [p], [g])
        _step(adam, [q], [g])
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_keeping_moments_in_the_old_basis_is_not_adam() -> None:
    """The official behaviour (no re-projection) breaks that equivalence: the option matters."""
    grads = _diagonal_gradients(8)
    p = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    galore = GaLore([p], lr=0.01, rank=4, update_proj_gap=1, scale=1.0, eps=1e-8,
                    reproject_moments=False)  # fmt: skip
    adam = AdamW([q], lr=0.01, eps=1e-8, weight_decay=0.0)
    for g in grads:
        _step(galore, [p], [g])
        _step(adam, [q], [g])
    assert (p - q).abs().max() > 1e-4


def test_low_rank_update_lies_in_the_subspace() -> None:
    p = torch.zeros(6, 15, requires_grad=True)
    opt = GaLore([p], lr=0.1, rank=2, update_proj_gap=100)
    for _ in range(3):
        _step(opt, [p], [torch.randn(6, 15)])
    basis = opt.state[p]["galore.proj"]
    inside = basis @ (basis.mT @ p.detach())
    torch.testing.assert_close(inside, p.detach(), atol=1e-6, rtol=0)
    assert torch.linalg.matrix_rank(p.detach()) == 2


LOWRANK = [
    (GaLore, {"rank": 2}),
    (QGaLore, {"rank": 2, "proj_group_size": 8}),
    (Fira, {"rank": 2}),
    (FRUGAL, {"proj_type": "svd", "density": 0.4}),
    (FRUGAL, {"density": 0.5}),
]


@pytest.mark.parametrize(("cls", "kwargs"), LOWRANK, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bf16_parameters_keep_fp32_state(cls, kwargs) -> None:
    params = [torch.randn(8, 6, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    opt = cls(params, **kwargs)
    for _ in range(3):
        _step(opt, params, [torch.randn(8, 6, dtype=torch.bfloat16) for _ in params])
    for p in params:
        assert p.dtype == torch.bfloat16 and torch.isfinite(p.float()).all()
        floating = [v for v in opt.state[p].values() if v.is_floating_point()]
        assert all(v.dtype == torch.float32 for v in floating)


@pytest.mark.parametrize(("cls", "kwargs"), LOWRANK, ids=lambda x: getattr(x, "__name__", str(x)))
def test_converges_on_a_matrix_least_squares_problem(cls, kwargs) -> None:
    """Refreshing subspaces reach a full-rank target even though each step is low-rank."""
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randn(8, 6, generator=gen, dtype=torch.float64) for _ in range(2)]
    params = [torch.zeros(8, 6, dtype=torch.float64, requires_grad=True) for _ in targets]
    gap = {"update_gap": 5} if cls is FRUGAL else {"update_proj_gap": 5}
    opt = cls(params, lr=0.1, **{**gap, **kwargs})
    start = sum(((p - t) ** 2).sum() for p, t in zip(params, targets, strict=True)).item()
    for _ in range(150):
        opt.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, targets, strict=True))
        loss.backward()
        opt.step()
    # measured: GaLore 3%, Q-GaLore 14%, Fira 2.4%, FRUGAL < 0.3% of the starting loss
    assert loss.item() < 0.25 * start, (start, loss.item())


@pytest.mark.parametrize(("cls", "kwargs"), LOWRANK, ids=lambda x: getattr(x, "__name__", str(x)))
def test_q8_state_policy_compresses_moments_only_and_resumes_exactly(cls, kwargs) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 48), (48, 32)]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]

    def make(params):
        return cls([{"params": params, "state_min_numel": 0}], state_dtype="q8", **kwargs)

    def run(opt, params, steps):
        for step_grads in steps:
            _step(opt, params, step_grads)

    params = [torch.ones(s, requires_grad=True) for s in shapes]
    opt = make(params)
    run(opt, params, grads)
    first = [torch.ones(s, requires_grad=True) for s in shapes]
    half = make(first)
    run(half, first, grads[:3])
    resumed = [p.detach().clone().requires_grad_() for p in first]
    fresh = make(resumed)
    fresh.load_state_dict(checkpoint_roundtrip(half.state_dict()))
    run(fresh, resumed, grads[3:])
    assert all(torch.equal(p, q) for p, q in zip(params, resumed, strict=True))
    compressed = 0
    for p in params:
        entry = opt.state[p]
        moments = [k for k in entry if k.endswith((".exp_avg", ".exp_avg_sq")) and entry[k].numel()]
        assert all(entry[k].dtype == torch.uint8 for k in moments)
        compressed += len(moments)
        exact = [k for k in entry if k.endswith((".proj", ".residual_norm", ".last_vector"))]
        assert all(entry[k].dtype == torch.float32 for k in exact)
    assert compressed >= 2  # (FRUGAL blocks: the inactive tensor has no moments at all)


# -- Fira ---------------------------------------------------------------------------------------
def test_fira_limiter_caps_residual_growth_at_gamma() -> None:
    p = torch.zeros(4, 10, dtype=torch.float64, requires_grad=True)
    opt = Fira([p], lr=0.01, rank=2, update_proj_gap=100, gamma=1.01)
    g = torch.randn(4, 10, dtype=torch.float64)
    _step(opt, [p], [g])
    first = opt.state[p]["fira.residual_norm"].clone()
    assert first > 0
    basis = opt.state[p]["fira.proj"]
    outside = torch.randn(4, 10, dtype=torch.float64)
    outside -= basis @ (basis.mT @ outside)
    _step(opt, [p], [g + 10 * outside])  # same subspace part, a 10x larger residual
    ratio = opt.state[p]["fira.residual_norm"] / first
    assert abs(float(ratio) - 1.01) < 1e-6


def test_fira_residuals_paper_vs_official_differ_by_the_alpha_leak() -> None:
    """With full rank the paper's residual is zero, the official one is (1 - alpha) G phi."""
    g = torch.randn(3, 7, dtype=torch.float64)
    updates = {}
    for residual in ("paper", "official"):
        p = torch.zeros(3, 7, dtype=torch.float64, requires_grad=True)
        opt = Fira([p], lr=1.0, rank=3, scale=0.25, residual=residual, eps=1e-12)
        _step(opt, [p], [g])
        updates[residual] = -p.detach()
        basis = opt.state[p]["fira.proj"]
    low = basis.mT @ g  # left projection (3 < 7): r x n
    direction = torch.sign(low)  # Adam's first step (eps negligible)
    torch.testing.assert_close(updates["paper"], 0.25 * basis @ direction)
    phi = direction.norm(dim=0) / (low.norm(dim=0) + 1e-8)
    leak = 0.75 * g * phi
    torch.testing.assert_close(updates["official"], 0.25 * basis @ direction + leak)


def test_fira_adds_the_out_of_subspace_direction_galore_drops() -> None:
    g = torch.randn(6, 15)
    p, q = (torch.zeros(6, 15, requires_grad=True) for _ in range(2))
    _step(GaLore([p], rank=2), [p], [g])
    _step(Fira([q], rank=2), [q], [g])
    assert torch.linalg.matrix_rank(p.detach()) == 2
    assert torch.linalg.matrix_rank(q.detach()) == 6


# -- QGaLore ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "heavy_tailed", "one_signed", "constant"])
def test_int4_roundtrip_is_within_half_a_step(kind) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=gen)
    if kind == "heavy_tailed":
        x = torch.distributions.StudentT(1.5).sample((1000,))
    elif kind == "one_signed":
        x = x.abs() + 3.0
    elif kind == "constant":
        x = torch.full((1000,), 0.7)
    codes, scales, zeros = pj.quantize_int4(x, 64)
    assert codes.dtype == torch.uint8 and codes.numel() == 500
    assert scales.numel() == math.ceil(1000 / 64)
    back = pj.dequantize_int4(codes, scales, zeros, (1000,), 64)
    bound = scales.repeat_interleave(64)[:1000] / 2
    assert ((back - x).abs() <= bound * (1 + 1e-5) + 1e-7).all()
    if kind != "constant":  # the bound is tight: the error uses most of the half step
        assert ((back - x).abs() / bound).max() > 0.8


def test_qgalore_projects_with_the_dequantized_basis() -> None:
    g = torch.randn(6, 16, dtype=torch.float64)
    p = torch.zeros(6, 16, dtype=torch.float64, requires_grad=True)
    opt = QGaLore([p], lr=1.0, rank=3, proj_group_size=8, eps=1e-12)
    _step(opt, [p], [g])
    st = opt.state[p]
    basis = pj.dequantize_int4(st["qgalore.proj_codes"], st["qgalore.proj_scales"],
                               st["qgalore.proj_zeros"], (6, 3), 8, torch.float64)  # fmt: skip
    exact = pj.svd_basis(g, "left", 3)
    assert 0 < (basis - exact).abs().max() <= st["qgalore.proj_scales"].max() / 2 + 1e-7
    expected = 0.25 * basis @ torch.sign(basis.mT @ g)  # first Adam step is the sign
    torch.testing.assert_close(-p.detach(), expected)
    assert st["qgalore.proj_codes"].numel() == 9  # 18 four-bit codes in 9 bytes


def _qgalore_gaps(grads_fn, steps: int) -> list[int]:
    p = torch.zeros(8, 12, dtype=torch.float64, requires_grad=True)
    opt = QGaLore([p], rank=2, update_proj_gap=1, queue_size=3, cos_threshold=0.9)
    gaps = []
    for t in range(steps):
        _step(opt, [p], [grads_fn(t)])
        gaps.append(int(opt.state[p]["qgalore.gap"]))
    return gaps


def test_qgalore_gap_grows_when_the_subspace_is_stable() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 1, dtype=torch.float64), torch.randn(1, 12, dtype=torch.float64)

    def stable(t):
        noise = 0.01 * torch.randn(8, 12, generator=gen, dtype=torch.float64)
        return (1 + t % 3) * u @ v + noise

    gaps = _qgalore_gaps(stable, 12)
    # refreshes at steps 1,2,3,4 fill the 3-slot queue (similarities from the 2nd refresh on):
    # at step 4 the gap doubles to 2; then refreshes at 0-based multiples of the gap
    assert gaps[:4] == [1, 1, 1, 2]
    assert gaps[-1] >= 4 and gaps == sorted(gaps)


def test_qgalore_gap_stays_when_the_subspace_changes() -> None:
    gen = torch.Generator().manual_seed(1)
    gaps = _qgalore_gaps(lambda t: torch.randn(8, 12, generator=gen, dtype=torch.float64), 10)
    assert gaps == [1] * 10


# -- FRUGAL -------------------------------------------------------------------------------------
def test_frugal_density_one_blocks_equal_adamw() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (3, 6), (7,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    frugal = FRUGAL(params, lr=0.01, density=1.0, update_gap=100, weight_decay=0.1)
    adamw = AdamW(twins, lr=0.01, weight_decay=0.1)
    for _ in range(6):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        _step(frugal, params, grads)
        _step(adamw, twins, grads)
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)


def test_frugal_blocks_inactive_tensors_get_sign_sgd_and_no_state() -> None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
              for _ in range(4)]  # fmt: skip
    before = [p.detach().clone() for p in params]
    opt = FRUGAL(params, lr=0.1, density=0.5, update_gap=2, inactive_lr_scale=0.5)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in params]
    _step(opt, params, grads)
    active = [int(opt.state[p]["frugal.active"]) for p in params]
    assert active == [0, 0, 1, 1]  # descending: the last two tensors first
    for p, b, g, on in zip(params, before, grads, active, strict=True):
        moments = opt.state[p]["frugal.exp_avg"]
        if on:
            assert moments.shape == p.shape
            torch.testing.assert_close(p.detach(), b - 0.1 * torch.sign(g))  # Adam's 1st step
        else:
            assert moments.numel() == 0
            torch.testing.assert_close(p.detach(), b - 0.1 * 0.5 * torch.sign(g))
    _step(opt, params, grads)
    _step(opt, params, grads)  # step 3: the next subspace
    assert [int(opt.state[p]["frugal.active"]) for p in params] == [1, 1, 0, 0]
    assert opt.state[params[0]]["frugal.exp_avg"].abs().sum() > 0  # fresh moments, one step in


def test_frugal_block_orders() -> None:
    assert [active_blocks(6, 1 / 3, "descending", k, 0) for k in range(4)] == [
        [4, 5], [2, 3], [0, 1], [4, 5]]  # fmt: skip
    assert [active_blocks(6, 1 / 3, "ascending", k, 0) for k in range(3)] == [
        [0, 1], [2, 3], [4, 5]]  # fmt: skip
    draws = [active_blocks(6, 0.5, "random", k, 7) for k in range(5)]
    assert all(len(d) == 3 for d in draws) and len({tuple(d) for d in draws}) > 1
    assert draws == [active_blocks(6, 0.5, "random", k, 7) for k in range(5)]


def test_frugal_svd_moments_reset_on_switch() -> None:
    p = torch.zeros(6, 10, dtype=torch.float64, requires_grad=True)
    opt = FRUGAL([p], proj_type="svd", density=0.5, update_gap=2)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 4):
        g = torch.randn(6, 10, generator=gen, dtype=torch.float64)
        _step(opt, [p], [g])
        if t == 3:  # switched at step 3: moments hold only this step's projected gradient
            low = opt.state[p]["frugal.proj"].mT @ g
            torch.testing.assert_close(opt.state[p]["frugal.exp_avg"], 0.1 * low)


def test_memory_rows_measure_what_the_state_formulas_say() -> None:
    shapes = [(24, 40), (40, 24), (9,)]
    rows = {r["method"].split()[0] + r["method"].split()[-1]: r
            for r in pj.lowrank_memory_rows(shapes, rank=4, density=0.5)}  # fmt: skip
    params = 24 * 40 * 2 + 9
    for row in rows.values():
        scalars = row["state_bytes"] - row["theory_bytes_per_param"] * params
        assert 0 <= scalars <= 8 * 10 * len(shapes), row  # only per-tensor scalars on top
    assert rows["AdamWfp32"]["bytes_per_param"] == pytest.approx(8.0, abs=0.01)
    galore = (2 * 4 * 40 + 24 * 4) * 2 * 4 + 2 * 9 * 4  # two matrices: moments + basis; Adam
    scalars = 3 * (4 + 8)  # per tensor: float32 "step" and int64 "proj_step"
    assert rows["GaLorer=4"]["state_bytes"] == galore + scalars
