"""NovoGrad: momentum on gradients normalized by a layer-wise second moment.

Ginsburg, Castonguay, Hrinchuk, Kuchaiev, Lavrukhin, Leary, Li, Nguyen, Zhang & Cohen,
"Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks",
arXiv:1905.11286, 2019. Reference implementation: NVIDIA/OpenSeq2Seq
``open_seq2seq/optimizers/novograd.py``; PyTorch ports in NVIDIA NeMo, timm and apex.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_betas, check_bool, check_nonnegative, check_positive
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.transforms.basic import scale_by_lr


class ScaleByNovoGrad(GroupTransform):
    """See :class:`NovoGrad`. State: ``exp_avg`` (per element), ``exp_avg_sq`` (one scalar per
    tensor)."""

    name = "novograd"
    nonnegative_state = frozenset({"exp_avg_sq"})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)
        check_positive(hp, "eps")
        check_nonnegative(hp, "weight_decay")
        check_bool(hp, "grad_averaging")

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [p.new_zeros(()) for p in params],
        }

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        sq_norms = torch._foreach_norm(updates)
        torch._foreach_mul_(sq_norms, sq_norms)
        # v_1 = ||g_1||^2 (no EMA on the first step: NovoGrad's bias-free initialization)
        decay = [0.0 if t == 1 else b2 for t in steps]
        torch._foreach_mul_(exp_avg_sq, decay)
        torch._foreach_add_(exp_avg_sq, torch._foreach_mul(sq_norms, [1.0 - d for d in decay]))
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, hp["eps"])
        direction = torch._foreach_div(updates, denom)
        if hp["weight_decay"] != 0:
            torch._foreach_add_(direction, params, alpha=hp["weight_decay"])
        if hp["grad_averaging"]:
            torch._foreach_mul_(direction, 1.0 - b1)
        torch._foreach_mul_(exp_avg, b1)
        torch._foreach_add_(exp_avg, direction)
        return exp_avg


@register(
    paper=(
        "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks"
    ),
    year=2019,
    url="https://arxiv.org/abs/1905.11286",
    state_floats=1,
)
class NovoGrad(GradkitOptimizer):
    r"""NovoGrad (Ginsburg et al., 2019): per-layer normalized gradients with momentum.

    For each tensor (layer) :math:`w` with gradient :math:`g`, the second moment is one scalar:

    .. math::
        v_1 &= \|g_1\|^2,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\|g_t\|^2\\
        m_t &= \beta_1 m_{t-1} + c\,\Big(\frac{g_t}{\sqrt{v_t} + \epsilon} + d\,w_{t-1}\Big),
        \qquad m_0 = 0\\
        w_t &= w_{t-1} - \eta\,m_t

    with :math:`c = 1`, or :math:`c = 1-\beta_1` with ``grad_averaging=True`` (it multiplies the
    weight-decay term too, as in every reference implementation). There is no bias correction:
    :math:`v_1 = \|g_1\|^2` and :math:`m_1 = g_1/(\|g_1\| + \epsilon) + d\,w_0` are the paper's
    bias-free initialization. The weight decay :math:`d` goes into the momentum, after the
    normalization.

    Defaults: ``lr=1e-3, betas=(0.95, 0.98), eps=1e-8, weight_decay=0, grad_averaging=False``
    (NeMo; OpenSeq2Seq has the same betas, eps and flags with ``learning_rate=1.0``).
    State: 1 parameter-sized tensor plus one scalar per tensor.

    **eps placement** (our choice: outside the root, :math:`\sqrt{v_t} + \epsilon`, as in NeMo,
    timm's ``NvNovoGrad`` and Optax). The others:

    * OpenSeq2Seq (the authors' TensorFlow code) puts it inside, :math:`g/\sqrt{v_t + \epsilon}`;
      the two agree once :math:`\|g\|^2 \gg \epsilon`.
    * apex ``FusedNovoGrad`` keeps the norm :math:`n_t = \sqrt{v_t}`, bias-corrects it anyway,
      and adds :math:`\epsilon` to :math:`n_t/\sqrt{1-\beta_2^t}`; its default mode also
      normalizes *after* the momentum (:math:`m` accumulates raw gradients) and decays the weights
      outside it, which is not the paper's algorithm.
    * Optax ``novograd`` matches this update (its defaults differ: ``b1=0.9, b2=0.25, eps=1e-6``,
      no gradient averaging).

    Other deviations of the reference implementations: OpenSeq2Seq and NeMo detect the first step
    by ``v == 0``, so a tensor whose gradient is exactly 0 at some step is re-initialized later;
    here the first step is the step count. The PyTorch ports modify ``p.grad`` in place; gradkit
    never does. NeMo's ``amsgrad`` and ``luc`` options are not included.

    Chain: ``maximize -> scale_by_novograd -> scale_by_lr``. The default step runs it as one
    native two-pass kernel (``gk_novograd``: pass 1 reduces :math:`\|g\|^2`, pass 2 updates).

    Example:
        >>> import torch
        >>> from gradkit.optim.novograd import NovoGrad
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = NovoGrad([w], lr=0.1)
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> _ = opt.step()  # m_1 = g / ||g||
        >>> [round(x, 4) for x in w.tolist()]
        [-0.06, -0.08]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ScaleByNovoGrad(
                betas=betas, eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging
            ),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, grad_averaging=grad_averaging,
        )  # fmt: skip

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["eps"], hp["weight_decay"], hp["grad_averaging"],
                hp["maximize"], 0.0)  # fmt: skip
        keys = ("novograd.exp_avg", "novograd.exp_avg_sq")
        return NativeSpec("novograd", keys, tuple(map(float, args)))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 0  # |g|^2 of every tensor before any write

    def _run_native(self, spec, lists, steps, seg):
        self._run_checked(spec, lists, steps, seg)
