"""Reference updates for the sign family, cautious masking, Gravity, the induced-metric optimiser
and XGrad, written from the papers' equations.

Per-tensor functions are ``step(param, grad, state, t, hp)`` (float64, mutating ``param`` and
``state``), as in :mod:`reference.classic`. Two methods do not fit that shape and get their own:
the induced-metric optimiser's gradient norm runs over *all* parameters, so its reference takes
the whole list; XGrad changes *where* the gradient is evaluated, so its references run a whole
training loop on a gradient function. No gradkit code is used.
"""

from __future__ import annotations

import torch


def _descent_grad(grad, hp):
    return -grad if hp.get("maximize") else grad


def cautious_mask(u, g):
    """Liang et al. (2024): keep u where u*g > 0, rescale by dim / (nnz + 1) (official C-Lion)."""
    keep = (u * g > 0).to(u.dtype)
    return u * keep * (u.numel() / (keep.sum() + 1))


def _signed_step(param, u, g, hp):
    """Optional cautious mask, then theta <- theta (1 - lr wd) - lr u (decoupled decay)."""
    if hp.get("cautious"):
        u = cautious_mask(u, g)
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    param.mul_(1 - lr * wd)
    param.sub_(lr * u)


def lion(param, grad, state, t, hp):
    """Lion, Chen et al. (2023) Program 1: sign(b1 m + (1-b1) g), then m <- b2 m + (1-b2) g."""
    b1, b2 = hp["betas"]
    g = _descent_grad(grad, hp)
    if t == 1:
        state["m"] = torch.zeros_like(param)
    c = b1 * state["m"] + (1 - b1) * g
    _signed_step(param, torch.sign(c), g, hp)
    state["m"] = b2 * state["m"] + (1 - b2) * g


def signsgd(param, grad, state, t, hp):
    """signSGD, Bernstein et al. (2018) Algorithm 1."""
    g = _descent_grad(grad, hp)
    _signed_step(param, torch.sign(g), g, hp)


def signum(param, grad, state, t, hp):
    """Signum, Bernstein et al. (2018) Algorithm 2: m_t = beta m_{t-1} + (1-beta) g_t, m_0 = 0."""
    beta = hp["momentum"]
    g = _descent_grad(grad, hp)
    if t == 1:
        state["m"] = torch.zeros_like(param)
    state["m"] = beta * state["m"] + (1 - beta) * g
    _signed_step(param, torch.sign(state["m"]), g, hp)


def gravity(param, grad, state, t, hp):
    """Gravity, Bahrami & Pouriyan Zadeh (2021): the paper's equations 19-23.

    m = 1/max|g|, zeta = g / (1 + (g/m)^2), beta_hat = (beta t' + 1)/(t' + 2) with t' = t - 1 (the
    paper's count starts at 0), V <- beta_hat V + (1 - beta_hat) zeta, theta <- theta - lr V.
    The initial velocity is random; put it in ``state["v"]`` before the first call (alpha = 0:
    it is zero).
    """
    if "v" not in state:
        if hp["alpha"] != 0:
            raise ValueError("with alpha > 0 the caller supplies the initial velocity state['v']")
        state["v"] = torch.zeros_like(param)
    g = _descent_grad(grad, hp)
    m = 1.0 / g.abs().max()
    zeta = g / (1 + (g / m) ** 2) if torch.isfinite(m) else torch.zeros_like(g)
    tp = t - 1
    beta_hat = (hp["beta"] * tp + 1) / (tp + 2)
    state["v"] = beta_hat * state["v"] + (1 - beta_hat) * zeta
    param.sub_(hp["lr"] * state["v"])


def induced_metric(params, grads, states, t, hps):
    """Harvey (2025), official ``custom_sgd`` / ``custom_sgd_rms``, over the whole model.

    ``hps[i]`` is parameter i's group. S = sum_i |g_i|^2 (or sum_i g_i^2 / d_i with RMS);
    s <- beta s + (1-beta) xi S; kappa = 1/(1 + |s/(1-beta^t)|); m <- mu m + (1-mu) g;
    theta <- theta - lr (kappa m/(1-mu^t) [/ d] + wd theta).
    """
    gs = [_descent_grad(g, hp) for g, hp in zip(grads, hps, strict=True)]
    denoms = []
    for g, st, hp in zip(gs, states, hps, strict=True):
        if t == 1:
            st["m"] = torch.zeros_like(g)
            st["s"] = 0.0
            st["v"] = torch.zeros_like(g)
        if hp.get("rms"):
            b2 = hp["beta_rms"]
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            denoms.append((st["v"] / (1 - b2**t)).sqrt() + hp["eps"])
        else:
            denoms.append(None)
    total = sum(
        float((g * g if d is None else g * g / d).sum()) for g, d in zip(gs, denoms, strict=True)
    )
    for p, g, d, st, hp in zip(params, gs, denoms, states, hps, strict=True):
        mu, beta = hp["momentum"], hp["beta"]
        st["s"] = beta * st["s"] + (1 - beta) * hp["xi"] * total
        kappa = 1.0 / (1.0 + abs(st["s"] / (1 - beta**t)))
        st["m"] = mu * st["m"] + (1 - mu) * g
        direction = kappa * st["m"] / (1 - mu**t)
        if d is not None:
            direction = direction / d
        p.sub_(hp["lr"] * (direction + hp.get("weight_decay", 0.0) * p))


def xgrad_sgdm(w, grad_fn, n_steps, lr, momentum, dampening=0.0, s=1.0):
    """XGrad with SGD momentum (Guan et al.): w_hat = w_t - s lr b_{t-1}; g = grad(w_hat).

    Momentum in torch's form (b_1 = g_1, b_t = mu b_{t-1} + (1-tau) g_t); no prediction at t = 1.
    Returns the list of iterates.
    """
    w = w.clone()
    b = None
    trajectory = []
    for _ in range(n_steps):
        w_hat = w if b is None else w - s * lr * b
        g = grad_fn(w_hat)
        b = g.clone() if b is None else momentum * b + (1 - dampening) * g
        w = w - lr * b
        trajectory.append(w.clone())
    return trajectory


def xgrad_adam(w, grad_fn, n_steps, lr, betas, eps, weight_decay=0.0, decoupled=True, s=1.0):
    """XGrad with Adam / AdamW (Guan et al.): w_hat = w_t - s lr (m_hat/(sqrt(v_hat)+eps)
    [+ wd w_t]) from the previous step's moments; the step itself is the usual Adam(W) at w_t
    with the gradient taken at w_hat (coupled L2, if any, at w_t). No prediction at t = 1."""
    b1, b2 = betas
    w = w.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    trajectory = []
    for t in range(1, n_steps + 1):
        w_hat = w
        if t > 1:
            k = t - 1
            direction = (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)
            if decoupled:
                direction = direction + weight_decay * w
            w_hat = w - s * lr * direction
        g = grad_fn(w_hat)
        if not decoupled:
            g = g + weight_decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if decoupled:
            w = w * (1 - lr * weight_decay)
        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        trajectory.append(w.clone())
    return trajectory
