"""Sophia and the diagonal-Hessian estimators: Hutchinson is unbiased (against the exact Hessian
of a small network), GNB's expectation is the Gauss-Newton diagonal, refreshes do not leak memory
over 1,000 steps, and the update_hessian / hessian_due / hessian_generator API."""

from __future__ import annotations

import gc
import io
import itertools
import math
import os

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from gradkit.core import NonFiniteGradientError
from gradkit.optim.sophia import Sophia, gnb_diagonal, hutchinson_diagonal

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Thousands of tiny autograd calls: a second intra-op thread only adds wake-up latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(sizes, seed=0, dtype=F64):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(dtype)


def _flat_function(model, loss_of_output):
    """loss as a function of one flat parameter vector (for torch.autograd.functional)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(flat):
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        values = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return loss_of_output(lambda x: torch.func.functional_call(model, values, (x,)))

    return f


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


# -- Hutchinson ---------------------------------------------------------------------------------
def test_hutchinson_is_unbiased_against_the_exact_hessian(one_thread) -> None:
    model = _mlp([3, 4, 2])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    params = list(model.parameters())
    exact = torch.autograd.functional.hessian(
        _flat_function(model, lambda fwd: F.mse_loss(fwd(x), y)), _flat(params).detach()
    )
    n = 2000
    mean = _flat(hutchinson_diagonal(lambda: F.mse_loss(model(x), y), params,
                                     generator=torch.Generator().manual_seed(1), samples=n))  # fmt: skip
    diag = exact.diagonal()
    # Var[u_i (Hu)_i] = sum_{j != i} H_ij^2 for Rademacher u
    std_err = ((exact.square().sum(1) - diag.square()) / n).sqrt()
    assert (mean - diag).abs().le(4.5 * std_err + 1e-12).all(), (mean - diag) / std_err
    # the tolerance is tight enough to see a bias of 20% of the largest curvature
    assert (4.5 * std_err).max() < 0.2 * diag.abs().max()
    # and far from what a zero or a plain-gradient-squared estimator would give
    assert (mean - diag).abs().max() < 0.2 * (diag.abs().max())


def test_hutchinson_is_exact_for_a_separable_loss() -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    y = torch.tensor([[3.0]], dtype=F64, requires_grad=True)
    unused = torch.ones(2, dtype=F64, requires_grad=True)
    closure = lambda: (x**4).sum() + 2 * (y**3).sum() + 0 * (x**0).sum()  # noqa: E731
    for samples in (1, 3):
        dx, dy, du = hutchinson_diagonal(closure, [x, y, unused], samples=samples)
        torch.testing.assert_close(dx, 12 * x.detach() ** 2, rtol=0, atol=1e-12)
        torch.testing.assert_close(dy, 12 * y.detach(), rtol=0, atol=1e-12)
        assert torch.equal(du, torch.zeros(2, dtype=F64))
    assert x.grad is None and y.grad is None  # nothing is written to .grad
    with pytest.raises(ValueError, match="samples"):
        hutchinson_diagonal(closure, [x], samples=0)


def test_hutchinson_is_reproducible_with_a_generator() -> None:
    model = _mlp([3, 4, 2])
    x = torch.randn(5, 3, dtype=F64)
    closure = lambda: model(x).square().sum()  # noqa: E731
    params = list(model.parameters())
    a = hutchinson_diagonal(closure, params, generator=torch.Generator().manual_seed(7))
    b = hutchinson_diagonal(closure, params, generator=torch.Generator().manual_seed(7))
    c = hutchinson_diagonal(closure, params, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


# -- Gauss-Newton-Bartlett ----------------------------------------------------------------------
def test_gnb_expectation_is_the_gauss_newton_diagonal(one_thread) -> None:
    model = _mlp([3, 4, 3])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    params = list(model.parameters())
    flat = _flat(params).detach()
    logits_of = _flat_function(model, lambda fwd: fwd(x))
    jac = torch.autograd.functional.jacobian(logits_of, flat)  # (B, C, P)
    probs = torch.softmax(logits_of(flat), -1).detach()
    curvature = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]  # (B, C, C)
    gauss_newton = torch.einsum("bcp,bcd,bdq->pq", jac, curvature, jac) / x.shape[0]
    expected = gauss_newton.diagonal()

    gen = torch.Generator().manual_seed(3)
    samples = torch.stack([_flat(gnb_diagonal(model, x, generator=gen)) for _ in range(800)])
    mean, std_err = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    assert (mean - expected).abs().le(4.5 * std_err + 1e-12).all(), (mean - expected) / std_err
    assert (4.5 * std_err).max() < 0.25 * expected.max()
    assert all(p.grad is None for p in params)


def test_gnb_needs_params_for_a_plain_callable_and_logits() -> None:
    model = _mlp([3, 2])
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="params"):
        gnb_diagonal(lambda inp: model(inp), x)
    with pytest.raises(ValueError, match="model output"):
        gnb_diagonal(lambda inp: (model(inp),), x, params=model.parameters())
    # sequence-shaped logits: every position is a sample (B = 2 * 5 tokens)
    lm = torch.nn.Linear(3, 4).double()
    tokens = torch.randn(2, 5, 3, dtype=F64)
    est = gnb_diagonal(lm, tokens, generator=torch.Generator().manual_seed(0))
    assert [e.shape for e in est] == [p.shape for p in lm.parameters()]


# -- the optimizer API --------------------------------------------------------------------------
def _train(model, opt, batches, estimator="gnb", seed=0, start=0):
    for x, y in batches[start:]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if opt.hessian_due():
            gen = opt.hessian_generator(seed)
            if estimator == "gnb":
                est = gnb_diagonal(model, x, generator=gen)
            else:
                est = hutchinson_diagonal(
                    lambda x=x, y=y: F.cross_entropy(model(x), y), model.parameters(),
                    generator=gen,
                )  # fmt: skip
            opt.update_hessian(est)


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_resume_with_refreshes_is_bit_exact(estimator: str) -> None:
    batches = _batches(25)
    model = _mlp([5, 6, 3], seed=4)
    opt = Sophia(model.parameters(), lr=0.05, hessian_interval=4)
    _train(model, opt, batches, estimator)

    first = _mlp([5, 6, 3], seed=4)
    opt1 = Sophia(first.parameters(), lr=0.05, hessian_interval=4)
    _train(first, opt1, batches[:10], estimator)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _mlp([5, 6, 3], seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = Sophia(resumed.parameters(), lr=0.05, hessian_interval=4)
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, batches, estimator, start=10)
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters(), strict=True)
    )
    h = [opt.state[p]["sophia.hessian"] for p in model.parameters()]
    assert all(bool(t.abs().sum() > 0) for t in h)  # refreshes really happened


def test_hessian_due_follows_the_interval_and_clears_after_a_refresh() -> None:
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = Sophia([p], lr=0.1, hessian_interval=3)
    due = []
    for _ in range(7):
        p.grad = torch.ones(3, dtype=F64)
        opt.step()
        due.append(opt.hessian_due())
        if due[-1]:
            opt.update_hessian([torch.ones(3, dtype=F64)])
            assert not opt.hessian_due()
    assert due == [False, False, True, False, False, True, False]
    assert opt.state[p]["sophia.hessian_step"].item() == 6


def test_update_hessian_blends_into_the_ema_and_accepts_a_mapping() -> None:
    a = torch.zeros(2, dtype=F64, requires_grad=True)
    b = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = Sophia([{"params": [a]}, {"params": [b], "betas": (0.9, 0.5)}], lr=0.1)
    opt.update_hessian([torch.full((2,), 4.0, dtype=F64), None])  # before the first step
    torch.testing.assert_close(opt.state[a]["sophia.hessian"], torch.full((2,), 0.04, dtype=F64))
    assert b not in opt.state or not opt.state[b]
    opt.update_hessian({b: torch.full((3,), 2.0, dtype=F64)})
    opt.update_hessian({b: torch.full((3,), 4.0, dtype=F64)})
    torch.testing.assert_close(opt.state[b]["sophia.hessian"], torch.full((3,), 2.5, dtype=F64))
    with pytest.raises(ValueError, match="estimates"):
        opt.update_hessian([torch.ones(2, dtype=F64)])
    with pytest.raises(ValueError, match="shape"):
        opt.update_hessian({a: torch.ones(3, dtype=F64)})
    with pytest.raises(ValueError, match="not a parameter"):
        opt.update_hessian({torch.zeros(2): torch.ones(2)})


def test_nonfinite_estimates_follow_the_policy() -> None:
    p = torch.zeros(2, dtype=F64, requires_grad=True)
    bad = [torch.tensor([1.0, float("nan")], dtype=F64)]
    opt = Sophia([p], nonfinite="raise")
    with pytest.raises(NonFiniteGradientError, match="Hessian"):
        opt.update_hessian(bad)
    opt = Sophia([p])
    opt.update_hessian([torch.ones(2, dtype=F64)])
    before = opt.state[p]["sophia.hessian"].clone()
    with pytest.warns(RuntimeWarning, match="non-finite Hessian"):
        opt.update_hessian(bad)
    assert torch.equal(opt.state[p]["sophia.hessian"], before)


def test_update_is_curvature_scaled_then_clipped() -> None:
    # one step with m_1 = (1 - b1) g: coordinates with large rho*h move by lr*m/(rho*h), the
    # others by lr*sign(m); negative curvature (possible with Hutchinson) gives the sign step
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    opt = Sophia([p], lr=1.0, betas=(0.5, 0.0), rho=1.0, weight_decay=0.0)
    opt.update_hessian([torch.tensor([10.0, 0.1, -5.0, 0.0], dtype=F64)])
    p.grad = torch.tensor([2.0, 2.0, 2.0, -2.0], dtype=F64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -1.0, -1.0, 1.0], dtype=F64))


# -- memory ------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _rss_bytes()


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _memory_model(device):
    """A small MLP; training batches are small, the Hessian batch is large (512 rows), so that a
    leaked refresh graph (its saved activations) is big and a training step is cheap."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(),
        torch.nn.Linear(128, 10),
    ).to(device)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(16, 32, generator=g).to(device), torch.randint(0, 10, (16,), generator=g)
    big = torch.randn(512, 32, generator=g).to(device), torch.randint(0, 10, (512,), generator=g)
    loss = lambda xy: lambda: F.cross_entropy(model(xy[0]), xy[1].to(device))  # noqa: E731
    return model, loss(batch), loss(big)


def _memory_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


needs_memory_probe = pytest.mark.skipif(
    not torch.cuda.is_available() and not os.path.exists("/proc/self/statm"),
    reason="needs CUDA memory stats or /proc/self/statm",
)
TOLERANCE = 16 * 2**20  # bytes; one leaked refresh of this model holds well over 1 MiB


@needs_memory_probe
def test_peak_memory_stays_flat_over_1000_steps_with_refreshes() -> None:
    device = _memory_device()
    model, closure, hessian_closure = _memory_model(device)
    opt = Sophia(model.parameters(), lr=1e-3, hessian_interval=10)
    samples: dict[int, int] = {}
    live = {}
    for step in range(1, 1001):
        opt.zero_grad()
        closure().backward()
        opt.step()
        if opt.hessian_due():
            opt.update_hessian(
                hutchinson_diagonal(hessian_closure, model.parameters(), generator=None)
            )
            samples[step] = _memory_now(device)
        if step in (100, 1000):
            live[step] = _live_tensors()
    assert len(samples) == 100  # a refresh every 10 steps
    baseline = max(v for k, v in samples.items() if k <= 100)
    peak = max(v for k, v in samples.items() if k > 100)
    assert peak - baseline < TOLERANCE, (baseline, peak)
    assert live[1000] <= live[100] + 5, live


@needs_memory_probe
def test_memory_probe_sees_a_create_graph_leak() -> None:
    """The same probe on the failure mode the helpers avoid: keeping each refresh's
    create_graph=True gradient (and with it the second-order graph) alive."""
    device = _memory_device()
    model, _, hessian_closure = _memory_model(device)
    params = list(model.parameters())
    kept = []
    start = _memory_now(device)
    for _ in range(25):
        grads = torch.autograd.grad(hessian_closure(), params, create_graph=True)
        probes = [torch.randint_like(p, 2) * 2 - 1 for p in params]
        torch.autograd.grad(grads, params, grad_outputs=probes, retain_graph=True)
        kept.append(grads)  # what a stored create_graph gradient does
    leaked = _memory_now(device) - start
    del kept
    assert leaked > TOLERANCE, leaked
