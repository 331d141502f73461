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

import math
from collections.abc import Mapping
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
        return [orthogonalize_like(u, hp) if u.ndim >= 2 else u for u in updates]


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
