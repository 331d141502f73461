"""Float64 references for the clipping, normalization and masking transforms.

Written from the papers' definitions with plain Python loops over floats (no gradkit, no torch
kernels beyond reading and writing entries), so they share no code path with the library.
Tensors come in and go out as float64 torch tensors for convenience.
"""

from __future__ import annotations

import math

import torch

TORCH_EPS = 1e-6


def _flat(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().double().reshape(-1).tolist()]


def _norm(values: list[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in values))


def clip_global_norm(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    total = _norm([v for g in grads for v in _flat(g)])
    coef = min(1.0, max_norm / (total + TORCH_EPS))
    return [g.double() * coef for g in grads]


def clip_value(g: torch.Tensor, limit: float) -> torch.Tensor:
    out = [min(limit, max(-limit, v)) for v in _flat(g)]
    return torch.tensor(out, dtype=torch.float64).reshape(g.shape)


def clip_norm(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    coef = min(1.0, max_norm / (_norm(_flat(g)) + TORCH_EPS))
    return g.double() * coef


def _units(t: torch.Tensor) -> list[list[float]]:
    """Rows of the (out, rest) view; a vector or scalar is one unit."""
    if t.ndim <= 1:
        return [_flat(t)]
    return [_flat(row) for row in t.double().reshape(t.shape[0], -1)]


def agc(g: torch.Tensor, w: torch.Tensor, clipping: float, eps: float) -> torch.Tensor:
    """Brock et al. 2021, Eq. (3), unit-wise; denominator max(||G_i||, 1e-6) as the official code."""
    out = []
    for g_row, w_row in zip(_units(g), _units(w), strict=True):
        w_norm = max(_norm(w_row), eps)
        g_norm = _norm(g_row)
        if g_norm / w_norm >= clipping:  # official: keep where g_norm < clipping * w_norm
            factor = clipping * w_norm / max(g_norm, TORCH_EPS)
            g_row = [v * factor for v in g_row]
        out += g_row
    return torch.tensor(out, dtype=torch.float64).reshape(g.shape)


def pixel_clip(g: torch.Tensor, kappa: float, dim: int, norm: str) -> torch.Tensor:
    """PGC: every vector along ``dim`` (a pixel's channels) gets norm <= kappa."""
    if g.ndim == 0:
        return torch.tensor(min(1.0, kappa / abs(float(g))) * float(g), dtype=torch.float64)
    moved = g.double().movedim(dim, -1)
    pixels = moved.reshape(-1, moved.shape[-1]).tolist()
    out = []
    for pixel in pixels:
        size = max(abs(v) for v in pixel) if norm == "inf" else _norm(pixel)
        factor = 1.0 if size == 0 else min(1.0, kappa / size)
        out.append([v * factor for v in pixel])
    return torch.tensor(out, dtype=torch.float64).reshape(moved.shape).movedim(-1, dim)


def normalize(g: torch.Tensor, eps: float) -> torch.Tensor:
    return g.double() / (_norm(_flat(g)) + eps)


def centralize(g: torch.Tensor, conv_only: bool = False) -> torch.Tensor:
    if g.ndim < (4 if conv_only else 2):
        return g.double()
    rows = _units(g)
    out = []
    for row in rows:
        mean = math.fsum(row) / len(row)
        out += [v - mean for v in row]
    return torch.tensor(out, dtype=torch.float64).reshape(g.shape)


class NormGrowth:
    """Fira's limiter for one tensor: if ||S_t|| / ||S~_{t-1}|| > gamma, rescale S_t to norm
    gamma * ||S~_{t-1}|| (with the official +1e-8 in the ratio); the first step only records."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.prev: float | None = None

    def step(self, s: torch.Tensor) -> torch.Tensor:
        size = _norm(_flat(s))
        if self.prev is None:
            self.prev = size
            return s.double()
        limiter = max(size / (self.prev + 1e-8), self.gamma) / self.gamma
        self.prev = size / limiter
        return s.double() / limiter


def top_fraction(u: torch.Tensor, fraction: float, keep_top: bool) -> torch.Tensor:
    """Zero all but the ceil(f n) largest |u| (keep_top) or exactly those (ignore-k).
    Assumes distinct magnitudes."""
    values = _flat(u)
    k = math.ceil(round(fraction * len(values), 9))
    order = sorted(range(len(values)), key=lambda i: -abs(values[i]))
    top = set(order[:k])
    out = [v if (i in top) == keep_top else 0.0 for i, v in enumerate(values)]
    return torch.tensor(out, dtype=torch.float64).reshape(u.shape)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, torch.quantile's 'linear')."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def migu(grad: torch.Tensor, outputs: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """MIGU: L1-normalized output magnitudes per unit, summed over the step's forward passes;
    rows of units below the threshold-quantile are zeroed."""
    width = outputs[0].shape[-1]
    sums = [0.0] * width
    for y in outputs:
        for token in y.double().reshape(-1, width).tolist():
            for j, v in enumerate(token):
                sums[j] += abs(v)
    total = math.fsum(sums)
    normalized = [s / total for s in sums]
    cut = quantile(normalized, threshold)
    rows = grad.double().reshape(grad.shape[0], -1).tolist()
    out = [row if normalized[j] >= cut else [0.0] * len(row) for j, row in enumerate(rows)]
    return torch.tensor(out, dtype=torch.float64).reshape(grad.shape)
