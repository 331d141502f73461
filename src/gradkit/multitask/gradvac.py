"""GradVac: gradient vaccine (adaptive cosine-similarity targets).

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021, arXiv:2010.05874 (Section 3.2,
Eq. 2 and 3, Algorithm 1). No official code was released; compared with LibMTL
(https://github.com/median-research-group/LibMTL, ``LibMTL/weighting/GradVac.py``) and TorchJD
(https://github.com/TorchJD/torchjd, ``GradVac`` aggregator).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator, check_number


class GradVac(WeightedAggregator):
    r"""Move each task gradient towards an adaptive cosine-similarity target with the others.

    Targets :math:`\hat\phi_{ij}` (initially 0) are kept across calls. For every task :math:`i`:
    :math:`g_i' \leftarrow g_i`; for :math:`j \ne i` in a random order,
    :math:`\phi_{ij} = \cos(g_i', g_j)`; if :math:`\phi_{ij} < \hat\phi_{ij}`,

    .. math::
        g_i' \leftarrow g_i' + \frac{\|g_i'\|\,\big(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
        - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2}\big)}{\|g_j\|\sqrt{1-\hat\phi_{ij}^2}}\, g_j

    (Eq. 2: afterwards :math:`\cos(g_i', g_j) = \hat\phi_{ij}`), then
    :math:`\hat\phi_{ij} \leftarrow (1-\beta)\hat\phi_{ij} + \beta\phi_{ij}` (Eq. 3). The direction
    is :math:`d = \sum_i g_i'`. With all targets 0 (the first call) this is exactly PCGrad.

    Everything is computed on the Gramian in float64 (``g_i' = c_i^\top J``).

    :param beta: EMA rate of the targets, in ``[0, 1]``. Default 0.5 (LibMTL and TorchJD
        defaults; the paper's experiments report a small rate, ``1e-2``, which you may pass).
    :param eps: guard added to the norm products and to the denominator (``>= 0``), as LibMTL's
        and TorchJD's ``1e-8``.
    :param generator: a ``torch.Generator`` or ``int`` seed for the visiting orders (a fresh
        order per task per call, as PCGrad); ``None`` uses torch's global generator.

    Choices / deviations: the EMA is updated for every visited pair (paper Algorithm 1 and
    TorchJD); LibMTL updates it only inside the ``phi < target`` branch, so its targets can only
    decrease from 0. The cosine uses the already-modified :math:`g_i'` and the original
    :math:`g_j` (LibMTL, TorchJD). Only the whole-model granularity (LibMTL ``group_type=0``) is
    provided; apply the aggregator per parameter group yourself for the per-layer variants.

    State (``state_dict``): the targets ``[m, m]`` (``None`` before the first call) and the
    generator state. The targets are reset when the number of tasks changes.
    """

    def __init__(
        self, beta: float = 0.5, eps: float = 1e-8, generator: torch.Generator | int | None = None
    ):
        check_number("beta", beta, low=0.0, high=1.0)
        check_number("eps", eps, low=0.0)
        if isinstance(generator, bool) or (
            generator is not None and not isinstance(generator, (torch.Generator, int))
        ):
            raise ValueError(
                f"Invalid generator: {generator!r} (expected a torch.Generator or int)"
            )
        self.beta = beta
        self.eps = eps
        self._seed = generator if isinstance(generator, int) else None
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator
        self.targets: Tensor | None = None

    def _arguments(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "eps": self.eps,
            "generator": self._seed if self._seed is not None else self.generator,
        }

    def reset(self) -> None:
        """Forget the targets (the next call starts from zero targets)."""
        self.targets = None

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        gram = (matrix @ matrix.T).to(torch.float64).cpu()
        if self.targets is None or self.targets.shape != (m, m):
            self.targets = torch.zeros(m, m, dtype=torch.float64)
        targets = self.targets
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        coeffs = torch.eye(m, dtype=torch.float64)  # row i: g_i' = coeffs[i] @ J
        for i in range(m):
            order = torch.randperm(m, generator=self.generator).tolist()
            for j in order:
                if j == i:
                    continue
                c = coeffs[i]
                norm_i = float(c @ gram @ c) ** 0.5 if float(c @ gram @ c) > 0 else 0.0
                norm_j = float(norms[j])
                phi = float(c @ gram[:, j]) / (norm_i * norm_j + self.eps)
                target = float(targets[i, j])
                if phi < target:
                    num = norm_i * (
                        target * math.sqrt(max(0.0, 1.0 - phi**2))
                        - phi * math.sqrt(max(0.0, 1.0 - target**2))
                    )
                    den = norm_j * math.sqrt(max(0.0, 1.0 - target**2)) + self.eps
                    coeffs[i, j] += num / den
                targets[i, j] = (1.0 - self.beta) * target + self.beta * phi
        return coeffs.sum(0).to(device=matrix.device, dtype=matrix.dtype)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"targets": None if self.targets is None else self.targets.clone()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "targets" not in state_dict:
            raise ValueError("GradVac state_dict has no 'targets' entry")
        if self.generator is not None:
            if "generator" not in state_dict:
                raise ValueError("GradVac state_dict has no 'generator' entry")
            self.generator.set_state(state_dict["generator"])
        targets = state_dict["targets"]
        self.targets = None if targets is None else targets.to(torch.float64).clone()
