"""DP-SGD: plain training without clip/noise, exact clipping bounds, noise variance, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

import gradkit.optim as go
from gradkit.privacy import DPOptimizer, PoissonSampler, make_private, poisson_data_loader


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches(n_batches=3, size=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (size,), generator=g),
        )
        for _ in range(n_batches)
    ]


@pytest.mark.parametrize(
    "make_opt",
    [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: go.AdamW(p, lr=1e-2)],
    ids=["torch-SGD", "gradkit-AdamW"],
)
def test_without_clipping_and_noise_equals_plain_training(make_opt):
    plain, private = _mlp(), _mlp()
    plain_opt = make_opt(plain.parameters())
    dp = DPOptimizer(
        make_opt(private.parameters()),
        private,
        F.cross_entropy,
        noise_multiplier=0.0,
        max_grad_norm=math.inf,
        expected_batch_size=7,
    )
    for x, y in _batches():
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
        dp.zero_grad()
        dp.accumulate(x, y)
        dp.step()
    for a, b in zip(plain.parameters(), private.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bound", [1e-3, 0.3, 1e3])
def test_batch_of_one_without_noise_has_norm_min_of_norm_and_bound(bound):
    model = _mlp()
    x, y = _batches(1, 1)[0]
    F.cross_entropy(model(x), y).backward()
    raw = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    dp = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        F.cross_entropy,
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=1,
    )
    dp.zero_grad()
    dp.accumulate(x, y)
    dp.privatize_gradients()
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert clipped.item() == pytest.approx(min(raw.item(), bound), rel=1e-12)


def test_per_layer_clipping_bounds_every_layer():
    model = _mlp()
    x, y = _batches(1, 1)[0]
    F.cross_entropy(model(x), y).backward()
    raw = [p.grad.norm().item() for p in model.parameters()]
    bounds = [0.05, 1e3, 0.01, 1e-3]
    dp = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        F.cross_entropy,
        clipping="per_layer",
        noise_multiplier=0.0,
        max_grad_norm=bounds,
        expected_batch_size=1,
    )
    dp.accumulate(x, y)
    dp.privatize_gradients()
    for p, r, c in zip(model.parameters(), raw, bounds, strict=True):
        assert p.grad.norm().item() == pytest.approx(min(r, c), rel=1e-12)
    assert dp.max_grad_norm == pytest.approx(math.sqrt(sum(c * c for c in bounds)))
    split = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        F.cross_entropy,
        clipping="per_layer",
        noise_multiplier=1.0,
        max_grad_norm=2.0,
        expected_batch_size=1,
    )
    assert split.layer_norms == [1.0] * 4 and split.max_grad_norm == pytest.approx(2.0)


def test_noise_has_std_sigma_times_bound_over_expected_batch_size():
    """Empty batch: the gradient is pure noise N(0, (sigma C / L)^2). With n draws the sample
    variance s^2 satisfies (n-1)s^2/var ~ chi2(n-1), i.e. z = (s^2/var - 1)/sqrt(2/(n-1)) ~ N(0,1)."""
    model = nn.Linear(100, 100).double()
    sigma, bound, expected = 1.3, 0.7, 4.0
    dp = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        F.cross_entropy,
        noise_multiplier=sigma,
        max_grad_norm=bound,
        expected_batch_size=expected,
        generator=torch.Generator().manual_seed(0),
    )
    dp.privatize_gradients()
    draws = torch.cat([p.grad.flatten() for p in model.parameters()])
    n = draws.numel()
    var = (sigma * bound / expected) ** 2
    z_var = (draws.var().item() / var - 1) / math.sqrt(2 / (n - 1))
    z_mean = draws.mean().item() / math.sqrt(var / n)
    assert abs(z_var) < 4 and abs(z_mean) < 4, (z_var, z_mean)


def test_noise_is_added_once_per_logical_batch_and_seeded():
    def private_grad(parts):
        model = _mlp()
        dp = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0),
            model,
            F.cross_entropy,
            noise_multiplier=0.8,
            max_grad_norm=0.5,
            expected_batch_size=7,
            chunk_size=3,
            generator=torch.Generator().manual_seed(5),
        )
        for x, y in parts:
            dp.accumulate(x, y)
        dp.privatize_gradients()
        return [p.grad.clone() for p in model.parameters()]

    x, y = _batches(1, 7)[0]
    whole = private_grad([(x, y)])
    split = private_grad([(x[:3], y[:3]), (x[3:], y[3:])])
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_poisson_sampler_expected_batch_size():
    size, rate, steps = 1000, 0.05, 400
    sampler = PoissonSampler(size, rate, steps=steps, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([len(b) for b in sampler], dtype=torch.float64)
    assert len(sampler) == steps == len(sizes)
    standard_error = math.sqrt(size * rate * (1 - rate) / steps)
    assert abs(sizes.mean().item() - size * rate) < 4 * standard_error
    assert PoissonSampler(size, rate).steps == 20  # one expected epoch by default


def test_empty_batches_flow_through_loader_and_optimizer():
    data = TensorDataset(torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,)))
    loader = poisson_data_loader(data, 0.02, steps=30, generator=torch.Generator().manual_seed(0))
    model = _mlp()
    dp = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        F.cross_entropy,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=0.2,
        sample_rate=0.02,
    )
    empty = 0
    for x, y in loader:
        empty += x.shape[0] == 0
        assert x.shape[1:] == (6,) and x.dtype == torch.float64
        dp.zero_grad()
        dp.accumulate(x, y)
        dp.step()
    assert empty > 0 and dp.accountant.steps == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_make_private_takes_the_sample_rate_from_the_dataset_size():
    data = TensorDataset(torch.randn(200, 6), torch.randint(0, 3, (200,)))
    weighted = DataLoader(data, batch_size=10, sampler=WeightedRandomSampler(torch.ones(200), 50))
    model = nn.Linear(6, 3)
    dp, loader = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        weighted,
        loss_fn=F.cross_entropy,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        seed=0,
    )
    assert dp.sample_rate == 10 / 200 and dp.expected_batch_size == 10 and len(loader) == 20


def test_dp_training_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(6, 2)
    dp, loader = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        DataLoader(TensorDataset(x, y), batch_size=40),
        loss_fn=F.cross_entropy,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        seed=0,
    )
    for _ in range(3):
        for xb, yb in loader:
            dp.zero_grad()
            dp.accumulate(xb, yb)
            dp.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
    assert 0 < dp.get_epsilon(1e-5) < math.inf


def test_bad_setups_are_refused():
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        DPOptimizer(
            torch.optim.SGD(bn.parameters(), lr=0.1),
            bn,
            F.cross_entropy,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
        )
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="inf"):
        DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            model,
            F.cross_entropy,
            noise_multiplier=1.0,
            max_grad_norm=math.inf,
            expected_batch_size=4,
        )
    with pytest.raises(ValueError, match="not in it"):
        DPOptimizer(
            torch.optim.SGD([model.weight], lr=0.1),
            model,
            F.cross_entropy,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
        )
    dp = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        F.cross_entropy,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
    )
    with pytest.raises(ValueError, match="closure"):
        dp.step(lambda: 0.0)


@pytest.mark.parametrize(("chunk_size", "method"), [(2, "vmap"), (3, "loop")])
def test_chunked_and_loop_paths_give_the_same_private_gradient(chunk_size, method):
    def private_grad(**kwargs):
        model = _mlp()
        dp = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.0), model, F.cross_entropy,
            noise_multiplier=0.0, max_grad_norm=0.3, expected_batch_size=7, **kwargs,
        )  # fmt: skip
        dp.accumulate(*_batches(1, 7)[0])
        dp.privatize_gradients()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(
        private_grad(), private_grad(chunk_size=chunk_size, method=method), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
