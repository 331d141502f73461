"""Lion: EvoLved Sign Momentum.

Chen, Liang, Huang, Real, Wang, Liu, Pham, Dong, Luong, Hsieh, Lu & Le, "Symbolic Discovery of
Optimization Algorithms", NeurIPS 2023, arXiv:2302.06675. Official code:
https://github.com/google/automl/tree/master/lion (``lion_pytorch.py``, ``lion_optax.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import GroupTransform, State, Transform
from gradkit.core.validation import check_betas
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.optim.signum import run_with_reductions, scale_by_sign
from gradkit.transforms.basic import add_decayed_weights, scale_by_lr
from gradkit.transforms.cautious import cautious_if_flagged


class ScaleByLionInterpolation(GroupTransform):
    name = "lion"

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_betas(hp, 2)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params]}

    def update_group(self, updates, state, params, hp, steps, grads):
        b1, b2 = hp["betas"]
        exp_avg = state["exp_avg"]
        # the step interpolates with beta1 *before* the momentum is updated with beta2
        out = torch._foreach_lerp(exp_avg, updates, 1.0 - b1)
        torch._foreach_lerp_(exp_avg, updates, 1.0 - b2)
        return out


def scale_by_lion_interpolation(betas: tuple[float, float] = (0.9, 0.99)) -> Transform:
    r"""Lion's direction before the sign: :math:`c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`.

    Then updates the momentum, :math:`m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t`. Follow it with
    :func:`~gradkit.optim.signum.scale_by_sign`. State: ``exp_avg``.
    """
    return ScaleByLionInterpolation(betas=betas)


@register(
    paper="Symbolic Discovery of Optimization Algorithms",
    year=2023,
    url="https://arxiv.org/abs/2302.06675",
    state_floats=1,
)
class Lion(GradkitOptimizer):
    r"""Lion (Chen et al., 2023, Program 1): the sign of an interpolated momentum.

    .. math::
        c_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
        \theta_t = \theta_{t-1} - \eta\,\big(\operatorname{sign}(c_t) + \lambda\theta_{t-1}\big)\\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t,\qquad m_0 = 0

    Defaults (official code): ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0``. State: one
    parameter-sized tensor (AdamW keeps two).

    **Hyperparameters.** The sign gives every coordinate a step of size :math:`\eta`, a larger
    update norm than AdamW's, so the paper recommends a learning rate **3-10x smaller** than
    AdamW's and, to keep the decay strength :math:`\eta\lambda`, a weight decay **3-10x larger**.
    The paper reports the gain over AdamW grows with the batch size; ``betas=(0.95, 0.98)`` helps
    stability in its language-model runs.

    Weight decay is decoupled and multiplied by the learning rate,
    :math:`\theta \leftarrow \theta(1-\eta\lambda)` before the signed step, as in the paper and the
    official code. ``cautious=True`` applies cautious masking (C-Lion; Liang et al., 2024,
    :func:`gradkit.transforms.cautious.cautious`) to :math:`\operatorname{sign}(c_t)`; the decay is
    not masked (as in the official ``c_lion.py``). The official code matches the paper; there is
    no deviation to choose between.

    Chain: ``maximize -> scale_by_lion_interpolation -> scale_by_sign -> [cautious] ->
    add_decayed_weights -> scale_by_lr``. Without extra ``transforms`` the step runs as one native
    pass over memory (:mod:`gradkit._native`, ``gk_lion``); ``cautious`` adds a read-only pass
    counting each tensor's kept coordinates.

    Example:
        >>> import torch
        >>> from gradkit.optim.lion import Lion
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = Lion([w], lr=0.1)
        >>> w.grad = torch.tensor([0.5, -2.0, 0.0])
        >>> _ = opt.step()
        >>> w.tolist()  # every coordinate moves by lr, or not at all
        [-0.10000000149011612, 0.10000000149011612, 0.0]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        cautious: bool = False,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            scale_by_lion_interpolation(betas),
            scale_by_sign(),
            cautious_if_flagged(cautious),
            add_decayed_weights(weight_decay),
            scale_by_lr(lr),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, betas=betas, weight_decay=weight_decay, cautious=cautious,
        )  # fmt: skip

    def native_spec(self, hp):
        b1, b2 = hp["betas"]
        args = (float(hp["lr"]), b1, b2, hp["weight_decay"], hp["maximize"], hp["cautious"])
        return NativeSpec("lion", ("lion.exp_avg",), tuple(float(a) for a in args))

    def _run_native(self, spec, lists, steps, seg):
        run_with_reductions(spec, lists, steps)  # the cautious mask's kept counts
