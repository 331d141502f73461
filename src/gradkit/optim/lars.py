"""LARS: SGD with momentum and a layer-wise local learning rate.

You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017
(Algorithm 1, local learning rate eq. 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gradkit.core.transform import Transform
from gradkit.optim._base import GradkitOptimizer, NativeSpec, Params, register
from gradkit.transforms.basic import scale_by_lr, trace
from gradkit.transforms.trust_ratio import ScaleByTrustRatio


@register(
    paper="Large Batch Training of Convolutional Networks",
    year=2017,
    url="https://arxiv.org/abs/1708.03888",
    state_floats=1,
)
class LARS(GradkitOptimizer):
    r"""LARS (You, Gitman & Ginsburg, 2017, Algorithm 1), learning rate inside the momentum.

    For each tensor (layer) :math:`w` with gradient :math:`g`, trust coefficient :math:`\eta`,
    weight decay :math:`\beta`, momentum :math:`m` and global learning rate :math:`\gamma_t`:

    .. math::
        \lambda &= \frac{\eta\,\|w_t\|}{\|g_t\| + \beta\|w_t\| + \epsilon}\\
        v_{t+1} &= m\,v_t + \gamma_t\,\lambda\,(g_t + \beta w_t),\qquad v_0 = 0\\
        w_{t+1} &= w_t - v_{t+1}

    :math:`\lambda = 1` when :math:`\|w\| = 0` (e.g. zero-initialized biases) or the denominator
    is 0. ``layer_adaptation=False`` in a param group sets :math:`\lambda = 1` there (momentum SGD
    with L2), the usual treatment of biases and normalization weights. ``eps`` (default 0, as in
    the paper) guards the denominator; ``nesterov`` is an extension (Optax has it), not the paper.

    Defaults: ``lr=1.0, momentum=0.9, weight_decay=0, trust_coefficient=0.001, eps=0``.
    State: 1 parameter-sized tensor (the momentum buffer).

    The global learning rate is **inside** the buffer, as in the paper: with a schedule, past
    steps keep the learning rate they were taken with. The chain
    ``trust ratio -> scale_by_lr -> trace`` does exactly that; ``trace`` copies the first update
    into its buffer, which equals the paper's zero-initialized buffer since there is no dampening.

    Other implementations differ:

    * **timm** ``Lars`` and **apex** ``LARC`` (wrapping torch SGD) put the learning rate
      *outside* the buffer (:math:`w \leftarrow w - \gamma_t b_t`); the two agree only for a
      constant learning rate. timm adapts only when ``weight_decay != 0`` (or ``always_adapt``), so
      with its defaults it is plain SGD; it also sets :math:`\lambda = 1` when :math:`\|g\| = 0`
      (here the paper's formula applies whenever the denominator is positive).
      apex's default ``clip=True`` uses :math:`\min(\lambda/\gamma_t, 1)` (LARC) and
      ``trust_coefficient=0.02``; when a norm is 0 it also drops the weight decay.
    * **Optax** ``lars`` keeps the learning rate inside the buffer, as here, but its denominator
      is :math:`\|g + \beta w\|` (norm of the sum), not :math:`\|g\| + \beta\|w\|`.

    Chain: ``maximize -> scale_by_trust_ratio(add_weight_decay=True) -> scale_by_lr -> trace``.
    The default step runs it as one native two-pass kernel (``gk_lars``: pass 1 reduces
    :math:`\|w\|^2, \|g\|^2`, pass 2 updates the buffer and the weights).

    Example:
        >>> import torch
        >>> from gradkit.optim.lars import LARS
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> opt = LARS([w], lr=1.0, trust_coefficient=0.01)
        >>> w.grad = torch.tensor([0.0, 10.0])
        >>> _ = opt.step()  # local lr 0.01 * 5 / 10 = 0.005
        >>> [round(x, 4) for x in w.tolist()]
        [3.0, 3.95]
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        eps: float = 0.0,
        layer_adaptation: bool = True,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        core = [
            ScaleByTrustRatio(
                add_weight_decay=True,
                weight_decay=weight_decay,
                trust_coefficient=trust_coefficient,
                eps=eps,
                layer_adaptation=layer_adaptation,
            ),
            scale_by_lr(lr),
            trace(momentum, 0.0, nesterov),
        ]
        super().__init__(
            params, core, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            trust_coefficient=trust_coefficient, eps=eps, layer_adaptation=layer_adaptation,
            nesterov=nesterov,
        )  # fmt: skip

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        momentum = float(hp["momentum"])
        keys = ("trace.momentum_buffer",) if momentum != 0 else ()
        if hp.get("dampening", 0.0) != 0 or missing_state(self, hp, keys):
            return None  # the readable chain handles (or rejects) these
        args = (float(hp["lr"]), momentum, hp["weight_decay"], hp["trust_coefficient"], hp["eps"],
                hp["layer_adaptation"], hp["nesterov"], hp["maximize"], 0.0)  # fmt: skip
        return NativeSpec("lars", keys, tuple(map(float, args)))

    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        return 1 if spec.hp[5] else None  # |g|^2, summed before any write with adaptation on

    def _run_native(self, spec, lists, steps, seg):
        self._run_checked(spec, lists, steps, seg)  # per-tensor norms in ``out``, then the step


def missing_state(opt: GradkitOptimizer, hp: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether a stepped parameter of group ``hp`` lacks one of ``keys`` (momentum switched on
    after the state was created: the readable chain raises a clear error for that)."""
    for p in hp["params"] if keys else ():
        state = opt.state.get(p)
        if state and any(k not in state for k in keys):
            return True
    return False
