"""SPAM and Stable-SPAM: spike containment, resets, warm-up, clip timing (issue 4)."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.optim import Adam, AdamW
from gradkit.optim.spam import SPAM, StableSPAM
from gradkit.transforms.spike import warmup_factor


def _update_sizes(make, spike_at: int = 300, steps: int = 320, factor: float = 1000.0):
    """Norm of every parameter change on a noisy drifting gradient with one 1000x spike."""
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(64, 32, dtype=torch.float64, requires_grad=True)
    opt = make([w])
    sizes = []
    for t in range(1, steps + 1):
        g = torch.randn(64, 32, generator=gen, dtype=torch.float64) * 0.1 + 0.02
        w.grad = g * factor if t == spike_at else g
        before = w.detach().clone()
        opt.step()
        sizes.append(float((w.detach() - before).norm()))
    sizes_t = torch.tensor(sizes)
    baseline = float(sizes_t[spike_at - 51 : spike_at - 1].median())
    after = sizes_t[spike_at - 1 : spike_at + 9] / baseline  # the spike step and 9 after it
    return float(after.max()), float(after.sum())


def test_injected_spike_is_contained_by_stable_spam_while_adam_explodes() -> None:
    adam_peak, adam_total = _update_sizes(lambda p: Adam(p, lr=1e-3))
    stable_peak, stable_total = _update_sizes(lambda p: StableSPAM(p, lr=1e-3))
    # Adam: the spike step moves the weights ~5x a normal step, and the momentum keeps pushing
    assert adam_peak > 4.0 and adam_total > 25.0, (adam_peak, adam_total)
    # Stable-SPAM: no step after the spike is larger than 1.5 normal ones (10 steps ~ 10 normal)
    assert stable_peak < 1.5 and stable_total < 12.0, (stable_peak, stable_total)


def test_warmup_factor_is_official_cosine_decay() -> None:
    """Independent check of the formula: official ``1 - CosineDecay(0.99, N)`` is a torch
    CosineAnnealingLR from 0.99 with T_max = N + 1, read c steps after the reset, 1 from N on."""
    n, interval = 7, 20
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.99)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n + 1, eta_min=0.0)
    for c in range(interval):
        expected = 1.0 - opt.param_groups[0]["lr"] if c < n else 1.0
        assert warmup_factor(2 * interval + c, interval, n) == pytest.approx(expected, rel=1e-12)
        opt.step()
        sched.step()
    assert warmup_factor(interval - 1, interval, n) == 1.0  # no warm-up before the first reset
    assert warmup_factor(interval, interval, n) == pytest.approx(0.01)


def _one_param_run(opt_cls, grads, **kwargs):
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([w], **kwargs)
    deltas = []
    for g in grads:
        w.grad = torch.as_tensor(g, dtype=torch.float64)
        before = w.detach().clone()
        opt.step()
        deltas.append(w.detach() - before)
    return w, opt, deltas


def test_spam_clip_uses_second_moment_before_the_update_and_waits_for_the_delay() -> None:
    grads = [[1.0, 1.0, 1.0], [-30.0, 1.0, 2.0]]
    kwargs = dict(betas=(0.0, 0.5), spam_threshold=4.0, reset_interval=0)
    # step 2 inside the clip window: clipped against v1 = 0.5 (bound sqrt(4 * 0.5)); had the clip
    # read v2 (after the update) the bound would be sqrt(4 * 450.25) and -30 would pass
    w, opt, _ = _one_param_run(SPAM, grads, spam_clip_delay=2, **kwargs)
    clipped = torch.tensor([-math.sqrt(2.0), 1.0, math.sqrt(2.0)], dtype=torch.float64)
    torch.testing.assert_close(opt.state[w]["spam.exp_avg"], clipped)  # beta1 = 0: m = g~
    torch.testing.assert_close(opt.state[w]["spam.exp_avg_sq"], 0.25 + 0.5 * clipped**2)
    # step 2 before the window opens (delay 3): passes unclipped
    w, opt, _ = _one_param_run(SPAM, grads, spam_clip_delay=3, **kwargs)
    torch.testing.assert_close(opt.state[w]["spam.exp_avg"], torch.tensor(grads[1]).double())


def test_spam_reset_zeroes_moments_and_the_warmup_scales_that_step() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(6)]
    lr, (b1, b2), eps = 0.1, (0.9, 0.999), 1e-6
    w, opt, deltas = _one_param_run(SPAM, grads, lr=lr, reset_interval=5, reset_warmup_steps=3)
    # step 5 is a reset: m, v hold only g5 (no clip right after a reset); count t = 5 runs on
    g5 = grads[4]
    m5, v5 = (1 - b1) * g5, (1 - b2) * g5**2
    step5 = lr * 0.01 * (m5 / (1 - b1**5)) / ((v5 / (1 - b2**5)).sqrt() + eps)
    torch.testing.assert_close(deltas[4], -step5)
    m6 = b1 * m5 + (1 - b1) * grads[5]
    torch.testing.assert_close(opt.state[w]["spam.exp_avg"], m6)
    assert float(deltas[4].abs().max()) < 0.05 * float(deltas[3].abs().max())


def test_spam_without_clip_and_reset_is_adamw() -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(30)]
    kwargs = dict(lr=0.01, weight_decay=0.1, eps=1e-6)
    w1, _, _ = _one_param_run(SPAM, grads, spam_threshold=0.0, reset_interval=0, **kwargs)
    w2, _, _ = _one_param_run(AdamW, grads, **kwargs)
    torch.testing.assert_close(w1, w2, rtol=1e-14, atol=1e-15)
    w3, _, _ = _one_param_run(SPAM, grads, spam_threshold=0.0, reset_interval=10, **kwargs)
    assert not torch.allclose(w1, w3)  # the resets do change the trajectory


def test_stable_spam_reset_restarts_adam_so_the_reset_step_is_a_sign_step() -> None:
    """With m, v zeroed before the update and bias correction at 1, Adam's step is lr * sign(g~)
    (up to eps); the official code's stale-moment reset step would not be."""
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(8)]
    lr = 0.01
    _, _, deltas = _one_param_run(StableSPAM, grads, lr=lr, eps=1e-12, reset_interval=4)
    torch.testing.assert_close(deltas[3].abs(), torch.full((3,), lr, dtype=torch.float64))
    torch.testing.assert_close(deltas[0].abs(), torch.full((3,), lr, dtype=torch.float64))
    assert not torch.allclose(deltas[2].abs(), torch.full((3,), lr, dtype=torch.float64))


def test_stable_spam_adaclip_keeps_its_count_across_resets() -> None:
    """The AdaClip/AdaGN EMAs are bias-corrected with the never-restarted count: a run with a
    reset has the same clip state as one without (the official code's shared counter would
    inflate the threshold after the reset)."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(9)]
    w1, o1, _ = _one_param_run(StableSPAM, grads, reset_interval=3)
    w2, o2, _ = _one_param_run(StableSPAM, grads, reset_interval=0)
    for key in ("ada_clip.max_avg", "ada_gn.norm_avg", "ada_gn.norm_sq_avg"):
        torch.testing.assert_close(o1.state[w1][key], o2.state[w2][key])
    assert not torch.allclose(o1.state[w1]["adam.exp_avg"], o2.state[w2]["adam.exp_avg"])


def test_reset_interval_is_per_group() -> None:
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = StableSPAM([{"params": [a], "reset_interval": 2}, {"params": [b]}], lr=0.1)
    for _ in range(2):
        a.grad = torch.ones(2, dtype=torch.float64)
        b.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
    # a was reset at step 2 (m holds one step's worth), b was not
    ma, mb = opt.state[a]["adam.exp_avg"], opt.state[b]["adam.exp_avg"]
    assert float(ma[0]) == pytest.approx(0.1 * float(mb[0]) / 0.19)


def test_zero_second_moment_freezes_a_coordinate_until_the_next_reset() -> None:
    """The published rule's pitfall, documented in spam_clip: a coordinate whose gradient was
    exactly 0 until the clip window opened has v = 0, so its gradients are clipped to 0."""
    grads = [[1.0, 0.0, 1.0]] * 4 + [[1.0, 5.0, 1.0]] * 3
    _, _, deltas = _one_param_run(SPAM, grads, spam_clip_delay=2, reset_interval=0)
    assert all(float(d[1]) == 0.0 for d in deltas)
    assert all(float(d[0]) != 0.0 for d in deltas)
