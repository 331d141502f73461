"""GaLore and Q-GaLore: Adam on a low-rank projection of each chosen matrix's gradient.

Zhao, Zhang, Chen, Wang, Anandkumar, Tian, "GaLore: Memory-Efficient LLM Training by Gradient
Low-Rank Projection", ICML 2024, arXiv:2403.03507, official code
https://github.com/jiaweizzhao/GaLore (``galore_torch/adamw.py``, ``galore_projector.py``,
read at 2cc66f8).

Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang, "Q-GaLore: Quantized GaLore with INT4 Projection and
Layer-Adaptive Low-Rank Gradients", arXiv:2407.08296 (2024), official code
https://github.com/VITA-Group/Q-GaLore (``q_galore_torch/q_galore_projector.py``, read at
5bd2f1c).

Which parameters are projected: those in a param group whose ``rank`` is not ``None`` *and* that
are 2-D. Every other parameter (biases, norms, groups with ``rank=None``) gets plain Adam (with
the same decoupled weight decay) from the same optimizer, as in the official code where only the
"galore" param group carries a ``rank``.

State (``optimizer.state[p]``, all tensors so checkpoints are ``weights_only``-safe):
``galore.exp_avg`` / ``galore.exp_avg_sq`` (the ``r``-sized moments for projected matrices, full
size otherwise), ``galore.proj`` (the ``d x r`` basis, empty for unprojected parameters) and
``galore.proj_step`` (int64: the step at which the basis was last refreshed, 0 = never). Q-GaLore
stores the basis as INT4 codes instead (``qgalore.proj_codes``, ``proj_scales``, ``proj_zeros``)
plus its adaptive gap (``qgalore.gap``), similarity queue and previous first singular vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State
from gradkit.core.validation import (
    as_number,
    check_betas,
    check_bool,
    check_choice,
    check_positive,
    check_unit_interval,
)
from gradkit.memory import projection as pj
from gradkit.optim._base import GradkitOptimizer, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr

TYPICAL_SHAPE = (768, 3072)
"""The matrix the registry's ``state_floats`` refers to (a GPT-2-small MLP weight)."""
TYPICAL_RANK = 128


def check_positive_int(hp: Mapping[str, Any], name: str, *, allow_none: bool = False) -> None:
    value = hp[name]
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")


class ScaleByGaLore(GroupTransform):
    """Adam in the projected space of each projected matrix, plain Adam for the rest.

    Subclasses change how the basis is stored (:meth:`read_basis` / :meth:`write_basis`), when it
    is refreshed (:meth:`refresh_due`) and what is added to the back-projected update
    (:meth:`finish`).
    """

    name = "galore"
    # for a compressed state_dtype policy: the basis must stay exact (it is not a moment)
    nonnegative_state = frozenset({"exp_avg_sq"})
    exact_state = frozenset({"proj"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_positive_int(hp, "rank", allow_none=True)
        check_positive_int(hp, "update_proj_gap")
        check_positive(hp, "scale")
        check_choice(hp, "proj_type", pj.PROJ_TYPES)
        check_bool(hp, "reproject_moments")

    # -- state ------------------------------------------------------------------------------
    def is_projected_param(self, p: Tensor, hp: Mapping[str, Any]) -> bool:
        return hp["rank"] is not None and p.dim() == 2

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        entries = [self.init_param(p, hp, self.is_projected_param(p, hp)) for p in params]
        keys = entries[0].keys() if entries else ()
        return {k: [e[k] for e in entries] for k in keys}

    def init_param(self, p: Tensor, hp: Mapping[str, Any], projected: bool) -> dict[str, Tensor]:
        shape = p.shape
        if projected:
            side = pj.projected_side(shape, hp["proj_type"])
            r = pj.effective_rank(shape, hp["rank"])
            shape = pj.lowrank_shape(p.shape, side, r)
            basis = p.new_zeros(pj.basis_rows(p.shape, side), r)
        else:
            basis = p.new_zeros(0)
        return {
            "exp_avg": p.new_zeros(shape),
            "exp_avg_sq": p.new_zeros(shape),
            **self.init_basis(basis, hp),
            "proj_step": torch.zeros((), dtype=torch.int64),
        }

    def init_basis(self, basis: Tensor, hp: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"proj": basis}

    def is_projected(self, state: State, i: int) -> bool:
        return state["proj"][i].numel() > 0

    def read_basis(
        self, state: State, i: int, like: Tensor, shape: tuple[int, int], hp: Mapping[str, Any]
    ) -> Tensor:
        """The ``shape`` (``d x r``) basis in ``like``'s dtype."""
        return state["proj"][i]

    def write_basis(self, state: State, i: int, basis: Tensor, hp: Mapping[str, Any]) -> Tensor:
        """Store a freshly computed basis; return the basis the update will really use."""
        state["proj"][i].copy_(basis)
        return state["proj"][i]

    def refresh_due(self, state: State, i: int, step: int, hp: Mapping[str, Any]) -> bool:
        # the official code refreshes at 0-based iterations 0, T, 2T, ... (steps 1, T+1, ...)
        return int(state["proj_step"][i]) == 0 or (step - 1) % hp["update_proj_gap"] == 0

    def on_refresh(self, state: State, i: int, basis: Tensor, hp: Mapping[str, Any]) -> None:
        """Hook called with the new (unquantized) basis before it is stored."""

    # -- the step ---------------------------------------------------------------------------
    def side_of(self, state: State, i: int, p: Tensor, hp: Mapping[str, Any]) -> str:
        side = pj.projected_side(p.shape, hp["proj_type"])
        r = state["exp_avg"][i].shape[0 if side == "left" else 1]
        if state["exp_avg"][i].shape != pj.lowrank_shape(p.shape, side, r):
            raise ValueError(
                f"Invalid proj_type: {hp['proj_type']!r}; the state of a {tuple(p.shape)} "
                "parameter was created for another projection side (rank and proj_type cannot "
                "change once a parameter has state)"
            )
        return side

    def current_basis(
        self, g: Tensor, state: State, i: int, step: int, side: str, hp: Mapping[str, Any]
    ) -> Tensor:
        rank = state["exp_avg"][i].shape[0 if side == "left" else 1]
        shape = (pj.basis_rows(g.shape, side), rank)
        if not self.refresh_due(state, i, step, hp):
            return self.read_basis(state, i, g, shape, hp)
        had_basis = int(state["proj_step"][i]) > 0
        old = self.read_basis(state, i, g, shape, hp).clone() if had_basis else None
        fresh = pj.svd_basis(g, side, rank)
        self.on_refresh(state, i, fresh, hp)
        used = self.write_basis(state, i, fresh, hp)
        state["proj_step"][i].fill_(step)
        if old is not None and hp["reproject_moments"]:
            pj.reproject_moments(state["exp_avg"][i], state["exp_avg_sq"][i], old, used, side)
        return used

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        inputs = list(updates)
        proj: dict[int, tuple[Tensor, str]] = {}
        for i, p in enumerate(params):
            if self.is_projected(state, i):
                side = self.side_of(state, i, p, hp)
                basis = self.current_basis(updates[i], state, i, int(steps[i]), side, hp)
                proj[i] = (basis, side)
                inputs[i] = pj.project(updates[i], basis, side)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, inputs, b1, b2)
        denom = adam_denominator(exp_avg_sq, b2, steps, hp["eps"])
        out = list(torch._foreach_div(exp_avg, denom))
        torch._foreach_div_(out, bias_corrections(b1, steps))
        for i, (basis, side) in proj.items():
            out[i] = self.finish(out[i], updates[i], inputs[i], basis, side, state, i, hp)
        return out

    def finish(
        self,
        direction: Tensor,
        grad: Tensor,
        low_grad: Tensor,
        basis: Tensor,
        side: str,
        state: State,
        i: int,
        hp: Mapping[str, Any],
    ) -> Tensor:
        """The full-size update of a projected matrix from its low-rank Adam direction."""
        del grad, low_grad, state, i
        return pj.project_back(direction, basis, side).mul_(hp["scale"])


def scale_by_galore(
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    rank: int | None = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj_type: str = "std",
    reproject_moments: bool = True,
) -> ScaleByGaLore:
    """GaLore's projected Adam direction (no learning rate, no decay) as a transform."""
    return ScaleByGaLore(
        betas=betas, eps=eps, rank=rank, update_proj_gap=update_proj_gap, scale=scale,
        proj_type=proj_type, reproject_moments=reproject_moments,
    )  # fmt: skip


class LowRankAdamOptimizer(GradkitOptimizer):
    """The constructor GaLore, Q-GaLore and Fira share: ``[scaling, decay, lr]``.

    ``scaling`` is the method's :class:`ScaleByGaLore` (or subclass); its hyperparameters become
    the param groups' defaults next to ``lr`` and ``weight_decay``, so each can be overridden per
    group and changed between steps.
    """

    def __init__(
        self,
        params: Params,
        scaling: ScaleByGaLore,
        *,
        lr: float,
        weight_decay: float,
        maximize: bool,
        transforms: Sequence[Any] | None,
        nonfinite: str,
        state_dtype: str,
    ) -> None:
        core = [scaling, add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype, lr=lr, weight_decay=weight_decay, **scaling.defaults,
        )  # fmt: skip


_COMMON_DOC = r"""
    Parameters are projected when their group's ``rank`` is not ``None`` and they are 2-D; all
    other parameters get plain Adam (same ``betas``, ``eps``, decoupled ``weight_decay``). Give
    embeddings, norms and the output layer ``rank=None`` in their own param group, as the paper
    does. ``rank`` larger than ``min(m, n)`` is clipped to it. ``rank`` and ``proj_type`` are
    read when a parameter's state is created; ``lr``, ``betas``, ``eps``, ``weight_decay``,
    ``scale``, ``update_proj_gap`` and ``reproject_moments`` may change at any step.

    ``state_dtype="bf16" | "q8"`` stores the moments compressed (:mod:`gradkit.memory.storage`;
    ``"q8"`` is the official ``GaLoreAdamW8bit``'s 8-bit Adam); the basis stays exact.

    Checkpoints: the moments, the basis and the step of its last refresh are state tensors, so
    ``state_dict()`` / ``load_state_dict()`` resume bit-exactly, even across a refresh, and
    ``torch.load(weights_only=True)`` works (the official code keeps a Python projector object in
    the state and cannot resume one).

    Differences from the official code and what we chose:

    * ``eps`` is added to the bias-corrected :math:`\sqrt{\hat v}` (torch's Adam); the official
      code (a copy of transformers' AdamW) adds it to :math:`\sqrt{v}` and folds the bias
      correction into the step size. Same update up to the size of ``eps``.
    * Weight decay multiplies :math:`\theta_{t-1}` (torch's AdamW order); the official code
      decays the parameter after the projected step, a difference of order
      :math:`\eta^2\lambda`.
    * Singular vectors get canonical signs (largest-magnitude entry positive); the official code
      keeps LAPACK's arbitrary signs, which flip the meaning of moments kept across a refresh.
    * The projection side of the back-projection is taken from the parameter's shape, not
      re-guessed from the projected matrix's shape (the official ``"reverse_std"`` picks the
      wrong side when the projected matrix is square; ms-swift PR #10146).
    * ``reproject_moments=True`` (default) carries the moments into the new basis at each refresh
      (:func:`gradkit.memory.projection.reproject_moments`); the official code keeps them in the
      old coordinates and reinterprets them in the new basis (GaLore issue #54). We default to
      re-projecting because after a refresh the old coordinates refer to different directions;
      ``reproject_moments=False`` reproduces the official behaviour (and the paper's runs).
    * The SVD runs in float32 for bf16/fp16 inputs (as the official code) and in float64 for
      float64 parameters (the official code always casts to float32).
    * Tensors with more than 2 dimensions are not projected (the official Tucker projector
      ``GaLoreProjectorTensor`` is not implemented).

    With full rank and ``T = 1`` GaLore is *not* Adam in general: Adam is not invariant under the
    rotation into the singular basis. It equals Adam when the singular bases are signed
    permutations of the coordinate axes (e.g. diagonal gradients) and the moments are
    re-projected, which the tests check.
"""


@register(
    paper="GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
    year=2024,
    url="https://arxiv.org/abs/2403.03507",
    state_floats=pj.galore_state_floats(TYPICAL_SHAPE, TYPICAL_RANK),
)
class GaLore(LowRankAdamOptimizer):
    __doc__ = (
        r"""GaLore (Zhao et al., ICML 2024): Adam on a rank-``r`` projection of the gradient.

    For a projected ``m x n`` matrix (left side shown, used when ``m < n``; the right side
    :math:`R_t = G_t B_t` is used when ``m >= n``), every ``T = update_proj_gap`` steps

    .. math::
        B_t = U_{[:, :r]}\ \text{of}\ \operatorname{svd}(G_t) \quad(t \equiv 1 \bmod T),\qquad
        R_t = B_t^\top G_t,

    then Adam on :math:`R_t` and back-projection scaled by :math:`\alpha` = ``scale``:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) R_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) R_t^2,\quad
        N_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},

    .. math::
        \theta_t = \theta_{t-1} - \eta\,(\alpha\, B_t N_t + \lambda\,\theta_{t-1}).

    Defaults (official code and the paper's LLaMA pre-training scripts): ``lr=1e-3`` (the scripts
    use 0.01 for 60M-350M models), ``rank=128``, ``update_proj_gap=200``, ``scale=0.25``,
    ``proj_type="std"``, ``betas=(0.9, 0.999)``, ``eps=1e-6``, ``weight_decay=0``;
    ``reproject_moments=True`` (see below).

    ``state_floats`` in the registry is the fp32 state per parameter of a 768 x 3072 matrix at
    rank 128 (two 128 x 3072 moments + a 768 x 128 basis: 0.375 floats, 1.5 bytes per
    parameter, against AdamW's 8); it depends on shape and rank
    (:func:`gradkit.memory.projection.galore_state_floats`).
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
        scaling = scale_by_galore(
            betas, eps, rank, update_proj_gap, scale, proj_type, reproject_moments
        )
        super().__init__(
            params, scaling, lr=lr, weight_decay=weight_decay, maximize=maximize,
            transforms=transforms, nonfinite=nonfinite, state_dtype=state_dtype,
        )  # fmt: skip


# -- Q-GaLore ---------------------------------------------------------------------------------
class ScaleByQGaLore(ScaleByGaLore):
    """GaLore with an INT4 basis and Q-GaLore's lazy, layer-adaptive refresh interval."""

    name = "qgalore"
    exact_state = frozenset({"proj_scales", "proj_zeros", "last_vector", "cos_queue"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        if hp["proj_type"] != "std":  # the official projector asserts the same
            raise ValueError(f"Invalid proj_type: {hp['proj_type']!r} (Q-GaLore supports 'std')")
        check_positive_int(hp, "proj_group_size")
        check_unit_interval(hp, "cos_threshold", closed_right=True)
        gamma = as_number("gamma_proj", hp["gamma_proj"])
        if not (gamma >= 1 and math.isfinite(gamma)):
            raise ValueError(f"Invalid gamma_proj: {hp['gamma_proj']!r} (must be finite and >= 1)")
        check_positive_int(hp, "queue_size")

    def init_basis(self, basis: Tensor, hp: Mapping[str, Any]) -> dict[str, Tensor]:
        n = basis.numel()
        groups = pj.int4_groups(n, hp["proj_group_size"]) if n else 0
        return {
            "proj_codes": torch.zeros(pj.int4_code_bytes(n), dtype=torch.uint8,
                                      device=basis.device),
            "proj_scales": torch.zeros(groups, dtype=torch.float32, device=basis.device),
            "proj_zeros": torch.zeros(groups, dtype=torch.float32, device=basis.device),
            "last_vector": torch.zeros(basis.shape[0] if n else 0, dtype=torch.float32,
                                       device=basis.device),
            "cos_queue": torch.zeros(hp["queue_size"] if n else 0, dtype=torch.float32),
            "cos_count": torch.zeros((), dtype=torch.int64),
            "gap": torch.tensor(hp["update_proj_gap"], dtype=torch.int64),
        }  # fmt: skip

    def is_projected(self, state: State, i: int) -> bool:
        return state["proj_codes"][i].numel() > 0

    def read_basis(
        self, state: State, i: int, like: Tensor, shape: tuple[int, int], hp: Mapping[str, Any]
    ) -> Tensor:
        codes, scales, group = (
            state["proj_codes"][i],
            state["proj_scales"][i],
            hp["proj_group_size"],
        )
        if scales.numel() != pj.int4_groups(shape[0] * shape[1], group):
            raise ValueError(
                f"Invalid proj_group_size: {group!r} (cannot change once a parameter has state)"
            )
        return pj.dequantize_int4(codes, scales, state["proj_zeros"][i], shape, group, like.dtype)

    def write_basis(self, state: State, i: int, basis: Tensor, hp: Mapping[str, Any]) -> Tensor:
        codes, scales, zeros = pj.quantize_int4(basis, hp["proj_group_size"])
        state["proj_codes"][i].copy_(codes)
        state["proj_scales"][i].copy_(scales)
        state["proj_zeros"][i].copy_(zeros)
        return self.read_basis(state, i, basis, tuple(basis.shape), hp)

    def refresh_due(self, state: State, i: int, step: int, hp: Mapping[str, Any]) -> bool:
        # the official rule: refresh when the 0-based iteration is a multiple of the current gap
        return int(state["proj_step"][i]) == 0 or (step - 1) % int(state["gap"][i]) == 0

    def on_refresh(self, state: State, i: int, basis: Tensor, hp: Mapping[str, Any]) -> None:
        first = basis[:, 0].float()
        if int(state["proj_step"][i]) > 0:
            previous = state["last_vector"][i]
            cos = torch.nn.functional.cosine_similarity(previous, first, dim=0).abs()
            queue, count = state["cos_queue"][i], state["cos_count"][i]
            queue.copy_(torch.roll(queue, -1))
            queue[-1] = cos
            count.clamp_(max=queue.numel() - 1).add_(1)
            if int(count) == queue.numel() and float(queue.mean()) >= hp["cos_threshold"]:
                state["gap"][i].fill_(int(int(state["gap"][i]) * hp["gamma_proj"]))
        state["last_vector"][i].copy_(first)


@register(
    paper="Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive Low-Rank Gradients",
    year=2024,
    url="https://arxiv.org/abs/2407.08296",
    state_floats=pj.qgalore_state_bytes(TYPICAL_SHAPE, TYPICAL_RANK) / 4 / math.prod(TYPICAL_SHAPE),
)
class QGaLore(LowRankAdamOptimizer):
    __doc__ = (
        r"""Q-GaLore (Zhang et al., 2024): GaLore with an INT4 basis and a lazy, per-layer gap.

    The update is :class:`GaLore`'s with the basis stored in 4 bits: at each refresh the SVD
    basis :math:`B` is quantized group-wise (``proj_group_size`` values per group,
    :func:`gradkit.memory.projection.quantize_int4`) and the dequantized :math:`\hat B` is used
    for projection and back-projection until the next refresh:

    .. math::
        R_t = \hat B^\top G_t,\qquad
        \theta_t = \theta_{t-1} - \eta\,(\alpha\,\hat B N_t + \lambda\,\theta_{t-1}).

    Layer-adaptive gap (official rule): at every refresh after the first, the cosine similarity
    between the new and the previous first singular vector enters a queue of the last
    ``queue_size`` values; when the queue is full and its mean is >= ``cos_threshold``, this
    matrix's gap becomes ``int(gap * gamma_proj)``. A refresh happens when the 0-based
    iteration :math:`t-1` is a multiple of the current gap (state ``qgalore.gap``). The queue is
    not cleared after a growth, so a stable layer keeps doubling its gap at each refresh.
    ``update_proj_gap`` is the *initial* gap, copied into each matrix's state when it is created.

    Defaults (official code and LLaMA scripts): ``lr=1e-3``, ``rank=128``,
    ``update_proj_gap=200``, ``scale=0.25``, ``proj_group_size=256``, ``cos_threshold=0.4``,
    ``gamma_proj=2``, ``queue_size=5``, ``betas=(0.9, 0.999)``, ``eps=1e-6``,
    ``weight_decay=0``, ``reproject_moments=True``.

    Out of scope: Q-GaLore's INT8 weights with stochastic rounding (a parameter-storage scheme,
    not optimizer state). Its 8-bit Adam moments are gradkit's storage policy here:
    ``state_dtype="q8"`` (the default ``"fp32"`` keeps them in fp32).

    Differences from the official code, besides those listed for :class:`GaLore`:
    the zero point is not clamped to [0, 15] (so every group, even one of a single sign, is
    within half a step of its value); two codes are packed per byte (the official code stores
    one 4-bit code per uint8 byte); groups need not divide the basis size (the last group is
    padded; the official code asserts divisibility); the similarity is the *absolute* cosine
    of sign-canonical singular vectors (a singular vector's sign is arbitrary; the official code
    compares LAPACK's raw signs, so an unchanged direction can score -1).

    ``state_floats`` in the registry: fp32 moments + INT4 basis + per-group scale and zero +
    previous singular vector for a 768 x 3072 matrix at rank 128, per parameter.
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
        proj_group_size: int = 256,
        cos_threshold: float = 0.4,
        gamma_proj: float = 2,
        queue_size: int = 5,
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
        scaling = ScaleByQGaLore(
            betas=betas, eps=eps, rank=rank, update_proj_gap=update_proj_gap, scale=scale,
            proj_type="std", reproject_moments=reproject_moments,
            proj_group_size=proj_group_size, cos_threshold=cos_threshold,
            gamma_proj=gamma_proj, queue_size=queue_size,
        )  # fmt: skip
        super().__init__(
            params, scaling, lr=lr, weight_decay=weight_decay, maximize=maximize,
            transforms=transforms, nonfinite=nonfinite, state_dtype=state_dtype,
        )  # fmt: skip
