"""Muon: parity with torch.optim.Muon, the Newton-Schulz spectrum, routing and reshaping."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newton_schulz

from gradkit.core.transform import chain
from gradkit.optim.muon import Muon, batched_newton_schulz
from gradkit.transforms.orthogonalize import (
    ORIGINAL,
    POLAR_EXPRESS,
    newton_schulz,
    orthogonalize,
)
from reference import muon as ref

# the module (gradkit.transforms re-exports a function of the same name)
ortho_module = importlib.import_module("gradkit.transforms.orthogonalize")

SHAPES = [(5, 4), (4, 7), (12, 6), (6, 12), (8, 8)]


def _matrices(shapes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


# -- torch.optim.Muon parity ----------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_is_bit_identical_to_torch(shape: tuple[int, int]) -> None:
    (g,) = _matrices([shape])
    expected = torch_newton_schulz(g, ORIGINAL, 5, 1e-7)
    assert torch.equal(newton_schulz(g), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(lr=0.02, weight_decay=0.0, nesterov=False),
        dict(lr=0.01, adjust_lr_fn="match_rms_adamw", momentum=0.9),
        dict(lr=0.02, adjust_lr_fn="original", ns_steps=3, ns_coefficients=(3.0, -3.2, 1.2)),
    ],
)
def test_matches_torch_muon_on_2d_parameters(kwargs: dict) -> None:
    ours = [p.requires_grad_() for p in _matrices(SHAPES)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    # torch iterates in bfloat16: ask for the same precision (gradkit's CPU default is float32)
    opt, torch_opt = Muon(ours, ns_dtype="bfloat16", **kwargs), torch.optim.Muon(theirs, **kwargs)
    for grads in (_matrices(SHAPES, seed=s) for s in range(1, 7)):
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    for p, q in zip(ours, theirs, strict=True):
        # bit-identical except the lr * ratio rounding on tall matrices
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert torch.equal(
            opt.state[p]["muon.momentum_buffer"], torch_opt.state[q]["momentum_buffer"]
        )
    # wide and square matrices: ratio 1 under "original", so no rounding difference at all
    if kwargs.get("adjust_lr_fn") != "match_rms_adamw":
        assert all(torch.equal(ours[i], theirs[i]) for i in (1, 3, 4))


# -- the batched Newton-Schulz kernel against the per-matrix readable one ------------------------
BATCH_SHAPES = [(5, 4), (4, 5), (12, 6), (6, 12), (8, 8), (4, 5), (3, 40), (40, 3), (8, 8)]


@pytest.mark.parametrize(
    "coefficients", ["original", "polar_express", [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]]
)
def test_batched_newton_schulz_equals_per_matrix_in_float64(coefficients) -> None:
    # repeated shapes (and a tall matrix of a wide one's shape) are stacked into one bmm batch
    matrices = _matrices(BATCH_SHAPES, seed=3, dtype=torch.float64)
    batched = batched_newton_schulz(matrices, 4, coefficients, 1e-7, dtype=None)
    for m, out in zip(matrices, batched, strict=True):
        expected = newton_schulz(m, 4, coefficients, 1e-7, dtype=None)
        assert out.shape == m.shape and out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_batched_newton_schulz_splits_large_stacks(monkeypatch) -> None:
    monkeypatch.setattr(ortho_module, "MAX_BATCH_ELEMENTS", 50)  # stacks of 2 matrices of 20
    matrices = _matrices([(4, 5)] * 4 + [(5, 4)], seed=8, dtype=torch.float64)
    for m, out in zip(matrices, batched_newton_schulz(matrices, dtype=None), strict=True):
        torch.testing.assert_close(out, newton_schulz(m, dtype=None), rtol=1e-12, atol=1e-12)


def test_batched_newton_schulz_float32_and_inputs_untouched() -> None:
    matrices = _matrices(BATCH_SHAPES, seed=4)
    copies = [m.clone() for m in matrices]
    batched = batched_newton_schulz(matrices, dtype=torch.float32)
    for m, c, out in zip(matrices, copies, batched, strict=True):
        assert torch.equal(m, c)
        torch.testing.assert_close(out, newton_schulz(m, dtype=torch.float32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("native", [False, True])
def test_batched_bfloat16_is_torchs_arithmetic(native: bool, monkeypatch) -> None:
    """Emulated (float32 GEMMs rounded to bfloat16) or native bfloat16 GEMMs: torch's
    bfloat16 Newton-Schulz bit for bit on small matrices, and as close to the float64 result as
    torch's on a larger one (where float32 summation order may flip a bfloat16 rounding)."""
    monkeypatch.setattr(ortho_module, "cpu_has_bf16_gemm", lambda: native)
    matrices = _matrices(BATCH_SHAPES, seed=5)
    for m, out in zip(matrices, batched_newton_schulz(matrices), strict=True):
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, torch_newton_schulz(m, ORIGINAL, 5, 1e-7)), tuple(m.shape)
    (big,) = _matrices([(64, 192)], seed=6)
    (ours,) = batched_newton_schulz([big])
    theirs = torch_newton_schulz(big, ORIGINAL, 5, 1e-7)
    exact = newton_schulz(big.double(), dtype=None)
    error = {k: (v.double() - exact).abs().max().item() for k, v in (("ours", ours), ("t", theirs))}
    assert error["ours"] < 1.5 * error["t"] and 0 < error["t"] < 0.05, error
    assert not torch.equal(ours.float(), newton_schulz(big, dtype=torch.float32))


def test_ns_dtype_auto_is_float32_on_cpu_and_float64_for_float64() -> None:
    for dtype, forced in ((torch.float32, "float32"), (torch.float64, None)):
        results = []
        for ns_dtype in ("auto", forced):
            p = torch.ones(6, 4, dtype=dtype, requires_grad=True)
            opt = Muon([p], lr=0.1, ns_dtype=ns_dtype)
            for g in _matrices([(6, 4)] * 3, seed=7, dtype=dtype):
                p.grad = g
                opt.step()
            results.append(p.detach())
        assert torch.equal(*results), dtype
    assert Muon([torch.ones(2, 2, requires_grad=True)]).defaults["ns_dtype"] == "auto"
    with pytest.raises(ValueError, match=r"ns_dtype.*'auto'"):
        Muon([torch.ones(2, 2, requires_grad=True)], ns_dtype="half")


# -- Newton-Schulz properties -----------------------------------------------------------------
def _spectrum_cases(dtype=torch.float32):
    """Gaussian rectangular matrices (well conditioned) and a square one with singular values
    in [0.1, 1] (a Gaussian square matrix has singular values near 0, which 5 steps of any
    quintic cannot lift: the iteration multiplies tiny ones by at most a^5)."""
    cases = _matrices([(3, 2), (2, 3), (64, 16), (16, 64), (7, 100)], seed=5, dtype=dtype)
    g = torch.Generator().manual_seed(6)
    q1, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    square = q1 @ torch.diag(torch.linspace(0.1, 1.0, 40, dtype=torch.float64)) @ q2
    return [*cases, square.to(dtype)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_newton_schulz_singular_values_are_near_one(dtype) -> None:
    for g in _spectrum_cases():
        out = newton_schulz(g, dtype=dtype)
        assert out.shape == g.shape and out.dtype == dtype
        sigma = torch.linalg.svdvals(out.double())
        # the original quintic's known band after 5 steps (it does not converge to exactly 1)
        assert sigma.min() > 0.65 and sigma.max() < 1.2, (tuple(g.shape), sigma)


@pytest.mark.parametrize("index", range(6))
def test_newton_schulz_is_the_polynomial_of_the_singular_values(index) -> None:
    g = _spectrum_cases(torch.float64)[index]
    u, sigma, vh = torch.linalg.svd(g, full_matrices=False)
    x = sigma / torch.linalg.matrix_norm(g)
    for _ in range(5):
        a, b, c = ORIGINAL
        x = a * x + b * x**3 + c * x**5
    # U p(S) V^T: same singular vectors, the scalar iteration on each singular value
    torch.testing.assert_close(
        newton_schulz(g, dtype=None), u @ torch.diag(x) @ vh, rtol=1e-9, atol=1e-10
    )


def test_polar_express_is_closer_to_orthogonal_than_the_original() -> None:
    for g in _matrices([(64, 32), (32, 96)], dtype=torch.float64):
        worst = {
            name: (torch.linalg.svdvals(newton_schulz(g, 5, name, dtype=None)) - 1).abs().max()
            for name in ("original", "polar_express")
        }
        assert worst["polar_express"] < 0.15 < worst["original"], worst
    assert len(POLAR_EXPRESS) == 8 and POLAR_EXPRESS[-1] == (1.875, -1.25, 0.375)


def test_tall_matrices_are_transposed() -> None:
    (g,) = _matrices([(12, 5)], dtype=torch.float64)
    assert torch.equal(newton_schulz(g, dtype=None), newton_schulz(g.T, dtype=None).T)


def test_newton_schulz_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.ones(3))
    with pytest.raises(ValueError, match="ns_steps"):
        newton_schulz(torch.ones(2, 2), steps=0)
    with pytest.raises(ValueError, match="ns_coefficients"):
        newton_schulz(torch.ones(2, 2), coefficients="quintic")


def test_orthogonalize_transform_flattens_and_passes_vectors() -> None:
    t = chain(orthogonalize(ns_dtype=None))
    conv, bias = _matrices([(4, 2, 3, 3), (4,)], dtype=torch.float64)
    out = t.update([conv, bias], t.init([conv, bias]), [conv, bias])
    expected = newton_schulz(conv.reshape(4, 18), dtype=None).reshape(conv.shape)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)
    assert out[1] is bias


def test_orthogonalize_transform_batches_same_shape_matrices() -> None:
    """Several same-shape matrices (wide, tall, conv) go through one batched iteration; each
    result equals its own per-matrix Newton-Schulz."""
    t = chain(orthogonalize(ns_dtype=None, ns_coefficients="polar_express"))
    shapes = [(6, 4), (4, 6), (6, 4), (3, 2, 2, 2), (5,), (6, 4)]
    ups = _matrices(shapes, seed=3, dtype=torch.float64)
    out = t.update(list(ups), t.init(ups), ups)
    for u, o in zip(ups, out, strict=True):
        if u.ndim < 2:
            assert o is u
            continue
        ref_ns = newton_schulz(u.reshape(u.shape[0], -1), coefficients="polar_express", dtype=None)
        assert o.shape == u.shape and o.dtype == u.dtype
        torch.testing.assert_close(o, ref_ns.reshape(u.shape), rtol=1e-12, atol=1e-12)


# -- the optimizer ------------------------------------------------------------------------------
def test_conv_weights_are_flattened_like_their_matrix_view() -> None:
    conv = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    flat = conv.detach().reshape(4, 27).clone().requires_grad_()
    opt_conv = Muon([conv], lr=0.1, ns_dtype=None)
    opt_flat = Muon([flat], lr=0.1, ns_dtype=None)
    for g in _matrices([(4, 3, 3, 3)] * 3, dtype=torch.float64):
        conv.grad, flat.grad = g.clone(), g.reshape(4, 27).clone()
        opt_conv.step()
        opt_flat.step()
    torch.testing.assert_close(conv.detach().reshape(4, 27), flat.detach(), rtol=0, atol=1e-15)


def test_routing_by_shape_and_by_group() -> None:
    w, b, emb = torch.zeros(6, 4), torch.zeros(6), torch.zeros(10, 4)
    opt = Muon([{"params": [w, b]}, {"params": [emb], "use_muon": False}], lr=0.1)
    for p in (w, b, emb):
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[w]["muon.momentum_buffer"].shape == w.shape
    assert opt.state[w]["muon.exp_avg"].numel() == 0
    for p in (b, emb):  # the AdamW fallback
        assert opt.state[p]["muon.exp_avg_sq"].shape == p.shape
        assert opt.state[p]["muon.momentum_buffer"].numel() == 0
    # an Adam first step moves every coordinate by lr (the bias-corrected ratio is 1)
    torch.testing.assert_close(emb, torch.full_like(emb, -0.1))
    with pytest.raises(ValueError, match="use_muon"):
        Muon([{"params": [w, b], "use_muon": True}])


def test_adamw_path_matches_reference_with_group_hyperparameters() -> None:
    p = torch.randn(7, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone()
    hp = dict(lr=0.03, weight_decay=0.2, adam_betas=(0.8, 0.9), adam_eps=1e-6)
    opt = Muon([{"params": [p], **hp}], lr=1.0, weight_decay=0.0)
    state: dict = {}
    for t, g in enumerate(_matrices([(7,)] * 5, dtype=torch.float64), start=1):
        p.grad = g.clone()
        opt.step()
        ref.muon(q, g, state, t, {**opt.param_groups[0], "maximize": False})
    torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 4), (4, 16)])
def test_learning_rate_adjustment_modes(shape) -> None:
    rows, cols = shape
    steps = {}
    for mode in ("original", "match_rms_adamw"):
        p = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        opt = Muon([p], lr=1.0, weight_decay=0.0, adjust_lr_fn=mode, ns_dtype=None)
        p.grad = _matrices([shape], dtype=torch.float64)[0]
        opt.step()
        steps[mode] = p.detach().clone()
    original = math.sqrt(max(1, rows / cols))
    moonshot = 0.2 * math.sqrt(max(rows, cols))
    torch.testing.assert_close(steps["match_rms_adamw"], steps["original"] * (moonshot / original))
    # "original": the update has (near) unit spectral norm times sqrt(max(1, rows/cols))
    sigma = torch.linalg.svdvals(steps["original"])
    assert 0.65 * original < sigma.min() and sigma.max() < 1.2 * original


def test_matrix_path_converges_on_least_squares() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 16, generator=g, dtype=torch.float64)
    target = a @ torch.randn(8, 16, generator=g, dtype=torch.float64).T
    w = torch.zeros(8, 16, dtype=torch.float64, requires_grad=True)
    opt = Muon([w], lr=0.05, weight_decay=0.0, ns_dtype=None)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / 300)
    start = ((a @ w.T - target) ** 2).mean().item()
    for _ in range(300):
        opt.zero_grad()
        loss = ((a @ w.T - target) ** 2).mean()
        loss.backward()
        opt.step()
        schedule.step()
    assert loss.item() < 1e-3 * start


def test_bfloat16_parameters_keep_float32_state() -> None:
    p = torch.randn(6, 4).bfloat16().requires_grad_()
    opt = Muon([p], lr=0.02)
    p.grad = torch.randn(6, 4).bfloat16()
    opt.step()
    assert p.dtype == torch.bfloat16
    assert opt.state[p]["muon.momentum_buffer"].dtype == torch.float32


def test_registry_metadata() -> None:
    import gradkit

    info = {i.name: i for i in gradkit.optim.available()}["Muon"]
    assert info.year == 2024 and "Muon" in info.paper
    assert info.defaults["ns_coefficients"] == ORIGINAL and info.defaults["lr"] == 1e-3
    assert info.state_bytes_per_param == 4.0
