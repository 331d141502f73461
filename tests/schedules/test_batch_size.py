"""AdAdaGrad norm test / inner-product test and the adaptive batch-size controller."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradkit.schedules import AdaptiveBatchSize, inner_product_test, norm_test


def reference_norm_test(samples, eta, b=None):
    """Byrd et al. (2012) / Lau et al. (2024), float64 loops over flattened per-sample gradients:
    S = 1/(n-1) sum_i ||g_i - g_bar||^2;  passed iff S / b <= eta^2 ||g_bar||^2;
    required = S / (eta^2 ||g_bar||^2)."""
    n = len(samples)
    b = n if b is None else b
    dim = len(samples[0])
    g_bar = [math.fsum(s[j] for s in samples) / n for j in range(dim)]
    spread = math.fsum(math.fsum((s[j] - g_bar[j]) ** 2 for j in range(dim)) for s in samples) / (
        n - 1
    )
    norm_sq = math.fsum(x * x for x in g_bar)
    return spread, norm_sq, spread / b <= eta**2 * norm_sq, spread / (eta**2 * norm_sq)


def reference_inner_product_test(samples, theta, nu):
    """Bollapragada et al. (2018), with the orthogonal parts materialized."""
    n = len(samples)
    dim = len(samples[0])
    g_bar = [math.fsum(s[j] for s in samples) / n for j in range(dim)]
    norm_sq = math.fsum(x * x for x in g_bar)
    v = [math.fsum(s[j] * g_bar[j] for j in range(dim)) for s in samples]
    v_mean = math.fsum(v) / n
    var_v = math.fsum((x - v_mean) ** 2 for x in v) / (n - 1)
    ortho = [[s[j] - v[i] / norm_sq * g_bar[j] for j in range(dim)] for i, s in enumerate(samples)]
    o_mean = [math.fsum(o[j] for o in ortho) / n for j in range(dim)]
    var_o = math.fsum(
        math.fsum((o[j] - o_mean[j]) ** 2 for o in ortho) / (n - 1) for j in range(dim)
    )
    passed = var_v / n <= theta**2 * norm_sq**2 and var_o / n <= nu**2 * norm_sq
    required = max(var_v / (theta**2 * norm_sq**2), var_o / (nu**2 * norm_sq))
    return var_v, var_o, passed, required


def _per_sample(n, seed, dtype=torch.float64, scale=1.0, mean=0.3):
    g = torch.Generator().manual_seed(seed)
    return {
        "weight": (mean + scale * torch.randn(n, 3, 4, generator=g, dtype=torch.float64)).to(dtype),
        "bias": (mean + scale * torch.randn(n, 4, generator=g, dtype=torch.float64)).to(dtype),
    }


def _flat(grads):
    n = next(iter(grads.values())).shape[0]
    return torch.cat([t.double().reshape(n, -1) for t in grads.values()], dim=1).tolist()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eta", [0.3, 1.0, 3.0])
def test_norm_test_matches_reference(seed, eta):
    grads = _per_sample(9, seed)
    spread, norm_sq, passed, required = reference_norm_test(_flat(grads), eta)
    r = norm_test(grads, eta=eta)
    assert r.variance == pytest.approx(spread, rel=1e-12)
    assert r.grad_norm_sq == pytest.approx(norm_sq, rel=1e-12)
    assert r.required_batch_size == pytest.approx(required, rel=1e-12)
    assert r.passed == passed
    assert r.samples == r.batch_size == 9
    assert r.next_batch_size == (9 if passed else math.ceil(required))


def test_norm_test_decides_both_ways_and_float32():
    grads = _per_sample(16, 0, dtype=torch.float32)
    _, _, _, required = reference_norm_test(_flat(grads), 1.0)
    loose = norm_test(grads, eta=1.0, batch_size=math.ceil(required))
    tight = norm_test(grads, eta=1.0, batch_size=math.floor(required))
    assert loose.passed and not tight.passed
    assert tight.next_batch_size == math.ceil(required)
    assert loose.required_batch_size == pytest.approx(required, rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_inner_product_test_matches_reference(seed):
    grads = _per_sample(7, seed, mean=0.5)
    var_v, var_o, passed, required = reference_inner_product_test(_flat(grads), 0.7, 0.9)
    r = inner_product_test(grads, theta=0.7, nu=0.9)
    assert r.inner_product_variance == pytest.approx(var_v, rel=1e-10)
    assert r.variance - r.inner_product_variance / r.grad_norm_sq == pytest.approx(var_o, rel=1e-10)
    assert r.required_batch_size == pytest.approx(required, rel=1e-10)
    assert r.passed == passed


def test_micro_batch_means_give_the_same_decision_statistics():
    # micro-batch means of m samples: m * Var(means) estimates the per-sample variance
    g = torch.Generator().manual_seed(0)
    reps, k, m, d = 4000, 4, 8, 6
    sigma = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0, 1.5], dtype=torch.float64)
    estimates = []
    for _ in range(reps):
        samples = 1.0 + sigma * torch.randn(k * m, d, generator=g, dtype=torch.float64)
        means = samples.reshape(k, m, d).mean(dim=1)
        r = norm_test(means, eta=1.0, micro_batch_size=m)
        assert r.samples == k * m
        assert r.grad_norm_sq == pytest.approx(samples.mean(0).square().sum().item(), rel=1e-10)
        estimates.append(r.variance)
    truth = sigma.square().sum().item()
    mean_estimate = sum(estimates) / reps
    # unbiased: the Monte Carlo mean is within a few standard errors of tr(Sigma)
    stderr = torch.tensor(estimates).std().item() / math.sqrt(reps)
    assert abs(mean_estimate - truth) < 4 * stderr
    # without the factor m the estimate would be 8x too small
    assert mean_estimate > 0.8 * truth


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    test=st.sampled_from(["norm", "inner_product"]),
)
def test_invariant_to_gradient_scale_and_sample_order(n, d, seed, scale, test):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    run = norm_test if test == "norm" else inner_product_test
    base = run(grads).required_batch_size
    scaled = run(grads * scale).required_batch_size
    permuted = run(grads[torch.randperm(n, generator=g)]).required_batch_size
    assert scaled == pytest.approx(base, rel=1e-8)
    assert permuted == pytest.approx(base, rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    grads = _per_sample(8, 1)
    reference = norm_test(grads)
    low = norm_test({k: v.to(dtype) for k, v in grads.items()})
    assert low.required_batch_size == pytest.approx(reference.required_batch_size, rel=2e-2)


def test_zero_gradients():
    zeros = torch.zeros(5, 3)
    assert norm_test(zeros).passed  # no noise, no signal: nothing to grow for
    r = norm_test(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # mean 0, variance 2
    assert not r.passed and math.isinf(r.required_batch_size)
    assert math.isinf(r.next_batch_size)
    capped = AdaptiveBatchSize(batch_size=2, max_batch_size=50)
    assert capped.observe(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 50
    uncapped = AdaptiveBatchSize(batch_size=2)
    assert uncapped.observe(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 2


def _draw(batch, mean, sigma, g):
    return mean + sigma * torch.randn(batch, mean.numel(), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("test", ["norm", "inner_product"])
def test_controller_grows_when_noise_dominates(test):
    g = torch.Generator().manual_seed(0)
    mean = torch.ones(10, dtype=torch.float64)  # ||mu||^2 = 10
    controller = AdaptiveBatchSize(batch_size=4, test=test, eta=0.5, theta=0.5, nu=0.5)
    sizes = [controller.observe(_draw(controller.batch_size, mean, 2.0, g)) for _ in range(40)]
    # tr(Sigma) = 40 per sample: the norm test asks for b ~ tr(1 - eta^2)/(eta^2 ||mu||^2) = 12
    assert sizes[-1] > 4 and controller.num_increases >= 1
    assert sizes == sorted(sizes)  # never shrinks
    if test == "norm":
        assert 8 <= sizes[-1] <= 40


@pytest.mark.parametrize("test", ["norm", "inner_product"])
def test_controller_keeps_batch_when_signal_dominates(test):
    g = torch.Generator().manual_seed(1)
    mean = torch.ones(10, dtype=torch.float64)
    controller = AdaptiveBatchSize(batch_size=4, test=test, eta=0.5, theta=0.5, nu=0.5)
    sizes = [controller.observe(_draw(4, mean, 0.1, g)) for _ in range(40)]
    assert sizes == [4] * 40 and controller.num_increases == 0
    assert controller.num_observed == 40 and controller.last.passed


def _feed(controller, steps, mean, sigma, gen):
    """Observe ``steps`` batches, each drawn at the controller's current batch size."""
    return [
        controller.observe(_draw(controller.batch_size, mean, sigma, gen)) for _ in range(steps)
    ]


def test_controller_is_capped():
    g = torch.Generator().manual_seed(2)
    mean = torch.full((10,), 0.01, dtype=torch.float64)  # almost pure noise
    controller = AdaptiveBatchSize(batch_size=4, eta=0.2, max_batch_size=1000)
    sizes = _feed(controller, 6, mean, 3.0, g)
    assert sizes[-1] == 1000 and max(sizes) == 1000


def test_controller_state_dict_resume():
    mean = torch.full((10,), 0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    full = AdaptiveBatchSize(batch_size=2, eta=0.5, max_batch_size=10**6)
    expected = _feed(full, 8, mean, 1.0, g)
    assert expected[-1] > 2  # the run grows, so the resumed batch size matters

    g = torch.Generator().manual_seed(3)
    first = AdaptiveBatchSize(batch_size=2, eta=0.5, max_batch_size=10**6)
    head = _feed(first, 4, mean, 1.0, g)
    resumed = AdaptiveBatchSize(batch_size=2, eta=0.5, max_batch_size=10**6)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == first.state_dict()
    tail = _feed(resumed, 4, mean, 1.0, g)
    assert head + tail == expected
    assert resumed.num_observed == 8 and resumed.num_increases == full.num_increases


def test_dict_of_vmapped_per_sample_grads():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return (out - yi.unsqueeze(0)).square().mean()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    loops = []
    for i in range(6):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        loops.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).tolist())
    spread, norm_sq, _, _ = reference_norm_test(loops, 0.1)
    r = norm_test(per_sample)
    assert r.variance == pytest.approx(spread, rel=1e-5)
    assert r.grad_norm_sq == pytest.approx(norm_sq, rel=1e-5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: AdaptiveBatchSize(batch_size=0), "batch_size"),
        (lambda: AdaptiveBatchSize(batch_size=4, test="coordinate"), "test"),
        (lambda: AdaptiveBatchSize(batch_size=4, eta=0.0), "eta"),
        (lambda: AdaptiveBatchSize(batch_size=4, theta=-1.0), "theta"),
        (lambda: AdaptiveBatchSize(batch_size=4, nu=float("inf")), "nu"),
        (lambda: AdaptiveBatchSize(batch_size=8, max_batch_size=4), "max_batch_size"),
        (lambda: norm_test(torch.zeros(1, 3)), "at least 2"),
        (lambda: norm_test([torch.zeros(3, 2), torch.zeros(4)]), "leading"),
        (lambda: norm_test([]), "empty"),
        (lambda: norm_test(torch.zeros(3, 2), micro_batch_size=0), "micro_batch_size"),
        (lambda: norm_test(torch.zeros(3, 2), batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_repr():
    assert repr(AdaptiveBatchSize(batch_size=8, max_batch_size=64)) == (
        "AdaptiveBatchSize(batch_size=8, test='norm', eta=0.1, max_batch_size=64)"
    )
