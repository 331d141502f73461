"""GCond (Gradient Conductor): arbitration of the worst conflicts on accumulated task gradients.

Limarenko et al., "GCond: Gradient Conflict Resolution via Accumulation-based Stabilization for
Large-Scale Multi-Task Learning", arXiv:2509.07252 (2025). Official code:
https://github.com/AlevLab-dev/GCond (``grad_conductor.py``, ``GradientConductor``), which this
implementation was checked against.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import Aggregator, check_number

MODES = ("smooth", "zones")


def effective_angle(cosine: float, thresholds: tuple[float, float, float], power: float) -> float:
    r"""The smooth mode's remapping of a conflict's cosine :math:`c` to an angle in :math:`[0, \pi]`.

    With thresholds (critical, main, weak): :math:`\frac\pi2 (1 - t)` for :math:`c \ge` main
    (:math:`t = (c - \text{main}) / (\text{weak} - \text{main})` clipped to [0, 1]),
    :math:`\frac\pi2 (1 + t^p)` for critical < c < main (:math:`t = (c - \text{main}) /
    (\text{critical} - \text{main})`), and :math:`\pi` at or below critical.
    """
    critical, main, weak = thresholds
    if cosine >= main:
        t = min(max((cosine - main) / max(weak - main, 1e-12), 0.0), 1.0)
        return math.pi / 2 * (1.0 - t)
    if cosine > critical:
        t = (cosine - main) / (critical - main)
        return math.pi / 2 * (1.0 + t**power)
    return math.pi


class GCond(Aggregator):
    r"""Resolve the worst pairwise conflicts of accumulated task gradients, then sum them.

    ``J`` holds one **accumulated** gradient per task (average over several micro-batches; use
    :class:`gradkit.multitask.TaskGradientAccumulator`, whose ``next_task`` gives the stochastic
    mode's schedule, one task per micro-batch). For at most ``max_iters`` (default :math:`2m`)
    rounds, the pair :math:`(i, j)` with the most negative cosine :math:`c < \text{weak}` is found
    (pairs with a zero gradient are skipped) and an arbitrator names a winner :math:`w` and a loser
    :math:`l`:

    * a task that won each of the last ``dominance_window`` conflicts loses;
    * otherwise the higher score wins, :math:`0.8 \max(0, \cos(g, g^{prev})) + 0.2\,
      \frac{\|g\|/\bar n}{\|g_i\|/\bar n_i + \|g_j\|/\bar n_j}` (stability against the task's own
      previous gradient, strength against an EMA :math:`\bar n` of its norm, rate 0.95, initial 1).

    Smooth mode (default) with :math:`\alpha` = :func:`effective_angle` of :math:`c`, both updated
    from the same inputs:

    .. math::
        g_w \leftarrow g_w - \sin\alpha\,\frac{\langle g_w, g_l\rangle}{\|g_l\|^2} g_l,\qquad
        g_l \leftarrow g_l - \sin(\min(\alpha, \tfrac\pi2))\,
        \frac{\langle g_w, g_l\rangle}{\|g_w\|^2} g_w .

    Zones mode (``mode="zones"``, the paper's 4-zone rule): :math:`c <` critical zeroes the loser;
    critical :math:`\le c <` main projects the loser onto the winner's normal plane (PCGrad);
    main :math:`\le c <` weak projects both symmetrically. The output is
    :math:`\sum_i g_i`, then (``momentum > 0``) a bias-corrected EMA
    :math:`m \leftarrow \beta m + (1-\beta) g`, :math:`d = m / (1 - \beta^t)`.

    :param momentum: :math:`\beta` of the output EMA (default ``0.85``, official); ``0`` returns
        the resolved sum. With momentum on, set the model optimizer's own momentum to 0 (official
        advice).
    :param thresholds: (critical, main, weak) cosines, non-decreasing in [-1, 1]; default
        ``(-0.8, -0.5, 0.0)`` as the official code (its README says -0.85).
    :param mode: ``"smooth"`` (official default) or ``"zones"``.
    :param remap_power: :math:`p` of the smooth remapping (default 2).
    :param dominance_window: wins in a row after which a task loses (default 3; 0 disables).
    :param tie_breaking: (stability, strength) score weights (default ``(0.8, 0.2)``).
    :param norm_ema: rate of the norm EMA (default 0.95). :param max_iters: rounds (default 2m).
    :param norm_cap: clip each task gradient's norm to this before resolving (default off).
    :param eps: numerical floor (default 1e-8, official).

    Choices: gradients are kept in the input dtype (the official code accumulates in bfloat16 to
    save memory); the "previous gradient" of the stability score is each task's **resolved**
    gradient of the previous call, as the official buffer swap does; the official Lion/LARS output
    mode is left to the optimizer (use :class:`gradkit.optim.Lion` / ``LARS`` instead).
    State (``state_dict``): momentum, previous gradients, norm EMAs, win history, step.
    """

    def __init__(
        self,
        momentum: float = 0.85,
        thresholds: tuple[float, float, float] = (-0.8, -0.5, 0.0),
        mode: str = "smooth",
        remap_power: float = 2.0,
        dominance_window: int = 3,
        tie_breaking: tuple[float, float] = (0.8, 0.2),
        norm_ema: float = 0.95,
        max_iters: int | None = None,
        norm_cap: float | None = None,
        eps: float = 1e-8,
    ):
        check_number("momentum", momentum, low=0.0, high=1.0)
        if momentum == 1.0:
            raise ValueError("Invalid momentum: 1.0 (must be in [0, 1))")
        thresholds = tuple(thresholds)
        if len(thresholds) != 3:
            raise ValueError(f"Invalid thresholds: {thresholds!r} (expected 3 cosines)")
        for t in thresholds:
            check_number("thresholds", t, low=-1.0, high=1.0)
        if not thresholds[0] <= thresholds[1] <= thresholds[2]:
            raise ValueError(
                f"Invalid thresholds: {thresholds!r} (must be critical <= main <= weak)"
            )
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (choose from {MODES})")
        check_number("remap_power", remap_power, low=0.0, low_open=True)
        check_number("dominance_window", dominance_window, low=0, integer=True)
        tie_breaking = tuple(tie_breaking)
        if len(tie_breaking) != 2 or min(tie_breaking) < 0 or sum(tie_breaking) <= 0:
            raise ValueError(
                f"Invalid tie_breaking: {tie_breaking!r} (two non-negative weights, positive sum)"
            )
        check_number("norm_ema", norm_ema, low=0.0, high=1.0)
        if max_iters is not None:
            check_number("max_iters", max_iters, low=1, integer=True)
        if norm_cap is not None:
            check_number("norm_cap", norm_cap, low=0.0, low_open=True)
        check_number("eps", eps, low=0.0, low_open=True)
        self.momentum, self.thresholds, self.mode = momentum, thresholds, mode
        self.remap_power, self.dominance_window = remap_power, dominance_window
        self.tie_breaking, self.norm_ema, self.max_iters = tie_breaking, norm_ema, max_iters
        self.norm_cap, self.eps = norm_cap, eps
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.momentum_buffer: Tensor | None = None
        self.previous: Tensor | None = None
        self.norm_emas: list[float] | None = None
        self.history: deque[int] = deque(maxlen=self.dominance_window)
        self.last_stats: dict[str, float] = {}

    def _arguments(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "thresholds": self.thresholds,
            "mode": self.mode,
            "remap_power": self.remap_power,
            "dominance_window": self.dominance_window,
            "tie_breaking": self.tie_breaking,
            "norm_ema": self.norm_ema,
            "max_iters": self.max_iters,
            "norm_cap": self.norm_cap,
            "eps": self.eps,
        }

    # -- arbitration ---------------------------------------------------------------------------
    def _dominant(self, task: int) -> bool:
        window = self.dominance_window
        return window > 0 and len(self.history) == window and self.history.count(task) == window

    def _score(self, grads: Tensor, i: int, j: int, task: int) -> float:
        g = grads[task]
        norm = float(g.norm())
        stability = 0.0
        if self.previous is not None:
            prev = self.previous[task]
            stability = float(g @ prev) / (norm * float(prev.norm()) + self.eps)
        emas = self.norm_emas or [1.0] * grads.shape[0]
        scaled = [float(grads[k].norm()) / (emas[k] + self.eps) for k in (i, j)]
        mine = scaled[0] if task == i else scaled[1]
        strength = mine / (sum(scaled) + self.eps)
        w_stability, w_strength = self.tie_breaking
        return w_stability * max(stability, 0.0) + w_strength * strength

    def arbitrate(self, grads: Tensor, i: int, j: int) -> tuple[int, int]:
        """(winner, loser) of the conflict between tasks ``i`` and ``j``."""
        dominant_i, dominant_j = self._dominant(i), self._dominant(j)
        if dominant_i != dominant_j:
            return (j, i) if dominant_i else (i, j)
        if self._score(grads, i, j, j) > self._score(grads, i, j, i):
            return j, i
        return i, j

    def _worst_pair(self, grads: Tensor) -> tuple[int, int, float] | None:
        sq = (grads * grads).sum(dim=1)
        dots = grads @ grads.T
        worst, pair = self.thresholds[2], None
        m = grads.shape[0]
        for i in range(m):
            for j in range(i + 1, m):
                if sq[i] < self.eps or sq[j] < self.eps:
                    continue
                cosine = float(dots[i, j] / (torch.sqrt(sq[i] * sq[j]) + self.eps))
                if cosine < worst:
                    worst, pair = cosine, (i, j, cosine)
        return pair

    def _resolve(self, grads: Tensor, winner: int, loser: int, cosine: float) -> None:
        g_w, g_l = grads[winner].clone(), grads[loser].clone()
        dot = g_w @ g_l
        sq_w, sq_l = g_w @ g_w, g_l @ g_l
        critical, main, _ = self.thresholds
        if self.mode == "smooth":
            angle = effective_angle(cosine, self.thresholds, self.remap_power)
            grads[winner] = g_w - math.sin(angle) * dot / (sq_l + self.eps) * g_l
            grads[loser] = g_l - math.sin(min(angle, math.pi / 2)) * dot / (sq_w + self.eps) * g_w
        elif cosine < critical:
            grads[loser] = 0.0
        elif cosine < main:
            grads[loser] = g_l - dot / (sq_w + self.eps) * g_w
        else:
            grads[winner] = g_w - dot / (sq_l + self.eps) * g_l
            grads[loser] = g_l - dot / (sq_w + self.eps) * g_w

    def aggregate(self, matrix: Tensor) -> Tensor:
        grads = matrix.clone()
        m = grads.shape[0]
        if self.norm_emas is None or len(self.norm_emas) != m:
            self.norm_emas = [1.0] * m
        norms = grads.norm(dim=1).tolist()
        self.norm_emas = [
            max(self.norm_ema * ema + (1 - self.norm_ema) * n, self.eps)
            for ema, n in zip(self.norm_emas, norms, strict=True)
        ]
        if self.norm_cap is not None:
            scale = (self.norm_cap / (grads.norm(dim=1, keepdim=True) + self.eps)).clamp(max=1.0)
            grads = grads * scale
        stats = {"rounds": 0.0, "min_cosine": 1.0}
        for round_ in range(self.max_iters or 2 * m):
            pair = self._worst_pair(grads) if m > 1 else None
            if pair is None:
                break
            i, j, cosine = pair
            if round_ == 0:
                stats["min_cosine"] = cosine
            stats["rounds"] = float(round_ + 1)
            winner, loser = self.arbitrate(grads, i, j)
            if self.dominance_window > 0:
                self.history.append(winner)
            self._resolve(grads, winner, loser, cosine)
        self.previous = grads.clone()
        self.last_stats = stats
        total = grads.sum(dim=0)
        self.step += 1
        if self.momentum == 0.0:
            return total
        if self.momentum_buffer is None or self.momentum_buffer.shape != total.shape:
            self.momentum_buffer = torch.zeros_like(total)
        self.momentum_buffer.mul_(self.momentum).add_(total, alpha=1 - self.momentum)
        return self.momentum_buffer / (1 - self.momentum**self.step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "momentum_buffer": self.momentum_buffer,
            "previous": self.previous,
            "norm_emas": None if self.norm_emas is None else list(self.norm_emas),
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])
        self.momentum_buffer = state_dict["momentum_buffer"]
        self.previous = state_dict["previous"]
        emas = state_dict["norm_emas"]
        self.norm_emas = None if emas is None else [float(x) for x in emas]
        self.history = deque(state_dict["history"], maxlen=self.dominance_window)
