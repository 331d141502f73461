"""GCond, GradNorm, IGB, the task-gradient accumulator and representation-level aggregation."""

import itertools
import math

import numpy as np
import pytest
import torch

from gradkit.multitask import (
    IGB,
    MGDA,
    GCond,
    GradNorm,
    Mean,
    TaskGradientAccumulator,
    backward,
)
from gradkit.multitask.gcond import effective_angle
from reference.gcond import GCondReference


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_jacobians(steps, m, n, seed):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=gen, dtype=torch.float64)
    # strongly conflicting rows (some pairs beyond the critical cosine) plus noise
    base[1] = -0.9 * base[0] + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    return [
        base + 0.3 * torch.randn(m, n, generator=gen, dtype=torch.float64) for _ in range(steps)
    ]


@pytest.mark.parametrize("mode", ["smooth", "zones"])
@pytest.mark.parametrize("momentum", [0.85, 0.0])
def test_gcond_matches_reference_over_steps(mode, momentum):
    agg = GCond(momentum=momentum, mode=mode)
    ref = GCondReference(3, momentum=momentum, mode=mode)
    for J in _random_jacobians(8, 3, 7, seed=1):
        np.testing.assert_allclose(agg(J).numpy(), ref(J.numpy()), rtol=1e-10, atol=1e-12)
    assert list(agg.history) == ref.wins[-3:]
    np.testing.assert_allclose(agg.norm_emas, ref.emas, rtol=1e-12)
    assert agg.last_stats["rounds"] >= 1


def test_gcond_without_conflict_is_the_sum():
    J = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, 0.3]])
    assert torch.allclose(GCond(momentum=0.0)(J), J.sum(0))
    # with momentum, the first output is bias-corrected: exactly the sum too
    assert torch.allclose(GCond()(J), J.sum(0))


def test_gcond_critical_conflict_smooth_and_zones():
    g1 = torch.tensor([1.0, 0.0])
    J = torch.stack([g1, torch.tensor([-1.0, 0.05])])  # cosine ~ -0.999 < critical
    out_smooth = GCond(momentum=0.0, mode="smooth")(J)
    out_zones = GCond(momentum=0.0, mode="zones")(J)
    # sin(pi) = 0: the winner is untouched, the loser loses its component along the winner;
    # the zones rule zeroes the loser. Both modes arbitrate the same way.
    matches = []
    for w, lo in ((0, 1), (1, 0)):
        projected = J[lo] - (J[lo] @ J[w]) / (J[w] @ J[w]) * J[w]
        if torch.allclose(out_smooth, J[w] + projected, atol=1e-12):
            matches.append(w)
            assert torch.allclose(out_zones, J[w])
    assert len(matches) == 1


def test_effective_angle_is_continuous_and_monotone():
    th = (-0.8, -0.5, 0.0)
    cs = np.linspace(-1, 0.2, 241)
    angles = [effective_angle(c, th, 2.0) for c in cs]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(angles))
    assert effective_angle(0.0, th, 2.0) == 0.0
    assert math.isclose(effective_angle(-0.5, th, 2.0), math.pi / 2)
    assert effective_angle(-0.9, th, 2.0) == math.pi


def test_gcond_dominant_task_loses():
    agg = GCond(momentum=0.0, dominance_window=2)
    agg.history.extend([0, 0])
    assert agg.arbitrate(torch.eye(2), 0, 1) == (1, 0)
    agg.history.clear()
    agg.history.extend([1, 0])
    assert agg.arbitrate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), 0, 1)[0] == 0  # stronger wins


def test_gcond_state_dict_resume_is_exact():
    Js = _random_jacobians(6, 3, 5, seed=3)
    full = GCond()
    outs = [full(J) for J in Js]
    first = GCond()
    for J in Js[:3]:
        first(J)
    resumed = GCond()
    resumed.load_state_dict(first.state_dict())
    for J, expected in zip(Js[3:], outs[3:], strict=True):
        assert torch.equal(resumed(J), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 1.0},
        {"thresholds": (0.0, -0.5, -0.8)},
        {"thresholds": (-2.0, -0.5, 0.0)},
        {"mode": "hard"},
        {"remap_power": 0.0},
        {"dominance_window": -1},
        {"tie_breaking": (-1.0, 1.0)},
        {"max_iters": 0},
        {"norm_cap": 0.0},
    ],
)
def test_gcond_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        GCond(**kwargs)


def _two_task_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    trunk = torch.nn.Linear(4, 3)
    heads = [torch.nn.Linear(3, 1) for _ in range(2)]
    with torch.no_grad():
        for p in [*trunk.parameters(), *(q for h in heads for q in h.parameters())]:
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(8, 4, generator=gen)
    ys = [torch.randn(8, 1, generator=gen), 10 * torch.randn(8, 1, generator=gen)]
    return trunk, heads, x, ys


def _losses(trunk, heads, x, ys):
    z = torch.tanh(trunk(x))
    return [torch.nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys, strict=True)], z


def _gradnorm_reference(losses_per_step, raw_norms_fn, alpha, lr, steps):
    """Algorithm 1 with autograd on L_grad w.r.t. w only (targets detached), persistent Adam."""
    w = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    history, l0 = [], None
    for t in range(steps):
        losses, raw = losses_per_step(t), raw_norms_fn(t)
        l0 = losses if l0 is None else l0
        G = w * raw
        ratio = losses / l0
        target = (G.mean() * (ratio / ratio.mean()) ** alpha).detach()
        opt.zero_grad()
        (G - target).abs().sum().backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(min=1e-4)
            w.mul_(2 / w.sum())
        history.append(w.detach().clone())
    return history


def test_gradnorm_weights_match_autograd_reference():
    trunk, heads, x, ys = _two_task_problem()
    gn = GradNorm(2, alpha=1.5, lr=0.05)
    model_opt = torch.optim.SGD(
        [*trunk.parameters(), *(p for h in heads for p in h.parameters())], lr=0.01
    )
    recorded_losses, recorded_raw, ours = [], [], []
    for _ in range(5):
        model_opt.zero_grad()
        losses, _ = _losses(trunk, heads, x, ys)
        raw = torch.stack(
            [
                torch.cat(
                    [
                        g.reshape(-1)
                        for g in torch.autograd.grad(
                            lo, list(trunk.parameters()), retain_graph=True
                        )
                    ]
                ).norm()
                for lo in losses
            ]
        )
        recorded_losses.append(torch.stack([lo.detach() for lo in losses]))
        recorded_raw.append(raw.detach())
        gn.backward(losses, trunk.parameters())
        ours.append(gn.weights.detach().clone())
        model_opt.step()
    ref = _gradnorm_reference(lambda t: recorded_losses[t], lambda t: recorded_raw[t], 1.5, 0.05, 5)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
        assert math.isclose(float(a.sum()), 2.0) and bool((a > 0).all())
    assert not torch.allclose(ours[-1], torch.ones(2))  # the weights really move


def test_gradnorm_writes_weighted_model_gradient():
    trunk, heads, x, ys = _two_task_problem(1)
    params = [*trunk.parameters(), *(p for h in heads for p in h.parameters())]
    gn = GradNorm(2)
    gn.weights.data = torch.tensor([0.5, 1.5])
    losses, _ = _losses(trunk, heads, x, ys)
    expected = torch.autograd.grad(0.5 * losses[0] + 1.5 * losses[1], params, retain_graph=True)
    used = gn.backward(losses, trunk.parameters())
    assert torch.equal(used, torch.tensor([0.5, 1.5]))
    for p, g in zip(params, expected, strict=True):
        assert torch.allclose(p.grad, g)


def test_gradnorm_favours_the_slower_task_and_resumes():
    gn = GradNorm(2, alpha=1.0, lr=0.1)
    gn.set_initial_losses([1.0, 1.0])
    # task 1 trains slower (higher loss ratio) with equal raw norms: its weight must grow
    for _ in range(5):
        gn._update_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.9]))
    assert gn.weights[1] > gn.weights[0]
    clone = GradNorm(2, alpha=1.0, lr=0.1)
    clone.load_state_dict(gn.state_dict())
    for obj in (gn, clone):
        obj._update_weights(torch.tensor([1.0, 2.0]), torch.tensor([0.3, 0.8]))
    assert torch.equal(gn.weights, clone.weights)
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(2, alpha=-1.0)
    with pytest.raises(ValueError, match="initial losses"):
        gn.set_initial_losses([1.0, 0.0])


def test_igb_weights_and_objective():
    igb = IGB(2, base_epoch=1)
    losses = [torch.tensor(2.0), torch.tensor(0.5)]
    assert torch.allclose(igb(losses), torch.log(torch.tensor(2.0)) + torch.log(torch.tensor(0.5)))
    igb.end_epoch()  # epoch 0
    assert torch.isnan(igb.base_losses).all()
    igb(losses)
    igb([torch.tensor(4.0), torch.tensor(1.5)])
    igb.end_epoch()  # epoch 1 -> base = mean = (3, 1)
    assert torch.allclose(igb.base_losses, torch.tensor([3.0, 1.0]))
    new = [torch.tensor(1.5), torch.tensor(0.9)]
    gaps = torch.tensor([1.5 / 3.0, 0.9 / 1.0])
    w = 2 * torch.softmax(gaps, 0)
    expected = (w * torch.log(torch.stack(new))).sum()
    assert torch.allclose(igb(new), expected)
    assert torch.allclose(igb.last_weights, w)
    clone = IGB(2, base_epoch=1)
    clone.load_state_dict(igb.state_dict())
    assert torch.equal(clone(new), igb(new))
    with pytest.raises(ValueError, match="positive"):
        igb([torch.tensor(-1.0), torch.tensor(1.0)])
    with pytest.raises(ValueError, match="base_epoch"):
        IGB(2, base_epoch=-1)


def test_accumulator_means_and_stochastic_schedule():
    trunk, heads, x, ys = _two_task_problem(2)
    acc = TaskGradientAccumulator(
        trunk.parameters(), 2, task_params=[h.parameters() for h in heads]
    )
    assert [acc.next_task(4) for _ in range(1)] == [0]
    rows, head_grads = [[], []], [[], []]
    for k in range(4):
        task = acc.next_task(4)
        assert task == (0 if k < 2 else 1)
        xs = x[2 * k : 2 * k + 2]
        losses, _ = _losses(trunk, heads, xs, [y[2 * k : 2 * k + 2] for y in ys])
        g = torch.autograd.grad(
            losses[task], [*trunk.parameters(), *heads[task].parameters()], retain_graph=True
        )
        rows[task].append(torch.cat([t.reshape(-1) for t in g[:2]]))
        head_grads[task].append(g[2:])
        acc.add([losses[task]], tasks=[task])
    J = acc.backward(Mean())
    expected = torch.stack([torch.stack(r).mean(0) for r in rows])
    assert torch.allclose(J, expected)
    flat = torch.cat([p.grad.reshape(-1) for p in trunk.parameters()])
    assert torch.allclose(flat, expected.mean(0))
    for t in range(2):
        for p, *gs in zip(heads[t].parameters(), *head_grads[t], strict=True):
            assert torch.allclose(p.grad, torch.stack(gs).mean(0))
    with pytest.raises(ValueError, match="divisible"):
        acc.next_task(3)
    with pytest.raises(ValueError, match="task"):
        acc.jacobian()  # reset after backward: nothing accumulated


def test_representation_aggregation():
    trunk, heads, x, ys = _two_task_problem(3)
    shared = list(trunk.parameters())
    losses, _ = _losses(trunk, heads, x, ys)
    expected = torch.autograd.grad(sum(losses) / 2, shared, retain_graph=True)
    losses, z = _losses(trunk, heads, x, ys)
    J = backward(losses, shared, Mean(), representation=z)
    assert J.shape == (2, z.numel())
    for p, g in zip(shared, expected, strict=True):  # Mean is linear: exact
        assert torch.allclose(p.grad, g)
    for p in shared:
        p.grad = None
    losses, z = _losses(trunk, heads, x, ys)
    mgda = MGDA()
    J = backward(losses, shared, mgda, representation=z)
    alpha = mgda.weights(J)
    losses, _ = _losses(trunk, heads, x, ys)
    expected = torch.autograd.grad(alpha[0] * losses[0] + alpha[1] * losses[1], shared)
    for p, g in zip(shared, expected, strict=True):
        assert torch.allclose(p.grad, g)
    with pytest.raises(ValueError, match="representation"):
        backward(_losses(trunk, heads, x, ys)[0], shared, Mean(), representation=torch.zeros(3))
