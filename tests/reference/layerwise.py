"""Reference updates for the layer-wise methods NovoGrad, LAMB and LARS, from the papers.

Same contract as ``classic.py``: ``step(param, grad, state, t, hp)`` on one tensor (one "layer")
in float64, plain formulas, no gradkit code. Norms are 2-norms over the whole tensor. Conventions
the papers leave open are stated at each function.
"""

from __future__ import annotations

import torch


def _norm(x):
    return torch.linalg.vector_norm(x)


def novograd(param, grad, state, t, hp):
    """NovoGrad, Ginsburg et al. (2019): v_1 = ||g_1||^2, v_t = b2 v + (1-b2) ||g_t||^2,
    m_t = b1 m + c (g/(sqrt(v) + eps) + wd w), m_0 = 0, w -= lr m, with c = 1 - b1 under
    grad_averaging (OpenSeq2Seq) and 1 otherwise. eps outside the root (NeMo/Optax placement)."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["v"] = _norm(g) ** 2
        state["m"] = torch.zeros_like(param)
    else:
        state["v"] = b2 * state["v"] + (1 - b2) * _norm(g) ** 2
    d = g / (state["v"].sqrt() + hp["eps"]) + hp["weight_decay"] * param
    if hp["grad_averaging"]:
        d = (1 - b1) * d
    state["m"] = b1 * state["m"] + d
    param -= hp["lr"] * state["m"]


def lamb(param, grad, state, t, hp):
    """LAMB, You et al. (2020), Algorithm 2: r = m_hat / (sqrt(v_hat) + eps) (hats only with
    bias_correction), u = r + wd w, w -= lr phi(||w||) / ||u|| u with phi(z) = clamp(z, lo, hi).
    Ratio 1 when phi(||w||) or ||u|| is 0 (authors' code, Optax) or layer_adaptation is off."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    m, v = state["m"], state["v"]
    if hp["bias_correction"]:
        m, v = m / (1 - b1**t), v / (1 - b2**t)
    u = m / (v.sqrt() + hp["eps"]) + hp["weight_decay"] * param
    ratio = 1.0
    if hp["layer_adaptation"]:
        phi = _norm(param)
        if hp["weight_norm_bounds"] is not None:
            lo, hi = hp["weight_norm_bounds"]
            phi = min(
                max(phi, torch.tensor(lo, dtype=phi.dtype)), torch.tensor(hi, dtype=phi.dtype)
            )
        if phi > 0 and _norm(u) > 0:
            ratio = phi / _norm(u)
    param -= hp["lr"] * ratio * u


def lars(param, grad, state, t, hp):
    """LARS, You, Gitman & Ginsburg (2017), Algorithm 1: local lr
    lam = eta ||w|| / (||g|| + beta ||w|| + eps) (1 when ||w|| or the denominator is 0, or with
    layer_adaptation off); v = m v + lr lam (g + beta w) with v_0 = 0; w -= v. Nesterov (not in the
    paper; Optax's form): w -= lr lam (g + beta w) + m v."""
    g = -grad if hp.get("maximize") else grad
    beta, mu = hp["weight_decay"], hp["momentum"]
    if t == 1:
        state["v"] = torch.zeros_like(param)
    w_norm = _norm(param)
    denom = _norm(g) + beta * w_norm
    lam = 1.0
    if hp["layer_adaptation"] and w_norm > 0 and denom > 0:
        lam = hp["trust_coefficient"] * w_norm / (denom + hp["eps"])
    step = hp["lr"] * lam * (g + beta * param)
    state["v"] = mu * state["v"] + step
    param -= step + mu * state["v"] if hp["nesterov"] else state["v"]
    state["update_buffer"] = -state["v"]  # gradkit's trace holds the additive update, -v
