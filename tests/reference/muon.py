"""Reference updates for the orthogonalized family (Muon, AuON; Drop-Muon's active layers).

``step(param, grad, state, t, hp)`` as in ``classic.py``: one tensor, float64, plain formulas,
no gradkit code. Conventions adopted from the official code and stated here:

* momentum is the EMA ``B = mu B + (1 - mu) G`` with Nesterov ``(1 - mu) G + mu B``
  (KellerJordan/Muon, torch.optim.Muon, ryyzn9/AuON);
* n-D (n >= 2) tensors are matrices ``(shape[0], prod(shape[1:]))``; 0-/1-D tensors (or a group
  with ``use_muon=False`` / ``use_auon=False``) take AdamW with ``adam_betas`` / ``adam_eps``;
* Newton-Schulz normalises by ``max(s ||X||_F, eps)`` (torch.optim.Muon; ``s = 1.01`` for the
  Polar Express preset, Amsel et al. 2025, Algorithm 1) and works on the wide orientation;
* weight decay is decoupled: ``W <- (1 - lr wd) W - lr * step``.

State keys: ``"B"`` (momentum, empty for AdamW tensors), ``"m"``, ``"v"`` (empty for matrices).
"""

from __future__ import annotations

import math

import torch

ORIGINAL = [(3.4445, -4.7750, 2.0315)]
_PE = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
POLAR_EXPRESS = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PE[:-1]] + [_PE[-1]]


def _schedule(coefficients):
    if coefficients == "original":
        return ORIGINAL, 1.0
    if coefficients == "polar_express":
        return POLAR_EXPRESS, 1.01
    if len(coefficients) == 3 and not isinstance(coefficients[0], (tuple, list)):
        return [tuple(coefficients)], 1.0
    return [tuple(c) for c in coefficients], 1.0


def newton_schulz(m, steps, coefficients, eps):
    """X <- a X + b (X X^T) X + c (X X^T)^2 X on the wide orientation of ``m``."""
    schedule, factor = _schedule(coefficients)
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / max(factor * torch.linalg.matrix_norm(x).item(), eps)
    for k in range(steps):
        a, b, c = schedule[min(k, len(schedule) - 1)]
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if m.shape[0] > m.shape[1] else x


def _is_matrix(param, hp, flag):
    choice = hp.get(flag)
    return param.ndim >= 2 if choice is None else bool(choice)


def _ratio(rows, cols, adjust_lr_fn):
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def _init(param, state, matrix):
    empty = param.new_empty(0)
    state["B"] = torch.zeros_like(param) if matrix else empty
    state["m"] = empty if matrix else torch.zeros_like(param)
    state["v"] = empty if matrix else torch.zeros_like(param)


def _momentum(g, state, hp):
    mu = hp["momentum"]
    state["B"] = mu * state["B"] + (1 - mu) * g
    return (1 - mu) * g + mu * state["B"] if hp["nesterov"] else state["B"]


def _adamw_step(param, g, state, t, hp):
    b1, b2 = hp["adam_betas"]
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    m_hat = state["m"] / (1 - b1**t)
    v_hat = state["v"] / (1 - b2**t)
    return m_hat / (v_hat.sqrt() + hp["adam_eps"])


def _apply(param, direction, hp):
    param.mul_(1 - hp["lr"] * hp["weight_decay"])
    param -= hp["lr"] * direction


def muon(param, grad, state, t, hp):
    """Muon (Jordan et al. 2024) with the AdamW fallback of ``MuonWithAuxAdam``."""
    g = -grad if hp.get("maximize") else grad
    matrix = _is_matrix(param, hp, "use_muon")
    if t == 1:
        _init(param, state, matrix)
    if not matrix:
        _apply(param, _adamw_step(param, g, state, t, hp), hp)
        return
    m = _momentum(g, state, hp).reshape(param.shape[0], -1)
    o = newton_schulz(m, hp["ns_steps"], hp["ns_coefficients"], hp["eps"])
    ratio = _ratio(m.shape[0], m.shape[1], hp["adjust_lr_fn"])
    _apply(param, ratio * o.reshape(param.shape), hp)


def auon(param, grad, state, t, hp):
    """AuON (Maity 2025, section 3.1): X = M/(||M||_F + eps), U = X/(rms(cosh(gamma X)) + 1e-8);
    Hybrid-AuON (section 3.2): X = ns_steps Newton-Schulz iterations of M instead."""
    g = -grad if hp.get("maximize") else grad
    matrix = _is_matrix(param, hp, "use_auon")
    if t == 1:
        _init(param, state, matrix)
    if not matrix:
        _apply(param, _adamw_step(param, g, state, t, hp), hp)
        return
    m = _momentum(g, state, hp).reshape(param.shape[0], -1)
    if hp["hybrid"]:
        x = newton_schulz(m, hp["ns_steps"], "original", hp["eps"])
    else:
        x = m / (torch.linalg.matrix_norm(m) + hp["eps"])
    n = x.numel()
    rms = math.sqrt(sum(math.cosh(hp["gamma"] * v) ** 2 for v in x.flatten().tolist()) / n)
    u = x / (rms + 1e-8)
    ratio = _ratio(m.shape[0], m.shape[1], hp["adjust_lr_fn"])
    _apply(param, ratio * u.reshape(param.shape), hp)
