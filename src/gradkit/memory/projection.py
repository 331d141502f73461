"""Projectors for low-rank optimizer state (GaLore, Q-GaLore, Fira, FRUGAL).

A projector for an ``m x n`` gradient ``G`` is a *basis* ``B`` with orthonormal columns, stored as
a plain ``d x r`` tensor so that it lives in the optimizer state (``state_dict`` saves it and
``torch.load(weights_only=True)`` restores it; no Python objects in the state). Which side is
projected follows the GaLore code's ``proj_type``:

* ``"left"``: ``d = m``, :math:`R = B^\\top G` (``r x n``), back-projection :math:`B N`;
* ``"right"``: ``d = n``, :math:`R = G B` (``m x r``), back-projection :math:`N B^\\top`;
* ``"std"`` (GaLore's default): right when ``m >= n``, else left, so the basis is the smaller one;
  ``"reverse_std"``: the opposite.

Basis kinds: :func:`svd_basis` (top-``r`` singular vectors of the current gradient, GaLore),
:func:`random_basis` (a uniformly random semi-orthogonal matrix, FRUGAL's ``"random"``). FRUGAL's
``"block"`` projector selects whole tensors and needs no basis (see :mod:`gradkit.memory.frugal`).

Singular vectors are defined up to sign and LAPACK's choice is arbitrary; we flip each one so
that its largest-magnitude entry is positive. The official codes take LAPACK's signs as they come,
which matters whenever moments are kept across a refresh (GaLore keeps them in the old basis) or
consecutive singular vectors are compared (Q-GaLore's adaptive gap).

Q-GaLore's INT4 projector: :func:`quantize_int4` / :func:`dequantize_int4`, group-wise asymmetric
(min/max) quantization with an integer zero point as in the official code, two 4-bit codes packed
per byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

PROJ_TYPES = ("std", "reverse_std", "left", "right")


def projected_side(shape: Sequence[int], proj_type: str = "std") -> str:
    """``"left"`` or ``"right"``: which side of an ``m x n`` matrix the basis acts on."""
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    if proj_type in ("left", "right"):
        return proj_type
    raise ValueError(f"Invalid proj_type: {proj_type!r} (choose one of {PROJ_TYPES})")


def basis_rows(shape: Sequence[int], side: str) -> int:
    """``d``: the length of the basis vectors (``m`` for left, ``n`` for right)."""
    return shape[0] if side == "left" else shape[1]


def lowrank_shape(shape: Sequence[int], side: str, rank: int) -> tuple[int, int]:
    """Shape of the projected gradient ``R`` (and of the moments kept for it)."""
    m, n = shape
    return (rank, n) if side == "left" else (m, rank)


def effective_rank(shape: Sequence[int], rank: int) -> int:
    """The rank actually used: ``min(rank, m, n)`` (a larger request cannot add directions)."""
    return min(int(rank), *shape)


def canonical_signs(basis: Tensor) -> Tensor:
    """Flip each column so that its largest-magnitude entry is positive (a new tensor)."""
    if basis.numel() == 0:
        return basis.clone()
    idx = basis.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(basis.gather(0, idx))
    signs[signs == 0] = 1.0
    return basis * signs


def svd_basis(grad: Tensor, side: str, rank: int) -> Tensor:
    """Top-``rank`` singular vectors of ``grad`` on ``side`` as a ``d x rank`` basis.

    Computed in float32 for half-precision inputs (as the official code) and in the input's
    precision otherwise; returned in ``grad``'s dtype with canonical signs.
    """
    work = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    basis = u[:, :rank] if side == "left" else vh[:rank].mT
    return canonical_signs(basis).to(grad.dtype)


def random_basis(
    rows: int, rank: int, generator: torch.Generator, *, dtype: torch.dtype, device=None
) -> Tensor:
    """A Haar-random ``rows x rank`` matrix with orthonormal columns (QR of a Gaussian).

    Drawn on the CPU from ``generator`` (so the same seed gives the same basis everywhere), in
    float64, then cast. Requires ``rank <= rows``.
    """
    gauss = torch.randn(rows, rank, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return (q * d).to(device=device, dtype=dtype)


def project(grad: Tensor, basis: Tensor, side: str) -> Tensor:
    """``B^T G`` (left) or ``G B`` (right)."""
    return basis.mT @ grad if side == "left" else grad @ basis


def project_back(low: Tensor, basis: Tensor, side: str) -> Tensor:
    """``B N`` (left) or ``N B^T`` (right): back to the parameter's shape."""
    return basis @ low if side == "left" else low @ basis.mT


def out_of_subspace(
    grad: Tensor, low: Tensor, basis: Tensor, side: str, keep: float = 1.0
) -> Tensor:
    """``G - keep * B R`` (left) or ``G - keep * R B^T`` (right) in one fused ``addmm``.

    With ``R`` the projection of ``G`` and ``keep = 1`` this is the part of the gradient outside
    the subspace, :math:`(I - B B^\top) G` or :math:`G (I - B B^\top)`.
    """
    if side == "left":
        return torch.addmm(grad, basis, low, alpha=-keep)
    return torch.addmm(grad, low, basis.mT, alpha=-keep)


def reproject_moments(
    exp_avg: Tensor, exp_avg_sq: Tensor, old: Tensor, new: Tensor, side: str
) -> None:
    r"""Carry Adam's moments from basis ``old`` to basis ``new``, in place.

    With :math:`Q = B_\text{new}^\top B_\text{old}` (``r x r``) the first moment, a vector in the
    old subspace, is expressed in the new one exactly as far as it lies in it:
    :math:`m \leftarrow Q m`. The second moment holds per-coordinate variances, which under a
    change of basis mix with unknown covariances; we keep the diagonal approximation
    :math:`v \leftarrow (Q \odot Q) v` (exact when ``Q`` is a signed permutation; it stays
    non-negative). For right projections the same acts on the transposed moments.
    """
    q = new.mT @ old
    if side == "left":
        exp_avg.copy_(q @ exp_avg)
        exp_avg_sq.copy_((q * q) @ exp_avg_sq)
    else:
        exp_avg.copy_(exp_avg @ q.mT)
        exp_avg_sq.copy_(exp_avg_sq @ (q * q).mT)


# -- INT4 group-wise quantization (Q-GaLore's projector storage) ---------------------------------
INT4_LEVELS = 15


def int4_groups(numel: int, group_size: int) -> int:
    return math.ceil(numel / group_size)


def quantize_int4(x: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Group-wise asymmetric 4-bit quantization of ``x`` (flattened; the last group is padded).

    Per group of ``group_size`` values: :math:`s = \max(\frac{\max - \min}{15}, 10^{-5})`,
    zero point :math:`z = \operatorname{round}(-\min / s)`, code
    :math:`q = \operatorname{clamp}(\operatorname{round}(x/s) + z, 0, 15)`; dequantized
    :math:`s (q - z)`. As the official code except that ``z`` is not clamped to [0, 15] (it is
    stored as a float), so a group of one sign keeps the bound :math:`|x - \hat x| \le s/2`.

    Returns ``(codes, scales, zeros)``: ``codes`` uint8 with two codes per byte (low nibble
    first), ``scales`` and ``zeros`` float32 with one entry per group.
    """
    flat = x.detach().reshape(-1).float()
    numel = flat.numel()
    groups = int4_groups(numel, group_size)
    padded = torch.nn.functional.pad(flat, (0, groups * group_size - numel), value=float(flat[-1]))
    g = padded.view(groups, group_size)
    lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
    scales = ((hi - lo) / INT4_LEVELS).clamp(min=1e-5)
    zeros = torch.round(-lo / scales)
    q = torch.clamp(torch.round(g / scales) + zeros, 0, INT4_LEVELS).to(torch.uint8)
    q = q.view(-1)[:numel]
    if q.numel() % 2:
        q = torch.cat([q, q.new_zeros(1)])
    codes = q[0::2] | (q[1::2] << 4)
    return codes, scales.view(-1), zeros.view(-1)


def dequantize_int4(
    codes: Tensor,
    scales: Tensor,
    zeros: Tensor,
    shape: Sequence[int],
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse of :func:`quantize_int4`: a ``shape`` tensor of ``dtype``."""
    numel = math.prod(shape)
    q = torch.stack([codes & 0xF, codes >> 4], dim=1).view(-1)[:numel].float()
    group_of = torch.arange(numel, device=codes.device) // group_size
    values = (q - zeros[group_of]) * scales[group_of]
    return values.view(*shape).to(dtype)


def int4_code_bytes(numel: int) -> int:
    return math.ceil(numel / 2)


# -- state sizes (for the registry and the memory benchmark) -----------------------------------
def galore_state_floats(shape: Sequence[int], rank: int, proj_type: str = "std") -> float:
    """fp32 floats per parameter GaLore/Fira keep for one ``m x n`` matrix: 2 moments + basis."""
    side = projected_side(shape, proj_type)
    r = effective_rank(shape, rank)
    low = math.prod(lowrank_shape(shape, side, r))
    return (2 * low + basis_rows(shape, side) * r) / math.prod(shape)


def qgalore_state_bytes(
    shape: Sequence[int], rank: int, group_size: int = 256, queue_size: int = 5
) -> int:
    """Bytes Q-GaLore keeps for one matrix (fp32 moments, INT4 basis + fp32 scale/zero per group,
    the previous first singular vector and the similarity queue; scalars excluded)."""
    side = projected_side(shape, "std")
    r = effective_rank(shape, rank)
    d = basis_rows(shape, side)
    low = math.prod(lowrank_shape(shape, side, r))
    groups = int4_groups(d * r, group_size)
    return 4 * 2 * low + int4_code_bytes(d * r) + 8 * groups + 4 * d + 4 * queue_size


# -- memory accounting for the benchmark -------------------------------------------------------
def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for entry in opt.state.values()
        for v in entry.values()
        if isinstance(v, Tensor)
    )


def lowrank_memory_rows(
    shapes: Sequence[Sequence[int]],
    rank: int = 128,
    density: float = 0.25,
    *,
    dense_shapes: Sequence[Sequence[int]] = (),
    time_steps: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measured optimizer-state bytes (and optionally step time) of the low-rank methods.

    Every 2-D shape in ``shapes`` is projected (GaLore, QGaLore, Fira at ``rank``; FRUGAL at
    ``density`` with its block and SVD projectors); other shapes, and ``dense_shapes`` (e.g.
    embeddings, given their own param group with ``rank``/``density`` ``None``), get plain Adam
    inside the same optimizer. Each optimizer takes one step on random fp32 gradients (``time_steps`` more are
    timed when > 0), then every state tensor is counted, scalars included. Returns one dict per
    method: ``method``, ``params``, ``state_bytes``, ``bytes_per_param``, ``theory_bytes_per_param``
    (from the state formulas, scalars excluded) and, when timed, ``step_seconds`` and
    ``step_ratio_vs_adamw`` (steps without a projector refresh, against
    :class:`gradkit.optim.AdamW` on the same tensors) and ``first_step_seconds`` (the step that
    allocates state and computes the projectors: the SVD cost, paid every ``update_proj_gap``).
    """
    import time

    from gradkit.memory.fira import Fira
    from gradkit.memory.frugal import FRUGAL, frugal_state_floats
    from gradkit.memory.galore import GaLore, QGaLore
    from gradkit.optim import AdamW

    gen = torch.Generator().manual_seed(seed)
    all_shapes = [tuple(s) for s in [*shapes, *dense_shapes]]
    params = [torch.zeros(s, requires_grad=True) for s in all_shapes]
    grads = [torch.randn(s, generator=gen) for s in all_shapes]
    total = sum(p.numel() for p in params)
    lowrank, dense = params[: len(shapes)], params[len(shapes) :]

    def theory(per_matrix) -> float:
        floats = sum(per_matrix(s) * math.prod(s) if len(s) == 2 else 2 * math.prod(s)
                     for s in shapes) + 2 * sum(math.prod(s) for s in dense_shapes)  # fmt: skip
        return 4 * floats / total

    def groups(off: str) -> list[dict[str, Any]]:
        return [{"params": lowrank}] + ([{"params": dense, off: None}] if dense else [])

    def qgalore_floats(s):
        return qgalore_state_bytes(s, rank) / 4 / math.prod(s)

    methods = [
        ("AdamW fp32", lambda: AdamW(params), lambda s: 2.0),
        (f"GaLore r={rank}", lambda: GaLore(groups("rank"), rank=rank),
         lambda s: galore_state_floats(s, rank)),
        (f"QGaLore r={rank}", lambda: QGaLore(groups("rank"), rank=rank), qgalore_floats),
        (f"Fira r={rank}", lambda: Fira(groups("rank"), rank=rank),
         lambda s: galore_state_floats(s, rank)),
        (f"FRUGAL block rho={density}", lambda: FRUGAL(groups("density"), density=density),
         lambda s: frugal_state_floats(s, density, "block")),
        (f"FRUGAL svd rho={density}",
         lambda: FRUGAL(groups("density"), density=density, proj_type="svd"),
         lambda s: frugal_state_floats(s, density, "svd")),
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for name, make, per_matrix in methods:
        for p in params:
            p.data.zero_()
        opt = make()
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        start = time.perf_counter()
        opt.step()  # creates the state and computes the projectors
        first = time.perf_counter() - start
        row: dict[str, Any] = {"method": name, "params": total}
        row["state_bytes"] = _state_bytes(opt)
        row["bytes_per_param"] = row["state_bytes"] / total
        row["theory_bytes_per_param"] = theory(per_matrix)
        if time_steps > 0:
            start = time.perf_counter()
            for _ in range(time_steps):
                opt.step()
            row["step_seconds"] = (time.perf_counter() - start) / time_steps
            row["first_step_seconds"] = first
        rows.append(row)
        del opt
    if time_steps > 0:
        base = rows[0]["step_seconds"]
        for row in rows:
            row["step_ratio_vs_adamw"] = row["step_seconds"] / base
    return rows
