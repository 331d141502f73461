"""Reference updates for diffGrad, AdamP/SGDP, Grams and AdaMomentum, from the papers' equations.

Same contract as :mod:`reference.classic`: ``step(param, grad, state, t, hp)`` on one float64
tensor, mutating ``param`` and ``state``; no gradkit imports, no foreach kernels, one formula per
line in the papers' notation. Conventions the papers leave open (weight decay, eps placement,
AdamP's wd_ratio) follow the authors' official code, as stated at each function.
"""

from __future__ import annotations

import math

import torch


def _moments(state, g, b1, b2, param):
    if "m" not in state:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g


def _adam_direction(m, v, t, b1, b2, eps, placement):
    """m_hat / (sqrt(v_hat) + eps) ("corrected", the papers) or the official codes' form
    lr * sqrt(bc2)/bc1 * m / (sqrt(v) + eps) written without lr ("uncorrected")."""
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if placement == "corrected":
        return (m / bc1) / ((v / bc2).sqrt() + eps)
    return math.sqrt(bc2) / bc1 * m / (v.sqrt() + eps)


def diffgrad(param, grad, state, t, hp):
    """diffGrad, Dubey et al. (2020) eq. for xi and the Adam-style step.

    Official v2 conventions: coupled L2 (g <- g + wd * p) before everything, and the *regularized*
    gradient is what is remembered as g_{t-1}; g_0 = 0.
    """
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    g = g + hp["weight_decay"] * param
    _moments(state, g, b1, b2, param)
    prev = state.get("g_prev", torch.zeros_like(param))
    xi = 1 / (1 + torch.exp(-(prev - g).abs()))
    state["g_prev"] = g.clone()
    state["xi"] = xi
    u = _adam_direction(state["m"], state["v"], t, b1, b2, hp["eps"], hp["eps_placement"])
    param -= hp["lr"] * xi * u


def grams(param, grad, state, t, hp):
    """Grams, Cao et al. (2024) Alg. 1: sign(g_t) * |Adam update|, decoupled decay lr*wd*p."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    _moments(state, g, b1, b2, param)
    u = _adam_direction(state["m"], state["v"], t, b1, b2, hp["eps"], hp["eps_placement"])
    u_hat = torch.sign(g) * u.abs()
    param -= hp["lr"] * (u_hat + hp["weight_decay"] * param)


def adamomentum(param, grad, state, t, hp):
    """AdaMomentum (AdaM3), Wang et al. (2021) Algorithm 1: v is an EMA of m_t^2 with eps added
    inside the recursion; no eps in the denominator. Weight decay as the official code: decoupled
    (lr * wd * p) by default, or coupled L2 with decoupled_weight_decay=False."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    wd = hp["weight_decay"]
    decoupled = hp["decoupled_weight_decay"]
    if not decoupled:
        g = g + wd * param
    if "m" not in state:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
        state["vmax"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * state["m"] ** 2 + hp["eps"]
    v = state["v"]
    if hp["amsgrad"]:
        state["vmax"] = torch.maximum(state["vmax"], state["v"])
        v = state["vmax"]
    m_hat = state["m"] / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    step = m_hat / v_hat.sqrt()
    if decoupled:
        step = step + wd * param
    param -= hp["lr"] * step


# -- AdamP / SGDP -----------------------------------------------------------------------------


def _abs_cos(x, y, eps):
    """|x . y| / (max(|x|, eps) max(|y|, eps)), torch's cosine_similarity convention."""
    return abs(float(x @ y)) / (max(float(x.norm()), eps) * max(float(y.norm()), eps))


def _project(w, grad, p_t, delta, eps):
    """Pi_w(p) = p - (w_hat . p) w_hat per row of the first view whose rows all pass the test
    |cos(g, w)| < delta / sqrt(row length); returns (q_t, which view or "none")."""
    if w.dim() < 2:
        return p_t, "none"
    views = {"channel": w.shape[0], "layer": 1}
    for name, rows in views.items():
        w_rows, g_rows, p_rows = w.reshape(rows, -1), grad.reshape(rows, -1), p_t.reshape(rows, -1)
        n = w_rows.shape[1]
        if all(_abs_cos(g_rows[i], w_rows[i], eps) < delta / math.sqrt(n) for i in range(rows)):
            q = p_rows.clone()
            for i in range(rows):
                w_hat = w_rows[i] / (w_rows[i].norm() + eps)
                q[i] = p_rows[i] - (w_hat @ p_rows[i]) * w_hat
            return q.reshape(w.shape), name
    return p_t, "none"


def _projected_step(param, grad, p_t, step_size, wd_over, state, hp):
    """theta <- theta - step_size * q_t - lr * wd_over * r * theta, all on the pre-step theta."""
    q_t, view = _project(param, grad, p_t, hp["delta"], hp["eps"])
    state.setdefault("views", []).append(view)
    ratio = hp["wd_ratio"] if view != "none" else 1.0
    decay = hp["lr"] * wd_over * ratio * param
    param -= step_size * q_t + decay


def adamp(param, grad, state, t, hp):
    """AdamP, Heo et al. (2021) Alg. 2 with the official code's bias correction (eps after it),
    Nesterov numerator b1 m_t + (1 - b1) g_t, and decoupled decay lr * wd * wd_ratio-if-projected.
    The cosine test uses the raw gradient (sign irrelevant under |cos|)."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    _moments(state, g, b1, b2, param)
    m, v = state["m"], state["v"]
    numerator = b1 * m + (1 - b1) * g if hp["nesterov"] else m
    p_t = numerator / ((v / (1 - b2**t)).sqrt() + hp["eps"])
    _projected_step(param, grad, p_t, hp["lr"] / (1 - b1**t), hp["weight_decay"], state, hp)


def sgdp(param, grad, state, t, hp):
    """SGDP, Heo et al. (2021) Alg. 1 with the official code's zero-initialized buffer
    (b_1 = (1 - dampening) g_1) and decay lr * wd * wd_ratio-if-projected / (1 - momentum)."""
    mu = hp["momentum"]
    g = -grad if hp.get("maximize") else grad
    b = state.get("b", torch.zeros_like(param))
    state["b"] = mu * b + (1 - hp["dampening"]) * g
    p_t = g + mu * state["b"] if hp["nesterov"] else state["b"]
    _projected_step(param, grad, p_t, hp["lr"], hp["weight_decay"] / (1 - mu), state, hp)
