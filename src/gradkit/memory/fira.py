"""Fira: GaLore plus the out-of-subspace gradient, rescaled by the low-rank Adam's own scaling.

Chen, Feng, Li, Lai, Yue, Yuan, Wang, "Fira: Can We Achieve Full-rank Training of LLMs Under
Low-rank Constraint?", NeurIPS 2025, arXiv:2410.01623, official code
https://github.com/xichen-fy/Fira (``optimizer_torch/fira_adamw.py``, read at 5c28b13).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import State
from gradkit.core.validation import as_number, check_choice
from gradkit.memory import projection as pj
from gradkit.memory.galore import (
    _COMMON_DOC,
    TYPICAL_RANK,
    TYPICAL_SHAPE,
    LowRankAdamOptimizer,
    ScaleByGaLore,
)
from gradkit.optim._base import Params, register

RESIDUALS = ("paper", "official")
NORM_EPS = 1e-8  # the official code's guard in the scaling factor and the limiter


class ScaleByFira(ScaleByGaLore):
    """GaLore's projected Adam plus the norm-scaled, growth-limited residual."""

    name = "fira"
    exact_state = frozenset({"proj", "residual_norm"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        gamma = as_number("gamma", hp["gamma"])
        if not gamma >= 1.0 or gamma == float("inf"):
            raise ValueError(f"Invalid gamma: {hp['gamma']!r} (must be finite and >= 1)")
        check_choice(hp, "residual", RESIDUALS)

    def init_param(self, p: Tensor, hp: Mapping[str, Any], projected: bool) -> dict[str, Tensor]:
        entry = super().init_param(p, hp, projected)
        # -1 marks "no previous residual yet" (a real norm is >= 0)
        entry["residual_norm"] = torch.full((), -1.0, dtype=p.dtype, device=p.device)
        return entry

    def finish(self, direction, grad, low_grad, basis, side, state: State, i, hp):
        alpha = hp["scale"]
        keep = alpha if hp["residual"] == "official" else 1.0
        residual = pj.out_of_subspace(grad, low_grad, basis, side, keep)
        # one factor per vector along the projected axis: columns (left) or rows (right)
        dim = 0 if side == "left" else 1
        phi = torch.linalg.vector_norm(direction, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(low_grad, dim=dim, keepdim=True) + NORM_EPS
        )
        scaled = residual.mul_(phi)
        norm = torch.linalg.vector_norm(scaled)
        previous = state["residual_norm"][i]
        growth = torch.clamp(norm / (previous + NORM_EPS), min=hp["gamma"]) / hp["gamma"]
        limiter = torch.where(previous >= 0, growth, torch.ones_like(growth))
        scaled.div_(limiter)
        previous.copy_(norm / limiter)
        return pj.project_back(direction, basis, side).mul_(alpha).add_(scaled)


@register(
    paper="Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
    year=2025,
    url="https://arxiv.org/abs/2410.01623",
    state_floats=pj.galore_state_floats(TYPICAL_SHAPE, TYPICAL_RANK),
)
class Fira(LowRankAdamOptimizer):
    __doc__ = (
        r"""Fira (Chen et al., NeurIPS 2025): GaLore + the scaled out-of-subspace gradient.

    With GaLore's basis :math:`B_t`, projected gradient :math:`R_t` and low-rank Adam direction
    :math:`N_t` (bias-corrected; see :class:`gradkit.memory.GaLore`), Fira adds back the part of
    the gradient GaLore discards, scaled by how much Adam scales the low-rank gradient, one
    factor per column (left projection; per row for right projection):

    .. math::
        \phi_{t,j} = \frac{\lVert N_{t,:,j}\rVert}{\lVert R_{t,:,j}\rVert + 10^{-8}},\qquad
        S_t = (G_t - B_t R_t)\,\operatorname{diag}(\phi_t),

    then the norm-growth limiter (:math:`\gamma` = ``gamma`` = 1.01) caps the step-to-step
    growth of the residual term:

    .. math::
        S_t \leftarrow S_t \Big/ \frac{\max(\lVert S_t\rVert / (\lVert S_{t-1}\rVert + 10^{-8}),
        \gamma)}{\gamma},\qquad
        \theta_t = \theta_{t-1} - \eta\,(\alpha B_t N_t + S_t + \lambda\theta_{t-1}),

    where :math:`\lVert S_{t-1}\rVert` is the norm *after* limiting (state
    ``fira.residual_norm``; -1 before the first step). The limiter state is kept across basis
    refreshes, as in the official code.

    Defaults (official code and LLaMA-60M script): ``lr=1e-3`` (the scripts use 0.01),
    ``rank=128``, ``update_proj_gap=200``, ``scale=0.25`` (the paper's :math:`\alpha`; 0.0625
    for 1B/7B), ``gamma=1.01``, ``residual="paper"``, ``betas=(0.9, 0.999)``, ``eps=1e-6``,
    ``weight_decay=0``, ``reproject_moments=True``.

    **The residual, precisely.** The paper's residual is :math:`G_t - B_t R_t = (I - B_t
    B_t^\top) G_t` (left; :math:`G_t (I - B_t B_t^\top)` right): the gradient outside the
    subspace. The official code computes it as ``p.grad - project_back(R)``, and its
    ``project_back`` multiplies by :math:`\alpha`, so it really adds
    :math:`G_t - \alpha B_t B_t^\top G_t`: with :math:`\alpha = 0.25` the residual still carries
    75% of the in-subspace gradient (scaled by :math:`\phi`), on top of the Adam update of that
    same subspace. ``residual="paper"`` (default) uses the paper's orthogonal residual;
    ``residual="official"`` reproduces the code (and the published runs).

    Other differences from the official code: :math:`\phi` uses the bias-corrected direction
    :math:`N_t` because the official code folds the bias correction into its step size, which
    multiplies the residual too: the product is the same. The column/row choice follows the
    projection side; the official code decides it from the projected matrix's shape, which
    agrees except when the projected matrix is square.

    ``state_floats`` in the registry: as :class:`GaLore` (768 x 3072 at rank 128; the limiter
    adds one scalar per matrix).
    """
        + _COMMON_DOC
    )

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        rank: int | None = 128,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        gamma: float = 1.01,
        residual: str = "paper",
        proj_type: str = "std",
        reproject_moments: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        transforms: Sequence[Any] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        scaling = ScaleByFira(
            betas=betas, eps=eps, rank=rank, update_proj_gap=update_proj_gap, scale=scale,
            proj_type=proj_type, reproject_moments=reproject_moments, gamma=gamma,
            residual=residual,
        )  # fmt: skip
        super().__init__(
            params, scaling, lr=lr, weight_decay=weight_decay, maximize=maximize,
            transforms=transforms, nonfinite=nonfinite, state_dtype=state_dtype,
        )  # fmt: skip
