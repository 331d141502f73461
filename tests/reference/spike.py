"""Reference updates for SPAM and Stable-SPAM, written from the papers' equations.

SPAM: Huang et al., ICLR 2025, arXiv:2501.06842 (Algorithm 1); official code
TianjinYellow/SPAM-Optimizer. Stable-SPAM: Huang et al. 2025, arXiv:2502.17055; official code
TianjinYellow/StableSPAM. Same contract as tests/reference/classic.py: ``step(param, grad, state,
t, hp)`` on one tensor in float64, plain torch, no gradkit code. Conventions adopted from the
official code where the papers leave them open (stated at each function): the clip delay after a
reset, the exact cosine warm-up formula, eps placement, the restarted Adam count of Stable-SPAM.
"""

from __future__ import annotations

import math

import torch


# -- the gradient rules on their own (used by the transform tests too) ----------------------
def spam_clipped(g, v_prev, theta):
    """SPAM: g_i -> sign(g_i) sqrt(theta v_{t-1,i}) where g_i^2 > theta v_{t-1,i}."""
    spike = g * g > theta * v_prev
    return torch.where(spike, torch.sign(g) * torch.sqrt(theta * v_prev), g)


def ada_clipped(g, state, t, gamma3):
    """Stable-SPAM AdaClip on one tensor; state key "mmax" (EMA of max |g|)."""
    g_max = g.abs().max() if g.numel() else torch.zeros((), dtype=g.dtype)
    state["mmax"] = gamma3 * state.get("mmax", 0.0) + (1 - gamma3) * g_max
    threshold = state["mmax"] / (1 - gamma3**t)
    if not g.numel():
        return g
    return torch.where(g.abs() > threshold, g / g_max * threshold, g)


def ada_normalized(g, state, t, gamma1, gamma2, eps):
    """Stable-SPAM AdaGN on one tensor; state keys "mu", "nu" (EMAs of ||g|| and ||g||^2)."""
    norm = torch.sqrt((g * g).sum())
    state["mu"] = gamma1 * state.get("mu", 0.0) + (1 - gamma1) * norm
    state["nu"] = gamma2 * state.get("nu", 0.0) + (1 - gamma2) * norm**2
    mu_hat = state["mu"] / (1 - gamma1**t)
    nu_hat = state["nu"] / (1 - gamma2**t)
    if norm == 0:
        return g
    return g / norm * (mu_hat / (torch.sqrt(nu_hat) + eps))


def cosine_warmup(c, n):
    """SPAM's warm-up c steps after a reset: official 1 - CosineDecay(0.99, N), i.e. a cosine
    annealing of 0.99 -> 0 over T_max = N + 1 subtracted from 1, and 1 from c = N on."""
    if c >= n:
        return 1.0
    return 1.0 - 0.99 * (1 + math.cos(math.pi * c / (n + 1))) / 2


def _adam_step(state, g, b1, b2, t):
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    return state["m"] / (1 - b1**t), state["v"] / (1 - b2**t)


# -- the methods ----------------------------------------------------------------------------
def spam(param, grad, state, t, hp):
    """SPAM, Algorithm 1: reset m, v when t mod DeltaT = 0; clip against v_{t-1}; Adam with the
    run's step count t (not restarted: official code and the paper's t); update scaled by the
    cosine warm-up w(t mod DeltaT) after the first reset. Code conventions: the clip is skipped
    while t mod DeltaT < grad_accu_steps; eps on the bias-corrected root (paper's Adam); decoupled
    decay theta(1 - lr wd) first (torch AdamW order)."""
    b1, b2 = hp["betas"]
    theta, delta_t = hp["spam_threshold"], hp["reset_interval"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    if delta_t > 0 and t % delta_t == 0:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    since_reset = t % delta_t if delta_t > 0 else t
    if theta > 0 and since_reset >= hp["spam_clip_delay"]:
        g = spam_clipped(g, state["v"], theta)
    m_hat, v_hat = _adam_step(state, g, b1, b2, t)
    warm = cosine_warmup(t % delta_t, hp["reset_warmup_steps"]) if 0 < delta_t <= t else 1.0
    param.mul_(1 - hp["lr"] * hp["weight_decay"])
    param -= hp["lr"] * warm * m_hat / (torch.sqrt(v_hat) + hp["eps"])


def stable_spam(param, grad, state, t, hp):
    """Stable-SPAM: AdaClip (gamma3) and AdaGN (gamma1, gamma2) with the run's step count t, then
    Adam whose m, v are zeroed when t mod DeltaT = 0 and whose bias correction counts k = steps
    since the last reset (1 on the reset step; official code's ``state['step'] = 1``). Decoupled
    decay first, as the official code."""
    b1, b2 = hp["betas"]
    delta_t = hp["reset_interval"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    g = ada_clipped(g, state, t, hp["ada_clip_gamma3"])
    g = ada_normalized(g, state, t, hp["ada_gn_gamma1"], hp["ada_gn_gamma2"], hp["ada_gn_eps"])
    if delta_t > 0 and t % delta_t == 0:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    k = t % delta_t + 1 if 0 < delta_t <= t else t
    m_hat, v_hat = _adam_step(state, g, b1, b2, k)
    param.mul_(1 - hp["lr"] * hp["weight_decay"])
    param -= hp["lr"] * m_hat / (torch.sqrt(v_hat) + hp["eps"])
