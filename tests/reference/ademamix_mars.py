"""Reference updates for AdEMAMix and MARS-AdamW, written from the papers' equations.

Same contract as ``classic.py``: ``step(param, grad, state, t, hp)`` on one tensor in float64,
plain formulas, no gradkit code. Conventions the papers leave to the code are stated at each
function.
"""

from __future__ import annotations

import math

import torch


def ademamix_alpha(t, alpha, warmup):
    """Paper: alpha(t) = min(t * alpha / T_alpha, alpha); t is 1-based (official PyTorch)."""
    return alpha if warmup is None else min(t * alpha / warmup, alpha)


def ademamix_beta3(t, beta_start, beta3, warmup):
    """Paper's closed form, taken literally:
    beta3(t) = min(exp(ln(b_s) ln(b3) / ((1 - t/T) ln(b3) + (t/T) ln(b_s))), b3).
    For b_s = 0 the expression is its limit b3 ** (T / t)."""
    if warmup is None or t >= warmup:
        return beta3
    a = t / warmup
    if beta_start == 0:
        return min(beta3 ** (1 / a), beta3)
    ls, l3 = math.log(beta_start), math.log(beta3)
    return min(math.exp(ls * l3 / ((1 - a) * l3 + a * ls)), beta3)


def ademamix(param, grad, state, t, hp):
    """AdEMAMix, Pagliardini et al. (2024), Algorithm 1: the fast EMA bias-corrected, the slow one
    not; eps on the bias-corrected root; decoupled decay on theta_{t-1}, times lr (official)."""
    b1, b2, b3_final = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m1"] = torch.zeros_like(param)
        state["m2"] = torch.zeros_like(param)
        state["nu"] = torch.zeros_like(param)
    alpha = ademamix_alpha(t, hp["alpha"], hp["alpha_warmup"])
    b3 = ademamix_beta3(t, b1, b3_final, hp["beta3_warmup"])
    state["m1"] = b1 * state["m1"] + (1 - b1) * g
    state["m2"] = b3 * state["m2"] + (1 - b3) * g
    state["nu"] = b2 * state["nu"] + (1 - b2) * g * g
    m1_hat = state["m1"] / (1 - b1**t)
    nu_hat = state["nu"] / (1 - b2**t)
    update = (m1_hat + alpha * state["m2"]) / (nu_hat.sqrt() + hp["eps"])
    param -= hp["lr"] * (update + hp["weight_decay"] * param)


def _adamw_moments(state, x, betas, eps, t):
    b1, b2 = betas
    state["m"] = b1 * state["m"] + (1 - b1) * x
    state["v"] = b2 * state["v"] + (1 - b2) * x * x
    return (state["m"] / (1 - b1**t)) / ((state["v"] / (1 - b2**t)).sqrt() + eps)


def mars(param, grad, state, t, hp):
    """MARS-AdamW, Yuan et al. (2024), Algorithms 1-2.

    c_t = g_t + gamma b1/(1-b1) (g_t - g_prev), clipped to unit 2-norm (whole tensor) if larger,
    then AdamW on c_t (eps on the bias-corrected root, as the official code). g_prev is the
    previous step's gradient (approximate form) or, with ``hp["exact"]``, the gradient of this
    batch at the previous parameters, which the caller puts in ``state["prev_param_grad"]``.
    No correction at t = 1 (x_0 = x_1). Tensors that are not 2-D (unless optimize_1d) get AdamW
    with betas_1d, lr_1d and weight_decay_1d.
    """
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    if hp["optimize_1d"] or param.dim() == 2:
        b1 = hp["betas"][0]
        if t == 1:
            c = g
        else:
            g_prev = state["prev_param_grad"] if hp["exact"] else state["g_prev"]
            c = g + hp["gamma"] * b1 / (1 - b1) * (g - g_prev)
        norm = torch.linalg.vector_norm(c)
        if norm > 1:
            c = c / norm
        update = _adamw_moments(state, c, hp["betas"], hp["eps"], t) + hp["weight_decay"] * param
        if not hp["exact"]:
            state["g_prev"] = g.clone()
        param -= hp["lr"] * update
    else:
        update = _adamw_moments(state, g, hp["betas_1d"], hp["eps"], t)
        param -= hp["lr_1d"] * (update + hp["weight_decay_1d"] * param)
