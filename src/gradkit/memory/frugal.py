"""FRUGAL: Adam on a state-full subspace, state-free signSGD on the rest of the gradient.

Zmushko, Beznosikov, Takáč, Horváth, "FRUGAL: Memory-Efficient Optimization by Reducing State
Overhead for Scalable Training", ICML 2025, arXiv:2411.07837. The authors' repository
(github.com/fzmushko/FRUGAL) was not reachable; we read its original "Init" commits (c7ebe4c) in
the fork https://github.com/hungquangbui02022003/FRUGAL (``frugal/proj_optimizer_templates.py``,
``galore_projector.py``, ``adamw.py``, ``scripts/benchmark_c4``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State
from gradkit.core.validation import (
    check_betas,
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from gradkit.memory import projection as pj
from gradkit.memory.galore import check_positive_int
from gradkit.optim._base import GradkitOptimizer, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr

FRUGAL_PROJ_TYPES = ("block", "svd", "random")
BLOCK_ORDERS = ("descending", "ascending", "random")
INACTIVE_RULES = ("sign_sgd", "sgd", "none")
PLAIN, MATRIX, BLOCK = 0, 1, 2  # state "mode": how a parameter is treated


def subspace_rank(shape: Sequence[int], density: float) -> int:
    """The official rank for a density: ``round(min(m, n) * density)``."""
    return round(min(shape) * density)


def active_blocks(count: int, density: float, order: str, switch: int, seed: int) -> list[int]:
    """Indices of the state-full tensors among ``count`` for the ``switch``-th subspace (0-based).

    ``round(count * density)`` tensors: consecutive ones walking up (``"ascending"``) or down
    from the last (``"descending"``, the authors' pre-training scripts), or a random subset
    (``"random"``, drawn from ``seed`` and ``switch`` so a resumed run draws the same).
    """
    active = round(count * density)
    if order == "random":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + switch)
        return sorted(torch.randperm(count, generator=gen)[:active].tolist())
    if order == "ascending":
        start = switch * active
        return sorted({(start + k) % count for k in range(active)})
    start = count - 1 - switch * active
    return sorted({(start - k) % count for k in range(active)})


class ScaleByFrugal(GroupTransform):
    name = "frugal"
    # the block projector chooses the state-full tensors among the whole group at once
    per_parameter = False
    nonnegative_state = frozenset({"exp_avg_sq"})
    exact_state = frozenset({"proj"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        if hp["density"] is not None:
            check_unit_interval(hp, "density", closed_right=True)
        check_positive_int(hp, "update_gap")
        check_choice(hp, "proj_type", FRUGAL_PROJ_TYPES)
        check_bool(hp, "reset_statistics")
        check_nonnegative(hp, "inactive_lr_scale")
        check_choice(hp, "inactive_update_rule", INACTIVE_RULES)
        check_choice(hp, "block_order", BLOCK_ORDERS)
        seed = hp["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Invalid seed: {seed!r} (must be a non-negative integer)")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        entries = [self.init_param(p, hp) for p in params]
        keys = entries[0].keys() if entries else ()
        return {k: [e[k] for e in entries] for k in keys}

    def init_param(self, p: Tensor, hp: Mapping[str, Any]) -> dict[str, Tensor]:
        mode = PLAIN
        if hp["density"] is not None and p.dim() == 2:
            mode = BLOCK if hp["proj_type"] == "block" else MATRIX
        moments_shape, basis = p.shape, p.new_zeros(0)
        if mode == MATRIX:
            side = pj.projected_side(p.shape, "std")
            r = subspace_rank(p.shape, hp["density"])
            moments_shape = pj.lowrank_shape(p.shape, side, r)
            basis = p.new_zeros(pj.basis_rows(p.shape, side), r)
        elif mode == BLOCK:
            moments_shape = (0,)  # allocated when the tensor becomes state-full
        return {
            "exp_avg": p.new_zeros(moments_shape),
            "exp_avg_sq": p.new_zeros(moments_shape),
            "proj": basis,
            "proj_step": torch.zeros((), dtype=torch.int64),
            "mode": torch.tensor(mode, dtype=torch.int64),
            "active": torch.tensor(int(mode != BLOCK), dtype=torch.int64),
        }

    # -- subspace switches --------------------------------------------------------------------
    @staticmethod
    def _due(state: State, i: int, step: int, gap: int) -> bool:
        return int(state["proj_step"][i]) == 0 or (step - 1) % gap == 0

    def _switch_matrix(self, g: Tensor, state: State, i: int, step: int, hp) -> None:
        basis = state["proj"][i]
        side = pj.projected_side(g.shape, "std")
        if hp["proj_type"] == "svd":
            basis.copy_(pj.svd_basis(g, side, basis.shape[1]))
        else:
            gen = torch.Generator().manual_seed(hp["seed"] * 1_000_003 + step * 8191 + i)
            rows, rank = basis.shape
            basis.copy_(pj.random_basis(rows, rank, gen, dtype=basis.dtype, device=basis.device))
        if hp["reset_statistics"]:
            state["exp_avg"][i].zero_()
            state["exp_avg_sq"][i].zero_()
        state["proj_step"][i].fill_(step)

    def _switch_blocks(self, blocks: list[int], params, state: State, step: int, hp) -> None:
        switch = (step - 1) // hp["update_gap"]
        chosen = set(active_blocks(len(blocks), hp["density"], hp["block_order"], switch,
                                   hp["seed"]))  # fmt: skip
        for k, i in enumerate(blocks):
            on = k in chosen
            shape = params[i].shape if on else (0,)
            for key in ("exp_avg", "exp_avg_sq"):  # set_ keeps the state tensor object
                state[key][i].set_(params[i].new_zeros(shape))
            state["active"][i].fill_(int(on))
            state["proj_step"][i].fill_(step)

    # -- the step -----------------------------------------------------------------------------
    def update_group(self, updates, state, params, hp, steps, grads):
        modes = [int(m) for m in state["mode"]]
        gap = hp["update_gap"]
        blocks = [i for i, m in enumerate(modes) if m == BLOCK]
        if blocks and self._due(state, blocks[0], int(steps[blocks[0]]), gap):
            self._switch_blocks(blocks, params, state, int(steps[blocks[0]]), hp)
        inputs: dict[int, Tensor] = {}
        for i, mode in enumerate(modes):
            if mode == MATRIX:
                if self._due(state, i, int(steps[i]), gap):
                    self._switch_matrix(updates[i], state, i, int(steps[i]), hp)
                inputs[i] = pj.project(updates[i], state["proj"][i], self._side(params[i]))
            elif mode == PLAIN or int(state["active"][i]):
                inputs[i] = updates[i]
        idx = list(inputs)
        out = self._adam([state["exp_avg"][i] for i in idx],
                         [state["exp_avg_sq"][i] for i in idx],
                         [inputs[i] for i in idx],
                         [self._adam_step(state, i, int(steps[i]), modes[i], hp) for i in idx],
                         hp)  # fmt: skip
        directions = dict(zip(idx, out, strict=True))
        result = []
        for i, g in enumerate(updates):
            if modes[i] == PLAIN:
                result.append(directions[i])
            elif modes[i] == MATRIX:
                basis, side = state["proj"][i], self._side(params[i])
                full = pj.project_back(directions[i], basis, side)
                residual = pj.out_of_subspace(g, inputs[i], basis, side)
                result.append(full.add_(self._state_free(residual, hp, owned=True)))
            elif i in directions:
                result.append(directions[i])
            else:
                result.append(self._state_free(g, hp))
        return result

    @staticmethod
    def _side(p: Tensor) -> str:
        return pj.projected_side(p.shape, "std")

    @staticmethod
    def _adam_step(state: State, i: int, step: int, mode: int, hp) -> int:
        """Bias-correction step: counted from the last switch when the moments were reset."""
        if mode == BLOCK or (mode == MATRIX and hp["reset_statistics"]):
            return step - int(state["proj_step"][i]) + 1
        return step

    @staticmethod
    def _adam(exp_avg, exp_avg_sq, inputs, steps, hp) -> list[Tensor]:
        if not inputs:
            return []
        b1, b2 = hp["betas"]
        update_moments(exp_avg, exp_avg_sq, inputs, b1, b2)
        denom = adam_denominator(exp_avg_sq, b2, steps, hp["eps"])
        out = list(torch._foreach_div(exp_avg, denom))
        torch._foreach_div_(out, bias_corrections(b1, steps))
        return out

    @staticmethod
    def _state_free(residual: Tensor, hp, *, owned: bool = False) -> Tensor:
        """The state-free update of ``residual`` (overwritten when ``owned``)."""
        rule, scale = hp["inactive_update_rule"], hp["inactive_lr_scale"]
        if rule == "sign_sgd":
            return (residual.sign_() if owned else torch.sign(residual)).mul_(scale)
        if rule == "sgd":
            return residual.mul_(scale) if owned else residual * scale
        return torch.zeros_like(residual)


@register(
    paper="FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
    year=2025,
    url="https://arxiv.org/abs/2411.07837",
    state_floats=2 * 0.25,
)
class FRUGAL(GradkitOptimizer):
    __doc__ = (
        r"""FRUGAL (Zmushko et al., ICML 2025): state-full Adam subspace + state-free signSGD.

    The gradient of each chosen matrix is split into a state-full part, updated by Adam with
    moments only for that part, and the rest, updated by signSGD with no state:

    .. math::
        \theta_t = \theta_{t-1} - \eta\Big(P^{-1}\big(\operatorname{Adam}(P G_t)\big)
        + s\,\operatorname{sign}\big(G_t - P^{-1} P G_t\big) + \lambda\,\theta_{t-1}\Big),

    with :math:`s` = ``inactive_lr_scale`` (the official code's state-free learning rate is
    ``lr * inactive_lr_scale``, default scale 1.0 for pre-training, 0.1 in their fine-tuning).
    Every ``update_gap`` steps the subspace :math:`P` is chosen anew and, with
    ``reset_statistics=True``, the moments are zeroed and Adam's bias correction restarts (the
    official code resets the step count with the moments). Projectors (``proj_type``):

    * ``"block"`` (default, the paper's main variant): whole tensors; ``round(k * density)`` of
      the ``k`` 2-D tensors of the param group are state-full (plain Adam), the others get
      signSGD of their whole gradient. Moments exist only for the active tensors (they are
      re-allocated at each switch, so memory really is ~``density`` of Adam's); they always start
      fresh at a switch, whatever ``reset_statistics`` says (as in the official code).
      ``block_order``: ``"descending"`` (default, the authors' scripts), ``"ascending"``,
      ``"random"`` (from ``seed``).
    * ``"svd"``: per matrix, the top ``round(min(m, n) * density)`` singular vectors of the
      current gradient (GaLore's side rule); ``"random"``: a random semi-orthogonal basis
      (from ``seed``). :math:`P G = B^\top G` or :math:`G B`.

    Parameters whose group has ``density=None``, and all non-2-D parameters, get plain Adam
    (the official code keeps embeddings, norms and the output layer in such a group).

    Defaults (official code and LLaMA scripts): ``lr=1e-3``, ``density=0.25``,
    ``update_gap=200``, ``proj_type="block"``, ``block_order="descending"``,
    ``reset_statistics=True``, ``inactive_update_rule="sign_sgd"``, ``inactive_lr_scale=1.0``,
    ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0`` (the scripts' value; the class
    default of the official AdamW is 0.01), ``seed=0``.

    With ``density=1.0`` and the block projector every tensor is state-full: FRUGAL is Adam(W)
    (until the first switch resets the moments); the tests check this. With ``"svd"`` or
    ``"random"`` at density 1.0 it is Adam in a rotated basis, which is not Adam.

    Differences from the official code: subspaces are drawn deterministically from ``seed`` and
    the step (the official code uses torch's global RNG), so a resumed run continues
    bit-exactly; singular vectors get canonical signs; the official ``proj_params_lr_scale`` is
    the group's ``lr`` here; the coordinate projector (``CoordOptimizer``), the ``"mirror"``
    block order and the Lion/SGD-M state-full rules are not implemented. Weight decay is applied
    first, as in the official code and torch's AdamW.

    ``state_floats`` in the registry: ``2 * density`` = 0.5 floats per parameter of the
    projected matrices on average (block projector); the SVD projector adds its basis
    (768 x 3072 at density 0.25: 0.5625).
    """
        + """
    Checkpoints: moments, basis, switch step, mode and active flag are state tensors, so
    ``state_dict()`` resumes bit-exactly (also with ``torch.load(weights_only=True)``).
    ``state_dtype="bf16" | "q8"`` stores the moments compressed (:mod:`gradkit.memory.storage`);
    the basis stays exact.
    """
    )

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        density: float | None = 0.25,
        update_gap: int = 200,
        proj_type: str = "block",
        block_order: str = "descending",
        reset_statistics: bool = True,
        inactive_update_rule: str = "sign_sgd",
        inactive_lr_scale: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
        *,
        maximize: bool = False,
        transforms: Sequence[Any] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        hp = dict(
            density=density, update_gap=update_gap, proj_type=proj_type,
            block_order=block_order, reset_statistics=reset_statistics,
            inactive_update_rule=inactive_update_rule, inactive_lr_scale=inactive_lr_scale,
            betas=betas, eps=eps, seed=seed,
        )  # fmt: skip
        core = [ScaleByFrugal(**hp), add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, weight_decay=weight_decay, **hp,
        )  # fmt: skip


def frugal_state_floats(shape: Sequence[int], density: float, proj_type: str) -> float:
    """fp32 floats per parameter FRUGAL keeps on average for one ``m x n`` matrix."""
    if proj_type == "block":
        return 2 * density
    side = pj.projected_side(shape, "std")
    r = subspace_rank(shape, density)
    low = math.prod(pj.lowrank_shape(shape, side, r))
    return (2 * low + (pj.basis_rows(shape, side) * r if proj_type != "block" else 0)) / (
        math.prod(shape)
    )
