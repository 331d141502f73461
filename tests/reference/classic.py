"""Reference updates for the classic optimizers, written from the papers' equations.

Every function here is ``step(param, grad, state, t, hp)``: one parameter tensor, its gradient,
a plain dict of state (created on first call), the 1-based step count and the hyperparameters.
They mutate ``param`` and ``state`` and are meant to run in float64. They share no code with
gradkit: no transforms, no foreach kernels, one formula per line in the papers' notation.
Where torch.optim's documented algorithm fixes a convention the paper leaves open (first-step
momentum, eps placement), the convention is stated at the function.
"""

from __future__ import annotations

import math

import torch


def _decay(param, grad, hp, coupled_key="decoupled_weight_decay"):
    """Coupled L2 returns a new gradient; decoupled shrinks the parameter (AdamW form)."""
    wd = hp.get("weight_decay", 0.0)
    if wd == 0:
        return grad
    if hp.get(coupled_key, False):
        param.mul_(1 - hp["lr"] * wd)
        return grad
    return grad + wd * param


def sgd(param, grad, state, t, hp):
    """SGD with heavy-ball momentum (Polyak 1964) in the Sutskever et al. (2013) form.

    torch convention: b_1 = g_1 (the first step copies without dampening).
    """
    g = -grad if hp.get("maximize") else grad
    g = g + hp.get("weight_decay", 0.0) * param
    mu = hp.get("momentum", 0.0)
    if mu:
        if t == 1:
            state["b"] = g.clone()
        else:
            state["b"] = mu * state["b"] + (1 - hp.get("dampening", 0.0)) * g
        g = g + mu * state["b"] if hp.get("nesterov") else state["b"]
    param -= hp["lr"] * g


def adam(param, grad, state, t, hp):
    """Adam, Kingma & Ba (2015) Algorithm 1, with eps on the bias-corrected root (paper), AMSGrad
    (Reddi et al. 2018) as the running max of v, and AdamW's decoupled decay (Loshchilov & Hutter)."""
    b1, b2 = hp["betas"]
    g = -grad if hp.get("maximize") else grad
    g = _decay(param, g, hp)
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
        state["vmax"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    v = state["v"]
    if hp.get("amsgrad"):
        state["vmax"] = torch.maximum(state["vmax"], state["v"])
        v = state["vmax"]
    m_hat = state["m"] / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    param -= hp["lr"] * m_hat / (v_hat.sqrt() + hp["eps"])


def adamw(param, grad, state, t, hp):
    adam(param, grad, state, t, {**hp, "decoupled_weight_decay": True})


def nadam(param, grad, state, t, hp):
    """NAdam, Dozat (2016) with the momentum schedule mu_t = b1 (1 - 0.5 * 0.96^(t psi))."""
    b1, b2 = hp["betas"]
    psi = hp["momentum_decay"]
    g = _decay(param, grad, hp)
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
        state["mu_prod"] = 1.0
    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    state["mu_prod"] *= mu_t
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    v_hat = state["v"] / (1 - b2**t)
    m_bar = mu_next * state["m"] / (1 - state["mu_prod"] * mu_next) + (1 - mu_t) * g / (
        1 - state["mu_prod"]
    )
    param -= hp["lr"] * m_bar / (v_hat.sqrt() + hp["eps"])


def radam(param, grad, state, t, hp):
    """RAdam, Liu et al. (2020) Algorithm 2; threshold 5 (authors' code); eps on sqrt(v_t)."""
    b1, b2 = hp["betas"]
    g = _decay(param, grad, hp)
    if t == 1:
        state["m"] = torch.zeros_like(param)
        state["v"] = torch.zeros_like(param)
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    m_hat = state["m"] / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t > 5:
        l_t = math.sqrt(1 - b2**t) / (state["v"].sqrt() + hp["eps"])
        r_t = math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        param -= hp["lr"] * m_hat * r_t * l_t
    else:
        param -= hp["lr"] * m_hat


def adagrad(param, grad, state, t, hp):
    """Adagrad, Duchi et al. (2011), diagonal form, with torch's lr decay lr / (1 + (t-1) decay)."""
    g = grad + hp.get("weight_decay", 0.0) * param
    if t == 1:
        state["s"] = torch.full_like(param, hp.get("initial_accumulator_value", 0.0))
    state["s"] = state["s"] + g * g
    lr_t = hp["lr"] / (1 + (t - 1) * hp.get("lr_decay", 0.0))
    param -= lr_t * g / (state["s"].sqrt() + hp["eps"])


def rmsprop(param, grad, state, t, hp):
    """RMSprop, Tieleman & Hinton (2012); centered form from Graves (2013); momentum on g/rms."""
    alpha, eps, mu = hp["alpha"], hp["eps"], hp.get("momentum", 0.0)
    g = grad + hp.get("weight_decay", 0.0) * param
    if t == 1:
        state["v"] = torch.zeros_like(param)
        state["gbar"] = torch.zeros_like(param)
        state["b"] = torch.zeros_like(param)
    state["v"] = alpha * state["v"] + (1 - alpha) * g * g
    if hp.get("centered"):
        state["gbar"] = alpha * state["gbar"] + (1 - alpha) * g
        rms = (state["v"] - state["gbar"] ** 2).sqrt() + eps
    else:
        rms = state["v"].sqrt() + eps
    if mu > 0:
        state["b"] = mu * state["b"] + g / rms
        param -= hp["lr"] * state["b"]
    else:
        param -= hp["lr"] * g / rms
