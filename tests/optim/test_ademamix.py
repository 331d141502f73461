"""AdEMAMix's schedulers, its slow un-corrected EMA, beta1 = 0, and agreement with the official
code.

The schedulers are checked against the paper's closed-form beta3(t) (written out here, not via
half-lives), hand values, and the official PyTorch scheduler (which adds 1e-8 inside a log).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gradkit.optim.ademamix import AdEMAMix, alpha_scheduler, beta3_scheduler


def paper_beta3(t, beta_start, beta3, warmup):
    """Eq. of the paper: min(exp(ln b_s ln b3 / ((1 - t/T) ln b3 + (t/T) ln b_s)), b3)."""
    a = t / warmup
    ls, l3 = math.log(beta_start), math.log(beta3)
    return min(math.exp(ls * l3 / ((1 - a) * l3 + a * ls)), beta3)


def official_beta3(t, beta_start, beta3, warmup):
    """The official PyTorch linear_hl_warmup_scheduler, re-stated (note the 1e-8)."""

    def f(beta):
        return math.log(0.5) / math.log(beta + 1e-8) - 1

    if t < warmup:
        a = t / warmup
        return 0.5 ** (1 / ((1 - a) * f(beta_start) + a * f(beta3) + 1))
    return beta3


def test_alpha_scheduler_hand_values() -> None:
    assert [alpha_scheduler(t, 8.0, 4) for t in (1, 2, 3, 4, 5, 100)] == [2, 4, 6, 8, 8, 8]
    assert alpha_scheduler(1, 5.0, None) == 5.0
    assert alpha_scheduler(7, 0.0, 3) == 0.0


@pytest.mark.parametrize("beta_start", [0.5, 0.9, 0.95])
@pytest.mark.parametrize("beta3", [0.999, 0.9999])
def test_beta3_scheduler_matches_paper_closed_form(beta_start, beta3) -> None:
    warmup = 1000
    for t in (1, 2, 10, 250, 500, 999):
        ours = beta3_scheduler(t, beta_start, beta3, warmup)
        assert ours == pytest.approx(paper_beta3(t, beta_start, beta3, warmup), rel=1e-12)
        # the official 1e-8 inside ln(beta) shifts the half-life of 0.9999 by ~1e-4 (relative)
        assert ours == pytest.approx(official_beta3(t, beta_start, beta3, warmup), abs=2e-5)
    for t in (1000, 1001, 10**6):
        assert beta3_scheduler(t, beta_start, beta3, warmup) == beta3


def test_beta3_scheduler_hand_values() -> None:
    # half-lives 1 (beta 0.5) and 3 (beta 0.5 ** (1/3)); linear in the half-life
    b3 = 0.5 ** (1 / 3)
    assert beta3_scheduler(5, 0.5, b3, 10) == pytest.approx(0.5 ** (1 / 2))
    assert beta3_scheduler(1, 0.5, b3, 2) == pytest.approx(0.5 ** (1 / 2))
    assert beta3_scheduler(3, 0.5, b3, 4) == pytest.approx(0.5 ** (1 / 2.5))
    assert beta3_scheduler(3, 0.9, 0.9999, None) == 0.9999
    # increasing in t during the warm-up
    values = [beta3_scheduler(t, 0.9, 0.9999, 100) for t in range(1, 101)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_beta3_scheduler_from_zero_is_the_paper_limit() -> None:
    # beta_start = 0 (beta1 = 0): half-life 0, so beta3(t) = beta3 ** (T / t)
    for t in (1, 3, 7):
        assert beta3_scheduler(t, 0.0, 0.999, 10) == pytest.approx(0.999 ** (10 / t), rel=1e-12)


def test_beta3_scheduler_is_capped_at_beta3() -> None:
    # beta_start > beta3: the paper's min() keeps beta3(t) <= beta3 (the official code has no cap)
    assert beta3_scheduler(2, 0.99, 0.9, 10) == 0.9
    assert official_beta3(2, 0.99, 0.9, 10) > 0.9


def _official_step(p, g, state, lr, betas, alpha_final, t_alpha, t_beta3, eps, wd, beta3_fn):
    """The official AdEMAMix step, re-stated from its algorithm (not gradkit); ``beta3_fn`` is
    the official scheduler or the paper's closed form."""
    b1, b2, b3_final = betas
    if not state:
        state.update(
            t=0, fast=torch.zeros_like(p), slow=torch.zeros_like(p), sq=torch.zeros_like(p)
        )
    state["t"] += 1
    t = state["t"]
    alpha = t * alpha_final / t_alpha if t < t_alpha else alpha_final
    b3 = beta3_fn(t, b1, b3_final, t_beta3) if t < t_beta3 else b3_final
    state["fast"].mul_(b1).add_(g, alpha=1 - b1)
    state["slow"].mul_(b3).add_(g, alpha=1 - b3)
    state["sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (state["sq"].sqrt() / math.sqrt(1 - b2**t)).add_(eps)
    update = (state["fast"] / (1 - b1**t) + alpha * state["slow"]) / denom + wd * p
    p.add_(-lr * update)


@pytest.mark.parametrize(
    ("beta3_fn", "rtol"), [(paper_beta3, 1e-10), (official_beta3, 1e-4)], ids=["paper", "official"]
)
def test_matches_the_official_algorithm_over_a_warmup(beta3_fn, rtol) -> None:
    hp = dict(lr=1e-2, betas=(0.9, 0.999, 0.9999), alpha=8.0, eps=1e-8, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    ref, state = w.detach().clone(), {}
    opt = AdEMAMix([w], alpha_warmup=20, beta3_warmup=30, **hp)
    for _ in range(40):
        g = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        _official_step(
            ref, g, state, hp["lr"], hp["betas"], hp["alpha"], 20, 30, 1e-8, 0.1, beta3_fn
        )
    torch.testing.assert_close(w.detach(), ref, rtol=rtol, atol=rtol * 1e-2)


def test_slow_ema_is_not_bias_corrected() -> None:
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b3, alpha = 0.99, 4.0
    opt = AdEMAMix([w], lr=1.0, betas=(0.9, 0.999, b3), alpha=alpha, eps=1e-12)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(opt.state[w]["ademamix.exp_avg_slow"], (1 - b3) * g)
    # fast term: m_hat = g; slow term: alpha (1 - b3) g, NOT corrected up to alpha g
    expected = -(g + alpha * (1 - b3) * g) / g.abs()
    torch.testing.assert_close(w.detach(), expected)


def test_beta1_zero_keeps_no_fast_buffer_and_uses_the_gradient() -> None:
    w = torch.ones(4, dtype=torch.float64, requires_grad=True)
    opt = AdEMAMix([w], lr=0.1, betas=(0.0, 0.999, 0.99), alpha=2.0, eps=1e-12)
    grads = [torch.full((4,), v, dtype=torch.float64) for v in (1.0, -3.0)]
    slow, sq, expected = (
        torch.zeros(4, dtype=torch.float64),
        torch.zeros(4, dtype=torch.float64),
        w.detach().clone(),
    )
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        slow = 0.99 * slow + 0.01 * g
        sq = 0.999 * sq + 0.001 * g * g
        expected -= 0.1 * (g + 2.0 * slow) / (sq / (1 - 0.999**t)).sqrt()
    assert "ademamix.exp_avg_fast" not in opt.state[w]
    torch.testing.assert_close(w.detach(), expected)
    w.grad = grads[0].clone()
    opt.param_groups[0]["betas"] = (0.9, 0.999, 0.99)
    with pytest.raises(ValueError, match="beta1 was 0"):
        opt.step()


def test_schedulers_are_read_per_param_group() -> None:
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = AdEMAMix([{"params": [a]}, {"params": [b], "alpha_warmup": 2, "beta3_warmup": 2}],
                   lr=1.0, alpha=5.0, betas=(0.9, 0.999, 0.9))  # fmt: skip
    a.grad = torch.ones(2, dtype=torch.float64)
    b.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    # a: alpha 5, beta3 0.9 -> slow = 0.1; b: alpha(1) = 2.5, beta3(1) from 0.9 to 0.9 = 0.9
    assert a.detach()[0].item() == pytest.approx(-(1 + 5.0 * 0.1))
    assert b.detach()[0].item() == pytest.approx(-(1 + 2.5 * 0.1))
