r"""Newton-Schulz orthogonalization: the shared kernel of Muon, Drop-Muon and Hybrid-AuON.

:func:`newton_schulz` maps a matrix :math:`G = U\Sigma V^\top` to approximately :math:`UV^\top`
(its polar factor) with matrix products only, by applying an odd polynomial
:math:`p(x) = a x + b x^3 + c x^5` to the singular values a few times:

.. math::
    X_0 = \frac{G}{\max(s\,\|G\|_F,\ \epsilon)},\qquad
    A_k = X_k X_k^\top,\quad
    X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2)\, X_k .

Normalising by the Frobenius norm puts every singular value in (0, 1]. Wide layout: a tall
matrix (rows > cols) is transposed first so that :math:`A_k` is the smaller Gram matrix, and
transposed back at the end (Keller Jordan's reference does the same).

Coefficient presets (``NS_PRESETS``):

* ``"original"``: :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` at every step — Keller Jordan,
  "Muon: An optimizer for hidden layers in neural networks" (2024), github.com/KellerJordan/Muon,
  also ``torch.optim.Muon``'s default. Chosen to maximise the slope at 0, so it does not converge
  to 1: after 5 steps the singular values land in roughly [0.7, 1.2].
* ``"polar_express"``: the per-step minimax-optimal quintics of Amsel, Persson, Musco & Gower,
  "The Polar Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
  arXiv:2505.16932 (2025), Algorithm 1, with its half-precision safety factor (all but the last
  polynomial divided by 1.01, 1.01^3, 1.01^5; the Frobenius norm multiplied by 1.01). Steps past
  the table repeat its last polynomial, as there.

Precision: ``dtype`` is the precision the iteration runs in. Muon's reference and
``torch.optim.Muon`` force bfloat16 (fast on GPUs; the quintic is robust to it); gradkit's
default is the same so that :class:`~gradkit.optim.muon.Muon` matches torch numerically, and
``dtype=None`` runs in the input's own precision (the float64 reference tests use that).

The normalisation divides by ``max(||G||_F, eps)`` (``torch.optim.Muon``); Keller Jordan divides
by ``||G||_F + eps``. The two differ by a relative ``eps/||G||_F`` only, which bfloat16 rounds away
unless ``||G||_F`` is below about 1e-5.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, Transform
from gradkit.core.validation import check_positive

Coefficients = tuple[float, float, float]

ORIGINAL: Coefficients = (3.4445, -4.7750, 2.0315)
_POLAR_EXPRESS_RAW: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_SAFETY = 1.01
POLAR_EXPRESS: tuple[Coefficients, ...] = (
    *((a / _SAFETY, b / _SAFETY**3, c / _SAFETY**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]),
    _POLAR_EXPRESS_RAW[-1],
)

# preset name -> (per-step coefficients, factor on the Frobenius norm)
NS_PRESETS: dict[str, tuple[tuple[Coefficients, ...], float]] = {
    "original": ((ORIGINAL,), 1.0),
    "polar_express": (POLAR_EXPRESS, _SAFETY),
}
NS_DTYPES: dict[str | None, torch.dtype | None] = {
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    None: None,
}


def resolve_coefficients(coefficients: Any) -> tuple[tuple[Coefficients, ...], float]:
    """``(per-step coefficient triples, norm factor)`` from a preset name, one triple
    ``(a, b, c)`` used at every step, or a sequence of triples (one per step, the last repeated).

    Raises ``ValueError`` naming ``ns_coefficients`` for anything else.
    """
    if isinstance(coefficients, str):
        if coefficients not in NS_PRESETS:
            raise ValueError(
                f"Invalid ns_coefficients: {coefficients!r} (choose a preset: "
                f"{', '.join(map(repr, NS_PRESETS))}, or give (a, b, c) triples)"
            )
        return NS_PRESETS[coefficients]
    if _is_triple(coefficients):
        return (tuple(float(x) for x in coefficients),), 1.0  # type: ignore[return-value]
    if (
        isinstance(coefficients, (tuple, list))
        and coefficients
        and all(_is_triple(c) for c in coefficients)
    ):
        return tuple(tuple(float(x) for x in c) for c in coefficients), 1.0  # type: ignore[misc]
    raise ValueError(
        f"Invalid ns_coefficients: {coefficients!r} (expected a preset name, a triple (a, b, c) "
        "of finite numbers, or a non-empty sequence of such triples)"
    )


def _is_triple(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in value
        )
    )


def newton_schulz(
    matrix: Tensor,
    steps: int = 5,
    coefficients: Any = ORIGINAL,
    eps: float = 1e-7,
    *,
    dtype: torch.dtype | None = torch.bfloat16,
) -> Tensor:
    """Approximate polar factor :math:`UV^\\top` of a 2-D ``matrix`` (see the module docstring).

    Args:
        matrix: a 2-D tensor; it is not modified.
        steps: number of quintic iterations (>= 1).
        coefficients: a preset name (``"original"``, ``"polar_express"``), one triple
            ``(a, b, c)`` for every step, or one triple per step (the last one repeats).
        eps: floor of the Frobenius norm in the first normalisation.
        dtype: precision of the iteration; ``None`` keeps ``matrix.dtype``.

    Returns:
        A new tensor of ``matrix``'s shape, in ``dtype``.

    Example:
        >>> import torch
        >>> from gradkit.transforms.orthogonalize import newton_schulz
        >>> g = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
        >>> s = torch.linalg.svdvals(newton_schulz(g, dtype=torch.float32))
        >>> bool(((s > 0.6) & (s < 1.3)).all())
        True
    """
    if matrix.ndim != 2:
        raise ValueError(f"newton_schulz takes a 2-D matrix, got shape {tuple(matrix.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid ns_steps: {steps!r} (expected an integer >= 1)")
    schedule, norm_factor = resolve_coefficients(coefficients)
    x = matrix if dtype is None else matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    norm = x.norm()
    if norm_factor != 1.0:
        norm = norm * norm_factor
    x = x / norm.clamp(min=eps)
    for k in range(steps):
        a, b, c = schedule[min(k, len(schedule) - 1)]
        gram = x @ x.T
        # b*A + c*A@A and a*X + B@X as fused addmm calls: torch.optim.Muon's operation order
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


_BF16_GEMM_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# a stack of same-shape matrices holds at most this many elements (more go to another stack):
# batching pays for many small matrices; large ones gain nothing from it but memory
MAX_BATCH_ELEMENTS = 1 << 24


# -- Newton-Schulz, batched -------------------------------------------------------------------
@functools.cache
def cpu_has_bf16_gemm() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX flags in
    ``/proc/cpuinfo``); ``False`` where that cannot be read. Without it, torch's bfloat16 GEMM
    converts to float32 internally and runs about 4.5x slower than a float32 GEMM."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & _BF16_GEMM_FLAGS)


def ns_compute_dtype(ns_dtype: str | torch.dtype | None, matrix: Tensor) -> torch.dtype:
    """The dtype Newton-Schulz iterates in for ``matrix``: ``"auto"`` is float32 on CPU
    (float64 for a float64 matrix) and bfloat16 elsewhere; ``None`` is the matrix's dtype."""
    if isinstance(ns_dtype, str):
        if ns_dtype == "auto":
            if matrix.device.type != "cpu":
                return torch.bfloat16
            return torch.float64 if matrix.dtype == torch.float64 else torch.float32
        ns_dtype = NS_DTYPES[ns_dtype]
    return matrix.dtype if ns_dtype is None else ns_dtype


def batched_newton_schulz(
    matrices: Sequence[Tensor],
    steps: int = 5,
    coefficients: Any = ORIGINAL,
    eps: float = 1e-7,
    *,
    dtype: str | torch.dtype | None = torch.bfloat16,
) -> list[Tensor]:
    """:func:`~gradkit.transforms.orthogonalize.newton_schulz` of every 2-D matrix, fast.

    The same iteration (Frobenius normalisation, wide orientation, ``X <- aX + (bA + cA^2)X``
    with ``A = XX^T``, as fused ``addmm`` calls), with three speed-ups that leave the arithmetic
    alone: matrices of one (wide) shape, device and dtype are stacked and iterated together
    with ``bmm`` / ``baddbmm`` (one call per product instead of one per matrix; stacks of at
    most ``MAX_BATCH_ELEMENTS`` elements); the products write into three preallocated buffers
    (no temporaries); and a bfloat16 iteration on a CPU without bfloat16 GEMMs (:func:`cpu_has_bf16_gemm`) runs each product as a float32 GEMM of
    the bfloat16 values and rounds its result to bfloat16 — the arithmetic of torch's CPU
    bfloat16 GEMM (float32 accumulation, one rounding per product; only the order of the
    float32 sums differs) at float32 speed, about 4x faster here.

    ``dtype`` is a ``torch.dtype``, ``None`` (each matrix's own) or a name of
    ``NS_DTYPES`` or ``"auto"`` (see :func:`ns_compute_dtype`). Returns new tensors of the
    matrices' shapes in the iteration's dtype (views into the stacked result); the inputs are
    not modified. Tested against the per-matrix :func:`newton_schulz` in float64.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid ns_steps: {steps!r} (expected an integer >= 1)")
    schedule, norm_factor = resolve_coefficients(coefficients)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(matrices):
        if m.ndim != 2:
            raise ValueError(f"newton_schulz takes 2-D matrices, got shape {tuple(m.shape)}")
        wide = (min(m.shape), max(m.shape))
        key = (wide, m.device, ns_compute_dtype(dtype, m))
        group = groups.setdefault(key, [[]])
        if group[-1] and (len(group[-1]) + 1) * m.numel() > MAX_BATCH_ELEMENTS:
            group.append([])
        group[-1].append(i)
    out: list[Tensor] = [matrices[0]] * len(matrices)
    for (_, device, compute), chunks in groups.items():
        emulate = compute == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16_gemm()
        for index in chunks:
            batch = _stack_wide([matrices[i] for i in index], compute, emulate)
            result = _iterate(batch, steps, schedule, norm_factor, eps, emulate)
            if emulate:
                result = result.to(torch.bfloat16)
            if result.ndim == 2:
                result = result.unsqueeze(0)
            for j, i in enumerate(index):
                out[i] = result[j].T if _is_tall(matrices[i]) else result[j]
    return out


def _is_tall(matrix: Tensor) -> bool:
    return matrix.size(0) > matrix.size(1)


def _stack_wide(matrices: list[Tensor], compute: torch.dtype, emulate: bool) -> Tensor:
    """The matrices in wide orientation, cast to ``compute`` (float32 holding bfloat16 values
    when ``emulate``); one matrix stays 2-D (no copy when no cast is needed: the normalisation
    makes the first new tensor)."""
    wide = [m.T if _is_tall(m) else m for m in matrices]
    if emulate:
        wide = [w.to(torch.bfloat16) for w in wide]
    storage = torch.float32 if emulate else compute
    if len(wide) == 1:
        return wide[0].to(storage)
    batch = torch.empty((len(wide), *wide[0].shape), dtype=storage, device=wide[0].device)
    for slot, w in zip(batch, wide, strict=True):
        slot.copy_(w)
    return batch


def _round_to_bf16_(t: Tensor) -> Tensor:
    return t.copy_(t.to(torch.bfloat16))


def _iterate(
    x: Tensor, steps: int, schedule, norm_factor: float, eps: float, emulate: bool
) -> Tensor:
    """Normalise each matrix of ``x`` (2-D, or a batch) and run ``steps`` quintic iterations;
    ``emulate``: round every intermediate to bfloat16, as a bfloat16 iteration stores it."""
    rounded = _round_to_bf16_ if emulate else _unchanged
    norm = rounded(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True))
    if norm_factor != 1.0:
        norm = rounded(norm * norm_factor)
    # divide into a fresh contiguous tensor: the buffers below are contiguous too
    x = rounded(
        torch.div(
            x,
            rounded(norm.clamp(min=eps)),
            out=torch.empty_like(x, memory_format=torch.contiguous_format),
        )
    )
    mm, addmm = (torch.mm, torch.addmm) if x.ndim == 2 else (torch.bmm, torch.baddbmm)
    gram = x.new_empty((*x.shape[:-1], x.shape[-2]))
    poly, nxt = torch.empty_like(gram), torch.empty_like(x)
    for k in range(steps):
        a, b, c = schedule[min(k, len(schedule) - 1)]
        rounded(mm(x, x.mT, out=gram))
        rounded(addmm(gram, gram, gram, beta=b, alpha=c, out=poly))
        rounded(addmm(x, poly, x, beta=a, out=nxt))
        x, nxt = nxt, x
    return x


def _unchanged(t: Tensor) -> Tensor:
    return t


def as_matrix(tensor: Tensor) -> Tensor:
    """View an n-D (n >= 2) tensor as ``(shape[0], prod(shape[1:]))``: a conv weight
    ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``, as in Keller Jordan's Muon."""
    return tensor.reshape(tensor.shape[0], -1)


def check_ns_hyperparameters(hp: Mapping[str, Any]) -> None:
    """Validate ``ns_coefficients``, ``ns_steps``, ``eps`` and ``ns_dtype`` in a group."""
    resolve_coefficients(hp["ns_coefficients"])
    steps = hp["ns_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
        raise ValueError(f"Invalid ns_steps: {steps!r} (expected an integer in [1, 100))")
    check_positive(hp, "eps")
    if hp["ns_dtype"] not in NS_DTYPES:
        raise ValueError(
            f"Invalid ns_dtype: {hp['ns_dtype']!r} (choose one of "
            f"{', '.join(map(repr, NS_DTYPES))})"
        )


def orthogonalize_like(update: Tensor, hp: Mapping[str, Any]) -> Tensor:
    """:func:`newton_schulz` of ``update`` flattened to a matrix, with the group's settings,
    reshaped back and cast to ``update``'s dtype."""
    ortho = newton_schulz(
        as_matrix(update),
        hp["ns_steps"],
        hp["ns_coefficients"],
        hp["eps"],
        dtype=NS_DTYPES[hp["ns_dtype"]],
    )
    return ortho.reshape(update.shape).to(update.dtype)


class Orthogonalize(GroupTransform):
    name = "orthogonalize"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_ns_hyperparameters(hp)

    def update_group(self, updates, state, params, hp, steps, grads):
        # all matrices of the group at once: same-shape ones iterate together (bmm)
        index = [i for i, u in enumerate(updates) if u.ndim >= 2]
        if not index:
            return list(updates)
        ortho = batched_newton_schulz(
            [as_matrix(updates[i]) for i in index],
            hp["ns_steps"],
            hp["ns_coefficients"],
            hp["eps"],
            dtype=NS_DTYPES[hp["ns_dtype"]],
        )
        out = list(updates)
        for i, o in zip(index, ortho, strict=True):
            out[i] = o.reshape(updates[i].shape).to(updates[i].dtype)
        return out


def orthogonalize(
    ns_coefficients: Any = ORIGINAL,
    ns_steps: int = 5,
    eps: float = 1e-7,
    ns_dtype: str | None = "bfloat16",
) -> Transform:
    r"""Replace every update with ``ndim >= 2`` by its Newton-Schulz orthogonalization.

    n-D updates are flattened to ``(shape[0], -1)`` first and reshaped back; 0-/1-D updates pass
    unchanged. Stateless. ``ns_dtype`` is ``"bfloat16"`` (default, as Muon), ``"float32"``,
    ``"float64"`` or ``None`` (the update's own dtype). E.g. Muon's core without the AdamW
    fallback is ``chain(trace(0.95, nesterov=True), orthogonalize(), scale_by_lr(0.02))`` (up
    to torch.optim.SGD's momentum convention, which differs from Muon's EMA by a scale that the
    normalisation removes).
    """
    return Orthogonalize(
        ns_coefficients=ns_coefficients, ns_steps=ns_steps, eps=eps, ns_dtype=ns_dtype
    )
