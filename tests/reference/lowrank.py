"""Float64 references for GaLore, Fira and FRUGAL (SVD projector), from the papers' equations.

Plain per-tensor math, no gradkit imports. Signature ``step(param, grad, state, t, hp)``:
``param`` is updated in place, ``state`` is a dict the reference owns, ``t`` is 1-based and ``hp``
the param group's hyperparameters. Conventions adopted from the official codes (stated in the
gradkit docstrings): refresh at steps 1, T+1, 2T+1, ...; projection side by shape ("std":
right when m >= n); singular vectors with their largest-magnitude entry positive; eps on the
bias-corrected sqrt(v); decoupled weight decay on the previous parameter.
"""

from __future__ import annotations

import torch


def _adam_direction(state: dict, x: torch.Tensor, t: int, hp: dict) -> torch.Tensor:
    b1, b2 = hp["betas"]
    state["m"] = b1 * state["m"] + (1 - b1) * x
    state["v"] = b2 * state["v"] + (1 - b2) * x * x
    m_hat = state["m"] / (1 - b1**t)
    v_hat = state["v"] / (1 - b2**t)
    return m_hat / (v_hat.sqrt() + hp["eps"])


def _apply(param: torch.Tensor, update: torch.Tensor, hp: dict) -> None:
    new = param - hp["lr"] * (update + hp["weight_decay"] * param)
    param.copy_(new)


def adamw(param, grad, state, t, hp) -> None:
    """Adam with decoupled weight decay (what unprojected parameters get)."""
    if "m" not in state:
        state["m"] = torch.zeros_like(param, dtype=torch.float64)
        state["v"] = torch.zeros_like(param, dtype=torch.float64)
    g = grad.to(torch.float64)
    if hp.get("maximize"):
        g = -g
    _apply(param, _adam_direction(state, g, t, hp), hp)


def is_left(shape) -> bool:
    m, n = shape
    return m < n


def top_singular_basis(g: torch.Tensor, left: bool, rank: int) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    basis = (u[:, :rank] if left else vh[:rank].T).clone()
    for j in range(basis.shape[1]):
        k = int(basis[:, j].abs().argmax())
        if basis[k, j] < 0:
            basis[:, j] = -basis[:, j]
    return basis


def _down(g, b, left):
    return b.T @ g if left else g @ b


def _up(x, b, left):
    return b @ x if left else x @ b.T


def _subspace_adam(g, new_basis, state, t, hp, left):
    """(R, N): Adam on R = B^T G (left; G B right). A ``new_basis`` replaces B first, with the
    moments carried into it (Q = B_new^T B_old: m <- Q m, v <- Q^2 v) when reproject_moments."""
    if new_basis is not None:
        if "B" in state and hp["reproject_moments"]:
            q = new_basis.T @ state["B"]
            if left:
                state["m"], state["v"] = q @ state["m"], (q * q) @ state["v"]
            else:
                state["m"], state["v"] = state["m"] @ q.T, state["v"] @ (q * q).T
        state["B"] = new_basis
    low = _down(g, state["B"], left)
    if "m" not in state:
        state["m"] = torch.zeros_like(low)
        state["v"] = torch.zeros_like(low)
    return low, _adam_direction(state, low, t, hp)


def _galore_direction(param, grad, state, t, hp):
    """(alpha * B N, R, N, B, G, left) for a projected matrix; refreshes and re-projects."""
    g = grad.to(torch.float64)
    if hp.get("maximize"):
        g = -g
    left = is_left(param.shape)
    r = min(hp["rank"], *param.shape)
    due = "B" not in state or (t - 1) % hp["update_proj_gap"] == 0
    low, n = _subspace_adam(g, top_singular_basis(g, left, r) if due else None, state, t, hp, left)
    b = state["B"]
    return hp["scale"] * _up(n, b, left), low, n, b, g, left


def projected(param, hp, key="rank") -> bool:
    return hp[key] is not None and param.dim() == 2


def galore(param, grad, state, t, hp) -> None:
    if not projected(param, hp):
        return adamw(param, grad, state, t, hp)
    update, *_ = _galore_direction(param, grad, state, t, hp)
    _apply(param, update, hp)


def fira(param, grad, state, t, hp) -> None:
    """GaLore + phi-scaled residual with the norm-growth limiter (Fira, Sec. 3)."""
    if not projected(param, hp):
        return adamw(param, grad, state, t, hp)
    update, low, n, b, g, left = _galore_direction(param, grad, state, t, hp)
    keep = hp["scale"] if hp["residual"] == "official" else 1.0
    residual = g - keep * _up(low, b, left)
    if left:  # one factor per column of R (r x n)
        phi = n.norm(dim=0) / (low.norm(dim=0) + 1e-8)
        scaled = residual * phi[None, :]
    else:  # one factor per row of R (m x r)
        phi = n.norm(dim=1) / (low.norm(dim=1) + 1e-8)
        scaled = residual * phi[:, None]
    norm = scaled.norm()
    if "s_norm" in state:
        limiter = max(float(norm / (state["s_norm"] + 1e-8)), hp["gamma"]) / hp["gamma"]
        scaled = scaled / limiter
        state["s_norm"] = norm / limiter
    else:
        state["s_norm"] = norm
    state["phi"] = phi
    _apply(param, update + scaled, hp)


def frugal_svd(param, grad, state, t, hp) -> None:
    """FRUGAL with the SVD projector: Adam on B^T G, signSGD on G - B B^T G."""
    if not projected(param, hp, "density"):
        return adamw(param, grad, state, t, hp)
    g = grad.to(torch.float64)
    if hp.get("maximize"):
        g = -g
    left = is_left(param.shape)
    r = round(min(param.shape) * hp["density"])
    if "B" not in state or (t - 1) % hp["update_gap"] == 0:
        state["B"] = top_singular_basis(g, left, r)
        if "m" not in state or hp["reset_statistics"]:
            shape = (r, param.shape[1]) if left else (param.shape[0], r)
            state["m"] = torch.zeros(shape, dtype=torch.float64)
            state["v"] = torch.zeros(shape, dtype=torch.float64)
            state["t0"] = t - 1
    b = state["B"]
    low = _down(g, b, left)
    n = _adam_direction(state, low, t - state["t0"], hp)
    residual = g - _up(low, b, left)
    update = _up(n, b, left) + hp["inactive_lr_scale"] * torch.sign(residual)
    _apply(param, update, hp)


def int4_roundtrip(x: torch.Tensor, group: int) -> torch.Tensor:
    """Q-GaLore's group-wise asymmetric 4-bit quantization and back, with float32 scales
    (the stored precision): s = max((max - min) / 15, 1e-5), z = round(-min / s),
    q = clamp(round(x / s) + z, 0, 15), x' = s (q - z)."""
    flat = x.reshape(-1).to(torch.float32)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), group):
        g = flat[start : start + group]
        s = torch.clamp((g.max() - g.min()) / 15, min=1e-5)
        z = torch.round(-g.min() / s)
        q = torch.clamp(torch.round(g / s) + z, 0, 15)
        out[start : start + group] = (q - z) * s
    return out.reshape(x.shape).to(torch.float64)


def qgalore(param, grad, state, t, hp) -> None:
    """GaLore with an INT4 basis and the lazy gap: at each refresh after the first, |cos| of the
    new and previous first singular vectors joins a FIFO of ``queue_size``; a full queue with mean
    >= ``cos_threshold`` multiplies the gap by ``gamma_proj``; refresh when (t-1) % gap == 0."""
    if not projected(param, hp):
        return adamw(param, grad, state, t, hp)
    g = grad.to(torch.float64)
    left = is_left(param.shape)
    r = min(hp["rank"], *param.shape)
    state.setdefault("gap", hp["update_proj_gap"])
    state.setdefault("queue", [])
    new = None
    if "B" not in state or (t - 1) % state["gap"] == 0:
        exact = top_singular_basis(g, left, r)
        first = exact[:, 0]
        if "last" in state:
            cos = abs(float(first @ state["last"] / (first.norm() * state["last"].norm())))
            state["queue"] = (state["queue"] + [cos])[-hp["queue_size"] :]
            full = len(state["queue"]) == hp["queue_size"]
            if full and sum(state["queue"]) / hp["queue_size"] >= hp["cos_threshold"]:
                state["gap"] = int(state["gap"] * hp["gamma_proj"])
        state["last"] = first
        new = int4_roundtrip(exact, hp["proj_group_size"])
    _, n = _subspace_adam(g, new, state, t, hp, left)
    _apply(param, hp["scale"] * _up(n, state["B"], left), hp)
