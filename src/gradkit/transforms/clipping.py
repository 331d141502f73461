r"""Gradient clipping: global norm, value, per-tensor norm, AGC, pixel-wise (PGC), norm growth.

Every transform here bounds the size of the incoming updates (normally the gradients: they have
``stage = "gradient"``, so ``optimizer(..., transforms=[t])`` runs them before the update rule).
Hyperparameters are read from the param group at every step under names specific to each
transform (``global_max_norm``, ``clip_value``, ...), so two clipping transforms in one chain never
fight over a default.

Non-finite input: clipping propagates NaN/inf (a NaN norm gives NaN updates, like
``torch.nn.utils.clip_grad_norm_``). Inside an optimizer the ``nonfinite=`` policy skips such steps
before any transform runs; in a standalone chain wrap it in ``apply_if_finite``.

References:
    * torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (global-norm and value clipping).
    * Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
      Normalization", ICML 2021, arXiv:2102.06171; official code
      github.com/google-deepmind/deepmind-research (``nfnets/agc_optax.py``).
    * Pan, Lu, Zhu & Zhang, "Enhancing High-Resolution 3D Generation through Pixel-wise Gradient
      Clipping", ICLR 2024, arXiv:2310.12474; official code github.com/fudan-zvg/PGC-3D.
    * Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
      arXiv:2410.01623; official code github.com/xichen-fy/Fira (``fira_adamw.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import Context, GroupTransform, State, Transform
from gradkit.core.validation import check_choice, check_positive

# torch.nn.utils.clip_grad_norm_'s guard against division by zero, used by every norm clip here
TORCH_CLIP_EPS = 1e-6


# -- global norm ------------------------------------------------------------------------------
def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all ``tensors`` together, computed as torch's ``clip_grad_norm_`` does
    (per-tensor norms, then the norm of their stack), so the results agree bit for bit."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(list(tensors))
    device = tensors[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


class ClipByGlobalNorm(Transform):
    name = "clip_global_norm"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "global_max_norm")

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        if not updates:
            return updates
        total = global_norm(updates)
        out: list[Tensor] = []
        for sl, hp in ctx.iter_segments():
            coef = torch.clamp(hp["global_max_norm"] / (total + TORCH_CLIP_EPS), max=1.0)
            ups = updates[sl]
            out += torch._foreach_mul(ups, coef.to(ups[0].device)) if ups else []
        return out


def clip_by_global_norm(max_norm: float = 1.0) -> Transform:
    r"""Rescale *all* updates together so that their joint 2-norm is at most ``max_norm``.

    .. math::
        \|u\| = \Big(\sum_i \|u_i\|_2^2\Big)^{1/2},\qquad
        u_i \leftarrow u_i \cdot \min\Big(1,\ \frac{c}{\|u\| + 10^{-6}}\Big)

    exactly ``torch.nn.utils.clip_grad_norm_(params, c)`` (same formula, same ``1e-6``, same
    operation order; tests compare bit for bit). The norm spans every parameter the transform sees,
    across all param groups; ``c`` is read per group (hyperparameter ``global_max_norm``), so groups
    may clip the shared norm to different values. Inside :func:`~gradkit.transforms.masked` it
    spans the selected parameters only; a param group whose step the optimizer skips (non-finite
    gradients) is not part of it. No state.

    Args:
        max_norm: default of ``global_max_norm`` (> 0).

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.clipping import clip_by_global_norm
        >>> t = gradkit.chain(clip_by_global_norm(1.0))
        >>> params = [torch.zeros(2), torch.zeros(1)]
        >>> out = t.update([torch.tensor([3.0, 0.0]), torch.tensor([4.0])], t.init(params), params)
        >>> [round(x, 4) for u in out for x in u.tolist()]
        [0.6, 0.0, 0.8]
    """
    return ClipByGlobalNorm(global_max_norm=max_norm)


# -- value ------------------------------------------------------------------------------------
class ClipByValue(GroupTransform):
    name = "clip_value"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "clip_value")

    def update_group(self, updates, state, params, hp, steps, grads):
        limit = float(hp["clip_value"])
        return [u.clamp(-limit, limit) for u in updates]


def clip_by_value(limit: float = 1.0) -> Transform:
    r"""Element-wise clipping: :math:`u \leftarrow \operatorname{clamp}(u, -c, c)`.

    ``torch.nn.utils.clip_grad_value_`` as a transform (hyperparameter ``clip_value``, > 0). It
    changes the direction of the update; NaN stays NaN. No state.
    """
    return ClipByValue(clip_value=limit)


# -- per-tensor norm --------------------------------------------------------------------------
class ClipByNorm(GroupTransform):
    name = "clip_norm"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "tensor_max_norm")

    def update_group(self, updates, state, params, hp, steps, grads):
        if not updates:
            return updates
        coefs = torch._foreach_norm(updates)
        torch._foreach_add_(coefs, TORCH_CLIP_EPS)
        torch._foreach_reciprocal_(coefs)
        torch._foreach_mul_(coefs, float(hp["tensor_max_norm"]))
        torch._foreach_clamp_max_(coefs, 1.0)
        return torch._foreach_mul(updates, coefs)


def clip_by_norm(max_norm: float = 1.0) -> Transform:
    r"""Clip each tensor's 2-norm separately:
    :math:`u_i \leftarrow u_i \cdot \min\big(1,\ c / (\|u_i\|_2 + 10^{-6})\big)`.

    The per-tensor version of :func:`clip_by_global_norm` (same formula and ``1e-6``, applied to
    each parameter on its own; hyperparameter ``tensor_max_norm``, > 0). No state.
    """
    return ClipByNorm(tensor_max_norm=max_norm)


# -- adaptive gradient clipping (AGC) ---------------------------------------------------------
def unitwise_norm(x: Tensor) -> Tensor:
    """Frobenius norm per output unit, broadcastable against ``x``.

    A unit is a row of a matrix / a filter of a conv weight (PyTorch layout ``(out, in, ...)``:
    the norm runs over every dim but the first). Vectors and scalars (biases, gains) count as a
    single unit, as in the official NFNets code.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


class AdaptiveGradClip(GroupTransform):
    name = "agc"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "agc_clipping")
        check_positive(hp, "agc_eps")

    def update_group(self, updates, state, params, hp, steps, grads):
        clipping, eps = float(hp["agc_clipping"]), float(hp["agc_eps"])
        out = []
        for u, p in zip(updates, params, strict=True):
            max_norm = unitwise_norm(p).clamp(min=eps) * clipping
            u_norm = unitwise_norm(u)
            clipped = u * (max_norm / u_norm.clamp(min=TORCH_CLIP_EPS))
            out.append(torch.where(u_norm < max_norm, u, clipped))
        return out


def adaptive_grad_clip(clipping: float = 0.01, eps: float = 1e-3) -> Transform:
    r"""Adaptive gradient clipping (AGC), Brock et al. 2021 (NFNets), unit-wise.

    For every output unit :math:`i` (row of a matrix, filter of a conv weight; a vector or scalar
    parameter is one unit) with parameter :math:`W_i` and update :math:`G_i`:

    .. math::
        G_i \leftarrow \begin{cases}
            \lambda \dfrac{\|W_i\|^\star}{\|G_i\|}\, G_i &
                \text{if } \dfrac{\|G_i\|}{\|W_i\|^\star} \ge \lambda \\[4pt]
            G_i & \text{otherwise}\end{cases},\qquad
        \|W_i\|^\star = \max(\|W_i\|_F, \epsilon)

    Defaults are the paper's: ``clipping`` :math:`\lambda = 0.01` (hyperparameter
    ``agc_clipping``; the paper uses 0.01-0.16 depending on batch size), ``eps`` :math:`\epsilon =
    10^{-3}` (``agc_eps``; keeps zero-initialized units from being frozen). As in the official
    ``agc_optax.py`` the denominator is :math:`\max(\|G_i\|, 10^{-6})` and the comparison is
    "keep if ratio < lambda". The paper does not clip the final classifier layer; select the
    layers with ``masked(adaptive_grad_clip(), lambda p, name: not name.startswith("fc"))``.
    No state.
    """
    return AdaptiveGradClip(agc_clipping=clipping, agc_eps=eps)


# -- pixel-wise gradient clipping (PGC) -------------------------------------------------------
PIXEL_NORMS = ("l2", "inf")


class ClipByPixelNorm(GroupTransform):
    name = "pixel_clip"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_positive(hp, "pixel_max_norm")
        dim = hp["pixel_dim"]
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"Invalid pixel_dim: {dim!r} (expected an integer dimension)")
        check_choice(hp, "pixel_norm", PIXEL_NORMS)

    def update_group(self, updates, state, params, hp, steps, grads):
        limit, dim = float(hp["pixel_max_norm"]), hp["pixel_dim"]
        order = 2 if hp["pixel_norm"] == "l2" else float("inf")
        out = []
        for u in updates:
            if u.ndim == 0:
                norm = u.abs()
            elif -u.ndim <= dim < u.ndim:
                norm = torch.linalg.vector_norm(u, ord=order, dim=dim, keepdim=True)
            else:
                raise ValueError(
                    f"Invalid pixel_dim: {dim!r} for a parameter of shape {tuple(u.shape)} "
                    "(select the parameters it applies to with masked(...))"
                )
            # limit / 0 = inf -> 1: a zero pixel stays zero without an epsilon
            out.append(u * (limit / norm).clamp(max=1.0))
        return out


def clip_by_pixel_norm(max_norm: float = 0.1, dim: int = -1, norm: str = "l2") -> Transform:
    r"""Pixel-wise gradient clipping (PGC), Pan et al. 2023, as a generic group-wise norm clip.

    The tensor is read as a field of vectors along ``dim`` (the channel dimension: one vector per
    pixel for an image-space parameter); each vector's norm is clipped to :math:`\kappa`, keeping
    its direction:

    .. math::
        g_{p} \leftarrow \min\Big(1,\ \frac{\kappa}{\|g_{p}\|}\Big)\, g_{p}
        \qquad\text{for every pixel } p.

    The paper motivates it for the image-space gradient of score distillation through a frozen VAE
    encoder (a per-pixel clip suppresses the uncontrolled magnitudes while keeping the texture
    directions, unlike a global clip). As an optimizer transform it applies to parameters that
    *are* pixel fields (textures, images, feature grids); select them with ``masked``.

    Official code (``2d.py`` / ``nerf/fine/trainer.py``, ``grad_suppress_type=0``) clips with the
    per-pixel *max* over channels, :math:`\min(1, \kappa / \max_c |g_{p,c}|)` — ``norm="inf"``
    here reproduces it exactly; the default ``norm="l2"`` is the Euclidean pixel norm of the
    paper's description. Default :math:`\kappa = 0.1` is the official ``-O0`` preset
    (``grad_clip_rgb=0.1``); under fp16 loss scaling it multiplies :math:`\kappa` by the loss scale
    — gradkit sees unscaled gradients, so no such factor is needed. 0-d tensors are clipped by
    absolute value; a ``dim`` the tensor lacks raises ``ValueError``.

    Args:
        max_norm: :math:`\kappa` (hyperparameter ``pixel_max_norm``, > 0).
        dim: the channel dimension (``pixel_dim``; ``-1`` for channels-last ``(H, W, C)``, ``0``
            for ``(C, H, W)``, ``1`` for batched ``(N, C, H, W)``).
        norm: ``"l2"`` or ``"inf"`` (``pixel_norm``).
    """
    return ClipByPixelNorm(pixel_max_norm=max_norm, pixel_dim=dim, pixel_norm=norm)


# -- Fira's norm-growth limiter ---------------------------------------------------------------
FIRA_EPS = 1e-8
"""Added to the previous norm in the growth ratio (official ``fira_adamw.py``)."""


class LimitNormGrowth(GroupTransform):
    name = "norm_growth"

    def validate(self, hp: Mapping[str, Any]) -> None:
        gamma = hp["norm_growth_gamma"]
        check_positive(hp, "norm_growth_gamma")
        if gamma < 1:
            raise ValueError(f"Invalid norm_growth_gamma: {gamma!r} (must be >= 1)")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        # -1 marks "no previous norm yet" (a norm is never negative)
        return {"prev_norm": [torch.full((), -1.0, dtype=p.dtype, device=p.device) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        gamma = float(hp["norm_growth_gamma"])
        norms = torch._foreach_norm(updates) if updates else []
        out = []
        for u, norm, prev in zip(updates, norms, state["prev_norm"], strict=True):
            norm = norm.to(prev.dtype)
            limiter = torch.clamp(norm / (prev + FIRA_EPS), min=gamma) / gamma
            limiter = torch.where(prev < 0, torch.ones_like(limiter), limiter)
            out.append(u / limiter.to(u.dtype))
            prev.copy_(norm / limiter)
        return out


def limit_norm_growth(gamma: float = 1.01) -> Transform:
    r"""Fira's norm-growth limiter: bound the relative growth of each tensor's update norm.

    Per tensor, with :math:`S_t` the incoming update and :math:`\tilde S_{t-1}` the previous
    *output*:

    .. math::
        \ell_t = \frac{\max\big(\|S_t\| / (\|\tilde S_{t-1}\| + 10^{-8}),\ \gamma\big)}{\gamma},
        \qquad \tilde S_t = S_t / \ell_t

    i.e. if :math:`\|S_t\| / \|\tilde S_{t-1}\| > \gamma` the update is rescaled to norm
    :math:`\gamma \|\tilde S_{t-1}\|`, otherwise it passes unchanged. Default :math:`\gamma = 1.01`
    (paper and official code; hyperparameter ``norm_growth_gamma``, >= 1).

    Official code (``fira_adamw.py``) and our choices, which follow it: the stored norm is the
    norm *after* limiting (``state["scaling_grad"] = norm / limiter``), so a spike cannot raise the
    reference; the first step only records the norm (nothing is limited); the ratio's denominator
    has ``+1e-8``. In Fira the limiter acts on the scaled residual of the low-rank projection, not
    on the whole gradient; this generic transform limits whatever update it receives — put it
    where the quantity to protect is (e.g. first, on the raw gradients, as a spike guard).

    State: ``prev_norm`` (0-d per parameter, ``-1`` before the first step).
    """
    return LimitNormGrowth(norm_growth_gamma=gamma)
