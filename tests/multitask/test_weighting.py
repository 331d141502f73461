"""SAM-GS, Bloop and the loss-weighting baselines (UW, DWA, RLW) against their papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.multitask.bloop import Bloop
from gradkit.multitask.loss_weighting import DWA, RLW, UncertaintyWeighting
from gradkit.multitask.sam_gs import SAMGS


# ----------------------------------------------------------------------------- SAM-GS reference
def _samgs_reference(grads_seq, gamma, beta1, beta2):
    """Plain-loop float64 SAM-GS (arXiv:2506.06130 + official state update), one list per step."""
    m_state = [[0.0] * len(grads_seq[0][0]) for _ in grads_seq[0]]
    v = 0.0
    outs = []
    for t, grads in enumerate(grads_seq, start=1):
        k = len(grads)
        norms = [math.sqrt(sum(x * x for x in g)) for g in grads]
        pairs = [
            2 * norms[i] * norms[j] / (norms[i] ** 2 + norms[j] ** 2)
            for i in range(k)
            for j in range(i + 1, k)
        ]
        s = sum(pairs) / len(pairs)
        for i, g in enumerate(grads):
            m_state[i] = [beta1 * a + (1 - beta1) * b for a, b in zip(m_state[i], g, strict=True)]
        v = beta2 * v + (1 - beta2) * (1 - s) ** 2 + 1e-8
        if s < gamma:
            mean_norm = sum(norms) / k
            d = [
                sum(g[c] / norms[i] * mean_norm for i, g in enumerate(grads))
                for c in range(len(grads[0]))
            ]
        else:
            v_hat = v / (1 - beta2**t)
            d = [
                sum(
                    g[c] * abs(m_state[i][c] / (1 - beta1**t)) / math.sqrt(v_hat)
                    for i, g in enumerate(grads)
                )
                for c in range(len(grads[0]))
            ]
        outs.append(d)
    return outs


def test_samgs_matches_reference_in_both_branches():
    gen = torch.Generator().manual_seed(0)
    seq = []
    for t in range(6):
        j = torch.randn(3, 5, generator=gen, dtype=torch.float64)
        if t % 2:  # make magnitudes very different -> equalisation branch at gamma = 0.7
            j[0] *= 50.0
        seq.append(j)
    agg = SAMGS(gamma=0.7, beta1=0.9, beta2=0.99)
    ref = _samgs_reference([j.tolist() for j in seq], 0.7, 0.9, 0.99)
    branches = []
    for j, r in zip(seq, ref, strict=True):
        torch.testing.assert_close(agg(j), torch.tensor(r, dtype=torch.float64))
        branches.append(agg.last_branch)
    assert set(branches) == {"equalize", "momentum"}


def test_samgs_equalization_gives_equal_norm_contributions():
    j = torch.tensor([[100.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = SAMGS(gamma=0.5)(j)  # s = 200/10001 < 0.5
    torch.testing.assert_close(out, torch.tensor([50.5, 50.5], dtype=torch.float64))
    assert torch.allclose(SAMGS(gamma=0.5, rescale="sum")(j), 2 * out)


def test_samgs_state_resume_and_validation():
    gen = torch.Generator().manual_seed(1)
    seq = [torch.randn(2, 4, generator=gen) for _ in range(5)]
    a = SAMGS(gamma=0.0)
    for j in seq[:3]:
        a(j)
    b = SAMGS(gamma=0.0)
    b.load_state_dict(a.state_dict())
    for j in seq[3:]:
        torch.testing.assert_close(a(j), b(j), rtol=0, atol=0)
    assert a.state_dict()["step"] == 5
    with pytest.raises(ValueError, match="shape"):
        a(torch.randn(3, 4))
    # zero gradients and a single task stay finite
    assert torch.isfinite(SAMGS(gamma=1.0)(torch.zeros(2, 3))).all()
    assert torch.isfinite(SAMGS()(torch.randn(1, 3))).all()
    assert repr(SAMGS()) == "SAMGS(gamma=0.1, beta1=0.9, beta2=0.99, rescale='none')"
    for kwargs, name in [
        ({"gamma": 1.5}, "gamma"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"rescale": "mean"}, "rescale"),
    ]:
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            SAMGS(**kwargs)


# ------------------------------------------------------------------------------ Bloop reference
def _bloop_reference(mains, auxs, lbda, rho):
    ema = [0.0] * len(mains[0])
    outs = []
    for gm, ga in zip(mains, auxs, strict=True):
        sq = sum(x * x for x in ema)
        if sq > 0:
            c = sum(a * b for a, b in zip(ga, ema, strict=True)) / sq
            ga = [a - c * b for a, b in zip(ga, ema, strict=True)]
        outs.append([a + lbda * b for a, b in zip(gm, ga, strict=True)])
        ema = [(1 - rho) * e + rho * g for e, g in zip(ema, gm, strict=True)]
    return outs


def test_bloop_matches_reference_and_resumes():
    gen = torch.Generator().manual_seed(2)
    seq = [torch.randn(2, 6, generator=gen, dtype=torch.float64) for _ in range(6)]
    ref = _bloop_reference([j[0].tolist() for j in seq], [j[1].tolist() for j in seq], 0.3, 0.1)
    agg = Bloop(lbda=0.3)
    outs = [agg(j) for j in seq]
    for o, r in zip(outs, ref, strict=True):
        torch.testing.assert_close(o, torch.tensor(r, dtype=torch.float64))
    # first step: EMA is zero, no projection
    torch.testing.assert_close(outs[0], seq[0][0] + 0.3 * seq[0][1])
    a = Bloop(lbda=0.3)
    for j in seq[:3]:
        a(j)
    b = Bloop(lbda=0.3)
    b.load_state_dict(a.state_dict())
    for j in seq[3:]:
        torch.testing.assert_close(a(j), b(j), rtol=0, atol=0)


def test_bloop_projection_removes_ema_component_and_sums_auxiliaries():
    agg = Bloop(lbda=1.0, ema=1.0)  # ema=1: EMA equals the last main gradient
    agg(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    out = agg(torch.tensor([[2.0, 0.0], [-3.0, 4.0], [1.0, 1.0]]))
    # aux = (-2, 5), projected against (1, 0) -> (0, 5)
    torch.testing.assert_close(out, torch.tensor([2.0, 5.0]))
    with pytest.raises(ValueError, match="auxiliary"):
        agg(torch.ones(1, 2))
    assert repr(Bloop()) == "Bloop(lbda=0.1, ema=0.1)"
    for kwargs, name in [({"lbda": -1.0}, "lbda"), ({"ema": 0.0}, "ema"), ({"ema": 1.5}, "ema")]:
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            Bloop(**kwargs)


def test_bloop_toy_converges_to_bilevel_solution():
    # paper's toy: L_main = a^2/2, L_aux = ((a-1)^2 + b^2)/2; mixed optimum a = lbda/(1+lbda)
    theta = torch.tensor([2.0, 2.0], dtype=torch.float64)
    agg = Bloop(lbda=0.5, ema=0.1)
    for _ in range(400):
        a, b = theta
        j = torch.stack([torch.stack([a, 0 * b]), torch.stack([a - 1, b])])
        theta = theta - 0.1 * agg(j)
    assert abs(theta[0]) < 1e-3 and abs(theta[1]) < 1e-3
    mixed = torch.tensor([2.0, 2.0], dtype=torch.float64)
    for _ in range(400):
        a, b = mixed
        mixed = mixed - 0.1 * torch.stack([a + 0.5 * (a - 1), 0.5 * b])
    assert abs(mixed[0] - 1 / 3) < 1e-3  # plain mixing is biased, Bloop is not


# ------------------------------------------------------------------------ loss-weighting baselines
def test_uncertainty_weighting_form_and_learning():
    uw = UncertaintyWeighting(2, init=0.3)
    losses = [torch.tensor(2.0), torch.tensor(0.5)]
    total = uw(losses)
    expected = sum(0.5 * math.exp(-0.3) * x + 0.15 for x in (2.0, 0.5))
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    # the optimum of 0.5 e^{-s} L + 0.5 s is s = log L
    opt = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        uw(losses).backward()
        opt.step()
    torch.testing.assert_close(uw.log_vars.detach(), torch.tensor([math.log(2.0), math.log(0.5)]))
    fresh = UncertaintyWeighting(2)
    fresh.load_state_dict(uw.state_dict())
    torch.testing.assert_close(fresh.log_vars, uw.log_vars)
    assert repr(uw) == "UncertaintyWeighting(num_tasks=2, init=0.3)"
    with pytest.raises(ValueError, match="Invalid num_tasks"):
        UncertaintyWeighting(0)
    with pytest.raises(ValueError, match="Invalid losses"):
        uw([torch.tensor(1.0)])


def test_dwa_weights_follow_equation():
    dwa = DWA(3, temperature=2.0)
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert float(dwa(losses)) == 6.0  # uniform weights for the first two epochs
    dwa.end_epoch()
    dwa(losses * 2)
    torch.testing.assert_close(dwa.history[1], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(dwa.epoch_sum, torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    dwa.end_epoch([4.0, 4.0, 4.0])
    ratio = torch.tensor([4.0 / 1.0, 4.0 / 2.0, 4.0 / 3.0], dtype=torch.float64)
    expected = 3 * torch.softmax(ratio / 2.0, dim=0)
    torch.testing.assert_close(dwa.weights(), expected)
    total = dwa(losses)
    assert math.isclose(float(total), float((expected * losses.double()).sum()), rel_tol=1e-6)
    assert math.isclose(float(dwa.last_weights.sum()), 3.0, rel_tol=1e-6)
    # slower-decreasing loss gets the larger weight
    assert dwa.weights().argmax() == 0
    fresh = DWA(3)
    fresh.load_state_dict(dwa.state_dict())
    torch.testing.assert_close(fresh.weights(), dwa.weights())
    assert repr(dwa) == "DWA(num_tasks=3, temperature=2.0)"
    with pytest.raises(ValueError, match="Invalid temperature"):
        DWA(2, temperature=0.0)
    with pytest.raises(ValueError, match="Invalid epoch_losses"):
        dwa.end_epoch([1.0])


def test_rlw_seeded_softmax_normal_and_resume():
    rlw = RLW(3, generator=7)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        w = torch.softmax(torch.randn(3, generator=gen, dtype=torch.float64), 0)
        torch.testing.assert_close(rlw(losses), (w * losses).sum())
    state = rlw.state_dict()
    nxt = rlw(losses)
    other = RLW(3, generator=99)
    other.load_state_dict(state)
    torch.testing.assert_close(other(losses), nxt, rtol=0, atol=0)
    assert rlw(losses) != rlw(losses)  # fresh weights every step
    assert repr(RLW(2, generator=3)) == "RLW(num_tasks=2, generator=3)"
    with pytest.raises(ValueError, match="Invalid generator"):
        RLW(2, generator="x")
