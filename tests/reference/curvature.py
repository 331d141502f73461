"""Reference updates for Sophia and OASIS, written from the papers' equations.

Same contract as ``classic.py``: ``step(param, grad, state, t, hp)`` on one tensor in float64,
plain formulas, no gradkit code. Both methods consume a diagonal-Hessian estimate; the contract
specs feed one after every step (``feed(grad)``, see ``tests/support/specs_curvature.py``), and the
references take the same ``feed`` keyword. Conventions the papers leave open are stated at each
function.
"""

from __future__ import annotations

import math

import torch


def sophia(param, grad, state, t, hp, feed=None):
    """Sophia, Liu et al. (2024), Algorithm 3 with the paper's max(rho * h, eps) denominator.

    m_0 = h_0 = 0, no bias correction; decoupled decay theta <- theta - lr * wd * theta (official
    order: decay, then the clipped step). The Hessian EMA is refreshed after steps k, 2k, ...
    (k = hessian_interval; the official training loop's schedule) with h <- b2 h + (1 - b2) est.
    """
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["h"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    denominator = torch.clamp(hp["rho"] * state["h"], min=hp["eps"])
    clipped = torch.clamp(state["m"] / denominator, -1.0, 1.0)
    param.mul_(1 - hp["lr"] * hp["weight_decay"])
    param -= hp["lr"] * clipped
    if feed is not None and t % hp["hessian_interval"] == 0:
        state["h"] = b2 * state["h"] + (1 - b2) * feed(grad)


def oasis(param, grad, state, t, hp, feed=None):
    """OASIS, Jahani et al. (2022), Algorithm 1, for a parameter vector held in one tensor.

    D_hat = max(|D|, alpha); w_1 = w_0 - eta_0 D_hat^-1 g_0 with theta_0 = inf; later
    eta_k = min(sqrt(1 + theta_{k-1}) eta_{k-1}, ||dw||_D / (2 ||dg||*_D)), theta_k =
    eta_k / eta_{k-1}. Conventions of ours (the paper is silent): an undefined Lipschitz bound
    (dw = 0 or dg = 0) is +inf, and an infinite eta_k keeps eta_{k-1}. With adaptive_lr=False
    eta_k = lr. The first estimate fed is D_0 itself (warm start); later ones enter the EMA.
    """
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["D"] = torch.zeros_like(param)
        state["D_set"] = False
    d_hat = torch.clamp(state["D"].abs(), min=hp["alpha"])
    if not hp["adaptive_lr"]:
        eta = hp["lr"]
    elif t == 1:
        eta, state["theta"] = hp["lr"], math.inf
    else:
        eta_prev = state["eta"]
        dw, dg = param - state["w_prev"], g - state["g_prev"]
        num = float((d_hat * dw * dw).sum())
        den = float((dg * dg / d_hat).sum())
        bound = 0.5 * math.sqrt(num / den) if num > 0 and den > 0 else math.inf
        eta = min(math.sqrt(1 + state["theta"]) * eta_prev, bound)
        if math.isinf(eta):
            eta = eta_prev
        state["theta"] = eta / eta_prev if eta_prev > 0 else math.inf
    if hp["adaptive_lr"]:
        state["eta"] = eta
        state["w_prev"] = param.clone()
        state["g_prev"] = g.clone()
    param -= eta * g / d_hat
    if feed is not None:
        estimate = feed(grad)
        if state["D_set"]:
            state["D"] = hp["beta2"] * state["D"] + (1 - hp["beta2"]) * estimate
        else:
            state["D"] = estimate.clone()
        state["D_set"] = True
