"""Float64 reference of GCond's arbitration (arXiv:2509.07252; official grad_conductor.py rules),
written with numpy from the algorithm description, independent of gradkit."""

import math

import numpy as np


class GCondReference:
    def __init__(
        self,
        m,
        momentum=0.85,
        thresholds=(-0.8, -0.5, 0.0),
        mode="smooth",
        power=2.0,
        window=3,
        weights=(0.8, 0.2),
        norm_ema=0.95,
        eps=1e-8,
    ):
        self.m, self.beta, self.th, self.mode, self.p = m, momentum, thresholds, mode, power
        self.window, self.weights, self.rate, self.eps = window, weights, norm_ema, eps
        self.emas = [1.0] * m
        self.prev = None
        self.wins = []
        self.mom = None
        self.t = 0

    def angle(self, c):
        crit, main, weak = self.th
        if c >= main:
            t = np.clip((c - main) / (weak - main), 0, 1)
            return math.pi / 2 * (1 - t)
        if c > crit:
            return math.pi / 2 + math.pi / 2 * ((c - main) / (crit - main)) ** self.p
        return math.pi

    def judge(self, g, i, j):
        recent = self.wins[-self.window :] if self.window else []
        full = self.window and len(recent) == self.window
        dom = {k: bool(full and all(w == k for w in recent)) for k in (i, j)}
        if dom[i] and not dom[j]:
            return j, i
        if dom[j] and not dom[i]:
            return i, j
        scaled = {k: np.linalg.norm(g[k]) / (self.emas[k] + self.eps) for k in (i, j)}
        score = {}
        for k in (i, j):
            stab = 0.0
            if self.prev is not None:
                pk = self.prev[k]
                stab = g[k] @ pk / (np.linalg.norm(g[k]) * np.linalg.norm(pk) + self.eps)
            score[k] = self.weights[0] * max(stab, 0) + self.weights[1] * scaled[k] / (
                scaled[i] + scaled[j] + self.eps
            )
        return (j, i) if score[j] > score[i] else (i, j)

    def __call__(self, J):
        g = [np.array(row, dtype=np.float64) for row in J]
        for k in range(self.m):
            n = np.linalg.norm(g[k])
            self.emas[k] = max(self.rate * self.emas[k] + (1 - self.rate) * n, self.eps)
        for _ in range(2 * self.m):
            best, pair = self.th[2], None
            for i in range(self.m):
                for j in range(i + 1, self.m):
                    ni, nj = g[i] @ g[i], g[j] @ g[j]
                    if ni < self.eps or nj < self.eps:
                        continue
                    c = g[i] @ g[j] / (math.sqrt(ni * nj) + self.eps)
                    if c < best:
                        best, pair = c, (i, j)
            if pair is None:
                break
            w, loser = self.judge(g, *pair)
            if self.window:
                self.wins.append(w)
            gw, gl = g[w].copy(), g[loser].copy()
            dot = gw @ gl
            if self.mode == "smooth":
                a = self.angle(best)
                g[w] = gw - math.sin(a) * dot / (gl @ gl + self.eps) * gl
                g[loser] = gl - math.sin(min(a, math.pi / 2)) * dot / (gw @ gw + self.eps) * gw
            elif best < self.th[0]:
                g[loser] = np.zeros_like(gl)
            elif best < self.th[1]:
                g[loser] = gl - dot / (gw @ gw + self.eps) * gw
            else:
                g[w] = gw - dot / (gl @ gl + self.eps) * gl
                g[loser] = gl - dot / (gw @ gw + self.eps) * gw
        self.prev = [x.copy() for x in g]
        total = np.sum(g, axis=0)
        self.t += 1
        if self.beta == 0:
            return total
        self.mom = (
            (1 - self.beta) * total
            if self.mom is None
            else self.beta * self.mom + (1 - self.beta) * total
        )
        return self.mom / (1 - self.beta**self.t)
