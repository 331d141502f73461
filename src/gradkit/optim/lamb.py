"""LAMB: Adam's direction with a layer-wise trust ratio, for large-batch training.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020, arXiv:1904.00962
(Algorithm 2). Authors' TensorFlow code: google-research/albert ``lamb_optimizer.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.transform import State, Transform
from gradkit.core.validation import check_betas, check_bool, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.adam import ScaleByAdam, update_moments
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.trust_ratio import ScaleByTrustRatio


class ScaleByLambMoments(ScaleByAdam):
    """:func:`~gradkit.optim.scale_by_adam` (no AMSGrad) with the bias correction optional.

    LAMB's arXiv versions disagree on the bias correction (v1 and v5 have it, v3 does not, and the
    authors' TensorFlow code has none), so ``bias_correction`` is a per-group switch.
    """

    name = "adam"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_bool(hp, "bias_correction")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return super().init(params, {**hp, "amsgrad": False})

    def update_group(self, updates, state, params, hp, steps, grads):
        if hp["bias_correction"]:
            return super().update_group(
                updates, state, params, {**hp, "amsgrad": False}, steps, grads
            )
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        update_moments(exp_avg, exp_avg_sq, updates, b1, b2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, hp["eps"])
        return torch._foreach_div(exp_avg, denom)


@register(
    paper="Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    year=2020,
    url="https://arxiv.org/abs/1904.00962",
    state_floats=2,
)
class LAMB(GradkitOptimizer):
    r"""LAMB (You et al., ICLR 2020, Algorithm 2): AdamW's update rescaled per tensor.

    For each tensor (layer) :math:`w`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        r_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},\qquad
        u_t = r_t + \lambda w_{t-1}\\
        w_t &= w_{t-1} - \eta\,\frac{\phi(\|w_{t-1}\|)}{\|u_t\|}\,u_t

    with :math:`\phi(z) = z`, or :math:`\min(\max(z, \gamma_l), \gamma_u)` with
    :math:`(\gamma_l, \gamma_u)` = ``weight_norm_bounds`` (the paper's suggested clamp; its
    experiments use :math:`\phi(z) = z`). The ratio is 1 when :math:`\phi(\|w\|)` or
    :math:`\|u_t\|` is 0.

    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0, bias_correction=True``
    (TF Addons; Optax the same but with no default learning rate; the authors' code has
    ``eps=1e-6``, ``weight_decay_rate=0``; timm and apex default to ``weight_decay=0.01``).
    ``layer_adaptation=False`` in a param group turns the trust ratio off there (AdamW), as the
    authors' code does for the parameters in ``exclude_from_layer_adaptation``; pair it with
    ``weight_decay=0`` for biases and LayerNorm weights. State: 2 parameter-sized tensors.

    Reference implementations and our choices:

    * **Bias correction** differs between arXiv versions and codes: v5 (and TF Addons, Optax,
      timm, apex) correct, the authors' ``lamb_optimizer.py`` does not. Default on;
      ``bias_correction=False`` gives the authors' code.
    * :math:`\epsilon` is added to the bias-corrected :math:`\sqrt{\hat v}`, as the paper writes it.
    * **Zero norms.** The paper leaves :math:`\|w\| = 0` or :math:`\|u\| = 0` open; like the
      authors' code and Optax the ratio is then 1 (the update is plain AdamW).
    * **timm / apex (NVLAMB)** differ: global gradient-norm clipping first (``max_grad_norm=1``),
      ``grad_averaging`` and no trust ratio at all for parameters with ``weight_decay=0`` (unless
      ``always_adapt``); timm's ``trust_clip`` caps the ratio at 1. Here the ratio applies whatever
      the decay, and clipping is a separate transform (``transforms=[...]``).
    * Optax's ``lamb`` is the same chain as ours (``scale_by_adam -> add_decayed_weights ->
      scale_by_trust_ratio``, ratio 1 at zero norms), read from its code, not run here.

    Chain: ``maximize -> scale_by_adam -> add_decayed_weights -> scale_by_trust_ratio ->
    scale_by_lr``. The default step runs it as one native two-pass kernel (``gk_lamb``: pass 1
    updates the moments and accumulates :math:`\|w\|^2, \|u\|^2`, pass 2 applies the step).

    Example:
        >>> import torch
        >>> from gradkit.optim.lamb import LAMB
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> opt = LAMB([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, 1.0])
        >>> _ = opt.step()  # r = (1, 1) (up to eps), ratio |w|/|r| = 5/sqrt(2)
        >>> [round(x, 4) for x in w.tolist()]
        [2.6464, 3.6464]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        weight_norm_bounds: tuple[float, float] | None = None,
        layer_adaptation: bool = True,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ScaleByLambMoments(betas=betas, eps=eps, bias_correction=bias_correction),
            add_decayed_weights(weight_decay),
            ScaleByTrustRatio(
                weight_norm_bounds=weight_norm_bounds, layer_adaptation=layer_adaptation
            ),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, weight_norm_bounds=weight_norm_bounds,
            layer_adaptation=layer_adaptation,
        )  # fmt: skip

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        bounds = hp["weight_norm_bounds"]
        lower, upper = (0.0, 0.0) if bounds is None else bounds
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], hp["weight_decay"], hp["bias_correction"],
                hp["layer_adaptation"], bounds is not None, lower, upper, hp["maximize"])  # fmt: skip
        return NativeSpec("lamb", ("adam.exp_avg", "adam.exp_avg_sq"), tuple(map(float, args)))

    def _run_native(self, spec, lists, steps, seg):
        del seg  # the kernel accumulates its per-tensor norms in ``out``
        out = torch.zeros(len(lists[0]), _native.OUT_WIDTH, dtype=torch.float64)
        _native.kernel(spec.kernel).run(lists, steps, spec.hp, out)
