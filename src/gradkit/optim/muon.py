"""Muon: momentum orthogonalized by Newton-Schulz, with an AdamW for the non-matrix parameters.

Keller Jordan, Yuchen Jin, Vlado Boza, Jiacheng You, Franz Cesista, Laker Newhouse & Jeremy
Bernstein, "Muon: An optimizer for hidden layers in neural networks" (blog post, 2024),
https://kellerjordan.github.io/posts/muon/, code https://github.com/KellerJordan/Muon
(``muon.py``: ``zeropower_via_newtonschulz5``, ``muon_update``, ``MuonWithAuxAdam``).
Jingyuan Liu et al. (Moonshot AI), "Muon is Scalable for LLM Training", arXiv:2502.16982 (2025),
code https://github.com/MoonshotAI/Moonlight (the ``match_rms_adamw`` learning-rate scaling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_betas, check_positive, check_unit_interval
from gradkit.optim._base import GradkitOptimizer, Params, register
from gradkit.optim.adam import adam_denominator, bias_corrections, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.orthogonalize import (  # noqa: F401 (batched NS: re-exported)
    MAX_BATCH_ELEMENTS,
    NS_DTYPES,
    ORIGINAL,
    as_matrix,
    batched_newton_schulz,
    check_ns_hyperparameters,
    cpu_has_bf16_gemm,
    ns_compute_dtype,
    resolve_coefficients,
)

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
MUON_NS_DTYPES = ("auto", *NS_DTYPES)


def uses_matrix_update(param: Tensor, hp: Mapping[str, Any], flag: str) -> bool:
    """Whether ``param`` takes the matrix (orthogonalized) update rather than the AdamW fallback.

    The group key ``flag`` (``"use_muon"``, ``"use_auon"``) decides: ``True`` / ``False``, or
    ``None`` (default) for "every parameter with ``ndim >= 2``" (conv weights are flattened)."""
    choice = hp[flag]
    return param.ndim >= 2 if choice is None else bool(choice)


def lr_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """Per-matrix multiplier of the learning rate, for the ``(rows, cols)`` matrix ``shape``
    flattens to: ``sqrt(max(1, rows/cols))`` (``"original"``, Keller Jordan) or
    ``0.2 * sqrt(max(rows, cols))`` (``"match_rms_adamw"``, Moonshot: the update's RMS then
    matches a typical AdamW update's, 0.2-0.4, so AdamW's lr and weight decay carry over)."""
    rows, cols = shape[0], math.prod(shape[1:])
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def _pick(items: Sequence[Any], index: list[int]) -> list[Any]:
    return [items[i] for i in index]


class MatrixOrAdamW(GroupTransform):
    """Base of the orthogonalized family: one update rule for matrices, AdamW for the rest.

    Subclasses set ``flag`` (the group key routing parameters) and implement
    ``matrix_update(updates, buffers, hp)`` over the matrix parameters. State:
    ``momentum_buffer`` for matrix parameters, ``exp_avg`` / ``exp_avg_sq`` (Adam's moments) for
    the others; each parameter keeps an empty tensor under the keys of the other path.
    """

    flag = "use_muon"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "momentum")
        if not isinstance(hp["nesterov"], bool):
            raise ValueError(f"Invalid nesterov: {hp['nesterov']!r} (expected True or False)")
        if hp["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(
                f"Invalid adjust_lr_fn: {hp['adjust_lr_fn']!r} "
                f"(choose one of {', '.join(map(repr, ADJUST_LR_FNS))})"
            )
        try:
            check_betas(hp, 2, "adam_betas")
        except ValueError as err:
            raise ValueError(f"Invalid adam_betas: {hp['adam_betas']!r} ({err})") from None
        check_positive(hp, "adam_eps")
        choice = hp[self.flag]
        if choice is not None and not isinstance(choice, bool):
            raise ValueError(f"Invalid {self.flag}: {choice!r} (expected None, True or False)")
        small = [tuple(p.shape) for p in hp.get("params", ()) if p.ndim < 2]
        if choice is True and small:
            raise ValueError(
                f"Invalid {self.flag}: True for a group holding parameters of shapes {small}; "
                "the matrix update needs ndim >= 2 (leave them to the AdamW fallback)"
            )

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        matrix = [uses_matrix_update(p, hp, self.flag) for p in params]

        def full_if(p: Tensor, wanted: bool) -> Tensor:
            return torch.zeros_like(p) if wanted else p.new_empty(0)

        return {
            "momentum_buffer": [full_if(p, m) for p, m in zip(params, matrix, strict=True)],
            "exp_avg": [full_if(p, not m) for p, m in zip(params, matrix, strict=True)],
            "exp_avg_sq": [full_if(p, not m) for p, m in zip(params, matrix, strict=True)],
        }

    def update_group(self, updates, state, params, hp, steps, grads):
        matrix = [i for i, p in enumerate(params) if uses_matrix_update(p, hp, self.flag)]
        other = [i for i, p in enumerate(params) if not uses_matrix_update(p, hp, self.flag)]
        out: list[Tensor] = list(updates)
        if matrix:
            buffers = _pick(state["momentum_buffer"], matrix)
            if any(b.shape != params[i].shape for b, i in zip(buffers, matrix, strict=True)):
                raise ValueError(
                    f"{self.flag} changed after this optimizer's state was created: some "
                    "parameters have no momentum buffer"
                )
            directions = self.matrix_update(_pick(updates, matrix), buffers, hp)
            for i, d in zip(matrix, directions, strict=True):
                out[i] = d
        if other:
            directions = self._adamw(
                _pick(updates, other),
                _pick(state["exp_avg"], other),
                _pick(state["exp_avg_sq"], other),
                hp,
                _pick(steps, other),
            )
            for i, d in zip(other, directions, strict=True):
                out[i] = d
        return out

    def matrix_update(
        self, updates: list[Tensor], buffers: list[Tensor], hp: Mapping[str, Any]
    ) -> list[Tensor]:
        raise NotImplementedError

    @staticmethod
    def momentum(
        updates: list[Tensor], buffers: list[Tensor], hp: Mapping[str, Any]
    ) -> list[Tensor]:
        r""":math:`B_t = \mu B_{t-1} + (1-\mu) g_t`; returns :math:`(1-\mu) g_t + \mu B_t`
        (Nesterov) or :math:`B_t` — the EMA form of KellerJordan/Muon and torch.optim.Muon."""
        mu = hp["momentum"]
        torch._foreach_lerp_(buffers, updates, 1.0 - mu)
        if hp["nesterov"]:
            return torch._foreach_lerp(updates, buffers, mu)
        return buffers

    def _adamw(self, grads, exp_avg, exp_avg_sq, hp, steps) -> list[Tensor]:
        if any(m.shape != g.shape for m, g in zip(exp_avg, grads, strict=True)):
            raise ValueError(
                f"{self.flag} changed after this optimizer's state was created: some "
                "parameters have no Adam moments"
            )
        b1, b2 = hp["adam_betas"]
        update_moments(exp_avg, exp_avg_sq, grads, b1, b2)
        out = torch._foreach_div(exp_avg, adam_denominator(exp_avg_sq, b2, steps, hp["adam_eps"]))
        torch._foreach_div_(out, bias_corrections(b1, steps))
        return out


class ScaleByMuon(MatrixOrAdamW):
    name = "muon"
    nonnegative_state = frozenset({"exp_avg_sq"})
    flag = "use_muon"

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        check_muon_ns_dtype(hp)
        check_ns_hyperparameters({**hp, "ns_dtype": None})

    def matrix_update(self, updates, buffers, hp):
        directions = self.momentum(updates, buffers, hp)
        orthos = batched_newton_schulz(
            [as_matrix(d) for d in directions],
            hp["ns_steps"],
            hp["ns_coefficients"],
            hp["eps"],
            dtype=hp["ns_dtype"],
        )
        out = []
        for d, ortho in zip(directions, orthos, strict=True):
            ortho = ortho.reshape(d.shape).to(d.dtype)
            ratio = lr_ratio(d.shape, hp["adjust_lr_fn"])
            out.append(ortho if ratio == 1.0 else ortho.mul_(ratio))
        return out


def check_muon_ns_dtype(hp: Mapping[str, Any]) -> None:
    """``ns_dtype`` is one of ``MUON_NS_DTYPES`` (``"auto"`` and the names of ``NS_DTYPES``)."""
    if hp["ns_dtype"] not in MUON_NS_DTYPES:
        raise ValueError(
            f"Invalid ns_dtype: {hp['ns_dtype']!r} "
            f"(choose one of {', '.join(map(repr, MUON_NS_DTYPES))})"
        )


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Any = ORIGINAL,
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    ns_dtype: str | None = "auto",
    use_muon: bool | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.95),
    adam_eps: float = 1e-10,
) -> Transform:
    r"""Muon's direction for matrices, Adam's for the other parameters (no decay, no ``-lr``).

    Matrices: :math:`\mathrm{ratio}\cdot\mathrm{NS}(\text{momentum})`; others: the
    bias-corrected Adam direction. Follow it with ``add_decayed_weights`` and ``scale_by_lr``.
    """
    return ScaleByMuon(
        momentum=momentum, nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps,
        ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, use_muon=use_muon,
        adam_betas=adam_betas, adam_eps=adam_eps,
    )  # fmt: skip


@register(
    paper="Muon: An optimizer for hidden layers in neural networks",
    year=2024,
    url="https://kellerjordan.github.io/posts/muon/",
    state_floats=1,
)
class Muon(GradkitOptimizer):
    r"""Muon (Jordan et al., 2024): momentum, orthogonalized by Newton-Schulz, for matrices.

    For each matrix parameter :math:`W` (``ndim >= 2``; conv and other n-D weights are viewed as
    ``(shape[0], prod(shape[1:]))``, e.g. ``(out, in*kh*kw)``, and reshaped back):

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t,\qquad
        \tilde B_t = \begin{cases}(1-\mu) G_t + \mu B_t & \text{nesterov}\\ B_t\end{cases},\qquad
        O_t = \mathrm{NS}_k(\tilde B_t)

    .. math::
        W_t = (1 - \eta\lambda)\, W_{t-1} - \eta\, r\, O_t

    with :math:`\mathrm{NS}_k` the quintic Newton-Schulz iteration of
    :func:`gradkit.transforms.orthogonalize.newton_schulz` (``ns_steps`` steps, coefficients
    ``ns_coefficients``: a triple, a per-step list, or a preset ``"original"`` /
    ``"polar_express"``; normalised by ``max(||B||_F, eps)``; tall matrices transposed), and
    :math:`r` from ``adjust_lr_fn``: ``None`` / ``"original"`` :math:`\sqrt{\max(1, m/n)}`
    (Keller Jordan) or ``"match_rms_adamw"`` :math:`0.2\sqrt{\max(m, n)}` (Moonshot, Liu et al.
    2025), for an :math:`m\times n` matrix. The decay is decoupled and uses the unadjusted
    :math:`\eta`, as in torch.

    **Non-matrix parameters** (biases, norm gains; embeddings and output heads when you say so)
    get AdamW inside the same optimizer: :math:`W_t = (1-\eta\lambda)W_{t-1} -
    \eta\,\hat m_t/(\sqrt{\hat v_t}+\epsilon_{adam})` with betas ``adam_betas`` and ``adam_eps``.
    Routing is per param group through the group key ``use_muon``: ``None`` (default) sends
    every ``ndim >= 2`` parameter to Muon and the rest to AdamW; ``False`` sends the whole group
    to AdamW (do this for embeddings and the output layer, as Keller Jordan recommends);
    ``True`` insists on Muon (rejected for a group holding 0-/1-D parameters). A group's ``lr``
    and ``weight_decay`` apply to both paths: with ``adjust_lr_fn="match_rms_adamw"`` one
    learning rate suits both (Moonshot's design); otherwise give the AdamW parameters a group
    of their own with their own ``lr``, as ``MuonWithAuxAdam`` does::

        Muon([{"params": hidden_matrices, "lr": 0.02},
              {"params": embeddings_heads_and_vectors, "use_muon": False, "lr": 3e-4}])

    Defaults follow ``torch.optim.Muon`` argument for argument (``lr=1e-3, weight_decay=0.1,
    momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7,
    ns_steps=5, adjust_lr_fn=None``); with ``ns_dtype="bfloat16"`` (torch's precision, see
    below) they match it numerically on 2-D parameters (tested in float32 over several steps on
    small matrices: the Newton-Schulz output is bit-identical, the applied step agrees to
    rounding). Keller Jordan's recommended settings are ``lr=0.02, weight_decay=0``.
    The AdamW defaults ``adam_betas=(0.9, 0.95), adam_eps=1e-10`` are ``MuonWithAuxAdam``'s.

    Deviations and choices:

    * Newton-Schulz precision, ``ns_dtype``: the reference code and torch iterate in bfloat16
      (written for GPUs, where bfloat16 GEMMs are the fast ones; torch forces it). gradkit's
      default ``"auto"`` iterates in bfloat16 on GPUs but in **float32 on CPU** (float64 for
      float64 parameters): on a CPU without bfloat16 GEMM instructions (AVX512-BF16 / AMX) a
      bfloat16 GEMM is ~4.5x slower than a float32 one (768x3072 Gram matrix, 1 thread: 144 vs
      32 ms), and float32 is the more accurate iteration of the same polynomial. ``"bfloat16"``
      gives torch's arithmetic everywhere (bfloat16 operands and iterates, float32 sums, one
      rounding per product; on such CPUs computed by float32 GEMMs of the bfloat16 values, see
      :func:`batched_newton_schulz`); ``"float32"``, ``"float64"`` and ``None`` (the
      parameter's dtype) force a precision.
    * Speed: matrices of one shape are orthogonalised together (``bmm``) with preallocated
      buffers (:func:`batched_newton_schulz`); ``benchmarks/muon_speed.py`` times it against
      ``torch.optim.Muon`` and pytorch-optimizer's ``Muon``.
    * Normalisation ``max(||B||_F, eps)`` (torch) instead of ``||B||_F + eps`` (Keller Jordan);
      identical after bfloat16 rounding unless ``||B||_F < ~1e-5``.
    * torch accepts only 2-D parameters; Keller Jordan flattens conv weights as here. gradkit
      flattens every ``ndim >= 2`` tensor the same way (a ``(3, 2, 2)`` tensor is a ``3 x 4``
      matrix) and scales by the flattened shape.
    * The blog's momentum ``B = mu B + G`` and the EMA form used here differ by the factor
      ``1 - mu`` only, which the Frobenius normalisation removes.

    State: ``muon.momentum_buffer`` (matrices) or ``muon.exp_avg`` / ``muon.exp_avg_sq`` (AdamW
    parameters); the other keys hold empty tensors. One float per parameter for matrices.

    Example:
        >>> import torch
        >>> from gradkit.optim.muon import Muon
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
        >>> opt = Muon(model.parameters(), lr=0.02, adjust_lr_fn="match_rms_adamw")
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> _ = opt.step()
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Any = ORIGINAL,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str | None = "auto",
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
        use_muon: bool | None = None,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        direction = scale_by_muon(
            momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype,
            use_muon, adam_betas, adam_eps,
        )  # fmt: skip
        core = [direction, add_decayed_weights(weight_decay), scale_by_lr(lr)]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, adam_betas=adam_betas,
            adam_eps=adam_eps, use_muon=use_muon,
        )  # fmt: skip
