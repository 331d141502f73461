"""Gradient statistics against synthetic ground truth and brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.diagnostics import gradstats as gs

N_TRIALS, DIM = 4000, 6


def _synthetic(batch: int, seed: int):
    """Per-example gradients g_i ~ N(G, diag(s)) with known |G|^2 and tr(Sigma)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.5, -0.3, 0.2, 0.0, 0.1, -0.4], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 0.3, 1.5, 0.7], dtype=torch.float64)
    samples = mean + std * torch.randn(N_TRIALS, batch, DIM, generator=gen, dtype=torch.float64)
    return samples, float(mean.square().sum()), float(std.square().sum())


def _within(values: list[float], target: float, sigmas: float = 4.0) -> bool:
    t = torch.tensor(values, dtype=torch.float64)
    return abs(float(t.mean()) - target) < sigmas * float(t.std()) / math.sqrt(len(values))


def test_per_sample_estimator_is_unbiased():
    samples, grad_sq, trace_cov = _synthetic(batch=8, seed=0)
    ests = [gs.noise_scale_per_sample(s) for s in samples]
    assert _within([e.grad_sq for e in ests], grad_sq)
    assert _within([e.trace_cov for e in ests], trace_cov)
    # the naive |mean|^2 is biased by tr(Sigma)/B: the test can tell the difference
    naive = [float(s.mean(0).square().sum()) for s in samples]
    assert not _within(naive, grad_sq)


def test_two_batch_estimator_is_unbiased():
    small, grad_sq, trace_cov = _synthetic(batch=4, seed=1)
    big, _, _ = _synthetic(batch=32, seed=2)
    ests = [
        gs.noise_scale_two_batch(
            float(s.mean(0).square().sum()), float(b.mean(0).square().sum()), 4, 32
        )
        for s, b in zip(small, big, strict=True)
    ]
    assert _within([e.grad_sq for e in ests], grad_sq)
    assert _within([e.trace_cov for e in ests], trace_cov)


def test_batches_estimator_is_unbiased():
    samples, grad_sq, trace_cov = _synthetic(batch=12, seed=3)
    # 3 batches of 4 examples each, gradients = their means
    batch_grads = samples.view(N_TRIALS, 3, 4, DIM).mean(dim=2)
    ests = [gs.noise_scale_from_batches(g, batch_size=4) for g in batch_grads]
    assert _within([e.grad_sq for e in ests], grad_sq)
    assert _within([e.trace_cov for e in ests], trace_cov)


def test_ema_divides_after_averaging():
    ema = gs.NoiseScaleEMA(beta=0.9)
    assert math.isnan(ema.value)
    assert ema.update(gs.NoiseScaleEstimate(2.0, 8.0)) == pytest.approx(4.0)  # bias-corrected
    ema.update(gs.NoiseScaleEstimate(-1.0, 2.0))  # a negative |G|^2 estimate is kept, not dropped
    num = (0.9 * 0.1 * 8.0 + 0.1 * 2.0) / (1 - 0.81)
    den = (0.9 * 0.1 * 2.0 + 0.1 * -1.0) / (1 - 0.81)
    assert ema.value == pytest.approx(num / den)
    ema.update(gs.NoiseScaleEstimate(math.nan, 1.0))
    assert ema.count == 2  # non-finite estimates are skipped


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def test_per_sample_gradients_match_a_loop():
    model = _tiny_model()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    fast = gs.per_sample_gradients(model, nn.functional.cross_entropy, x, y, train=False)
    rows = []
    for i in range(6):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    torch.testing.assert_close(fast, torch.stack(rows))
    with pytest.raises(ValueError, match="batch norm"):
        gs.per_sample_gradients(nn.BatchNorm1d(5), lambda o, t: o.sum(), x, y, train=True)


def test_coherence_extremes_and_conflict_matrix():
    same = torch.ones(4, 3)
    c = gs.gradient_coherence(same)
    assert c["alpha"] == pytest.approx(1.0) and c["m_coherence"] == pytest.approx(4.0)
    orth = torch.eye(4)
    c = gs.gradient_coherence(orth)
    assert c["m_coherence"] == pytest.approx(1.0) and c["mean_cosine"] == pytest.approx(0.0)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    report = gs.conflict_report([(w * torch.tensor([1.0, 0.0])).sum(), -w[0] + 0 * w[1]], [w])
    assert float(report["cosine_matrix"][0, 1]) == pytest.approx(-1.0)
    assert report["conflict_fraction"] == 1.0


def test_zero_gradient_check():
    model = _tiny_model()
    check = gs.zero_gradient_check(model)
    assert check.fired and "without .grad" in check.reason  # backward never called
    model.requires_grad_(False)
    check = gs.zero_gradient_check(model)
    assert check.fired and "frozen" in check.reason and len(check.frozen) == 4
    with pytest.raises(RuntimeError, match="not training"):
        gs.zero_gradient_check(model, raise_error=True)
    model.requires_grad_(True)
    model(torch.randn(2, 5, dtype=torch.float64)).sum().mul(0.0).backward()
    check = gs.zero_gradient_check(model)
    assert check.fired and "all-zero" in check.reason
    model.zero_grad()
    model(torch.randn(2, 5, dtype=torch.float64)).pow(2).sum().backward()
    assert not gs.zero_gradient_check(model).fired


def test_layer_norms_and_update_tracker():
    model = _tiny_model()
    model(torch.randn(3, 5, dtype=torch.float64)).pow(2).sum().backward()
    norms = gs.layer_grad_norms(model)
    assert set(norms) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert gs.global_grad_norm(model) == pytest.approx(
        float(nn.utils.clip_grad_norm_(model.parameters(), math.inf))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = gs.UpdateTracker(model)
    tracker.snapshot()
    opt.step()
    stats = tracker.measure()
    for name, _ in model.named_parameters():
        assert stats[f"update_norm/{name}"] == pytest.approx(0.01 * norms[name])
    params = gs.layer_param_norms(model)
    assert stats["update_ratio/0.weight"] == pytest.approx(
        stats["update_norm/0.weight"] / params["0.weight"], rel=1e-2
    )
    with pytest.raises(RuntimeError, match="before snapshot"):
        tracker.measure()


def test_bad_batch_sizes_named():
    with pytest.raises(ValueError, match="small_batch=8, big_batch=4"):
        gs.noise_scale_two_batch(1.0, 1.0, 8, 4)
    with pytest.raises(ValueError, match="Invalid per_sample"):
        gs.noise_scale_per_sample(torch.ones(1, 3))
