r"""Update pruning and magnitude masking: top-k / ignore-k update pruning and MIGU.

* :func:`keep_top_fraction` keeps the largest-magnitude fraction of each tensor's update (top-k
  sparsification) and zeroes the rest.
* :func:`drop_top_fraction` is the opposite, "ignore-k" pruning: it zeroes the largest-magnitude
  fraction and keeps the rest. Sun et al., "How new data permeates LLM knowledge and how to dilute
  it", 2025, arXiv:2504.09522, introduce ignore-k to reduce "priming" when inserting new facts.
* :func:`migu` masks the gradient of each linear layer's output units by the magnitude of the
  layer's outputs (Du et al., "Unlocking Continual Learning Abilities in Language Models", EMNLP
  2024 Findings, arXiv:2406.17245; official code github.com/wenyudu/MIGU). The output magnitudes
  are recorded by forward hooks (:class:`OutputMagnitudes`).

To apply any of them to some parameters only, wrap them in
:func:`~gradkit.transforms.selection.masked`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.core.transform import Context, GroupTransform, State, Transform
from gradkit.core.validation import check_choice, check_unit_interval


def _count(fraction: float, numel: int) -> int:
    """:math:`\\lceil f n \\rceil`, robust to floating-point noise (0.3 * 10 keeps 3, not 4)."""
    return min(numel, max(0, math.ceil(fraction * numel - 1e-6)))


def top_magnitude_mask(u: Tensor, count: int) -> Tensor:
    """Boolean mask of exactly ``count`` largest-``|u|`` entries (NaN counts as largest)."""
    mask = torch.zeros(u.numel(), dtype=torch.bool, device=u.device)
    if count > 0:
        mask[torch.topk(u.detach().reshape(-1).abs(), count, sorted=False).indices] = True
    return mask.reshape(u.shape)


class _TopFraction(GroupTransform):
    stage = "update"

    def __init__(self, name: str, key: str, keep_top: bool, fraction: float) -> None:
        self.name, self.key, self.keep_top = name, key, keep_top
        super().__init__(**{key: fraction})

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, self.key, closed_right=True)

    def update_group(self, updates, state, params, hp, steps, grads):
        fraction = float(hp[self.key])
        out = []
        for u in updates:
            top = top_magnitude_mask(u, _count(fraction, u.numel()))
            out.append(torch.where(top if self.keep_top else ~top, u, u.new_zeros(())))
        return out


def keep_top_fraction(fraction: float = 0.1) -> Transform:
    r"""Top-k update pruning: keep the largest-magnitude ``fraction`` of each tensor's update.

    For each tensor with :math:`n` entries, the :math:`k = \lceil f n \rceil` entries of largest
    :math:`|u|` are kept and the others set to zero (exactly :math:`k` entries: ties are broken by
    ``torch.topk``). No rescaling. Hyperparameter ``keep_fraction`` in [0, 1] (1 keeps all, 0
    zeroes all). ``stage = "update"``: through an optimizer's ``transforms=`` it prunes the proposed
    update (after the update rule, before weight decay and the learning rate), so the state of the
    update rule still sees the full gradient. No state.
    """
    return _TopFraction("keep_top", "keep_fraction", True, fraction)


def drop_top_fraction(fraction: float = 0.1) -> Transform:
    r"""Ignore-k update pruning: zero the largest-magnitude ``fraction`` of each tensor's update.

    The complement of :func:`keep_top_fraction`: the :math:`k = \lceil f n \rceil` entries of
    largest :math:`|u|` are set to zero and the others kept (hyperparameter ``drop_fraction``).
    Sun et al. (2025) report that ignoring the top-k% of parameter updates reduces the "priming"
    of newly learned facts in unrelated contexts while preserving memorization. Their code is not
    public; we apply it per tensor, to the proposed update (``stage = "update"``), without
    rescaling — state the value of ``k`` you use (the paper sweeps it). No state.
    """
    return _TopFraction("drop_top", "drop_fraction", False, fraction)


# -- MIGU -------------------------------------------------------------------------------------
class OutputMagnitudes:
    r"""Forward hooks that sum :math:`|y|` per output unit of every ``nn.Linear`` in ``model``.

    For a linear layer with outputs :math:`y \in \mathbb{R}^{\dots \times d_{out}}` it accumulates
    :math:`a_j \mathrel{+}= \sum_{\text{tokens}} |y_{\dots, j}|` over every forward pass run with
    autograd enabled (training passes; ``torch.no_grad()`` evaluations are not counted), until
    :meth:`reset` — which :func:`migu` calls after each optimizer step, so gradient-accumulation
    micro-batches add up, as in the official trainer.

    Args:
        model: the module whose linear layers are tracked.
        module_types: layer types to hook (default ``(nn.Linear,)``, as MIGU).

    Call :meth:`remove` to detach the hooks.
    """

    def __init__(
        self, model: nn.Module, module_types: tuple[type[nn.Module], ...] = (nn.Linear,)
    ) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.sums: dict[str, Tensor] = {}
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, module_types) and isinstance(
                getattr(module, "weight", None), Tensor
            ):
                self.modules[name] = module
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            y = output.detach()
            total = y.reshape(-1, y.shape[-1]).abs().sum(dim=0, dtype=torch.float32)
            if name in self.sums:
                self.sums[name] += total
            else:
                self.sums[name] = total

        return hook

    def magnitude(self, param: Tensor, name: str | None = None) -> Tensor | None:
        """The accumulated output magnitudes of the layer whose ``weight`` is ``param``
        (matched by identity, else by parameter name ``"<module>.weight"``); None if untracked
        or no forward pass was recorded."""
        for module_name, module in self.modules.items():
            weight_name = f"{module_name}.weight" if module_name else "weight"
            if module.weight is param or (name is not None and name == weight_name):
                return self.sums.get(module_name)
        return None

    def reset(self) -> None:
        self.sums.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __repr__(self) -> str:
        return f"OutputMagnitudes({len(self.modules)} layers)"


def migu_mask(magnitude: Tensor, threshold: float) -> Tensor:
    """MIGU's mask over output units: ``magnitude >= quantile(magnitude, threshold)``.

    L1-normalizing the magnitudes (the paper's description) does not change a quantile
    threshold, so the raw sums are compared directly, as the official code does.
    """
    cut = torch.quantile(magnitude.float(), threshold)
    return magnitude >= cut


class Migu(Transform):
    name = "migu"

    def __init__(self, recorder: OutputMagnitudes, threshold: float, stage: str) -> None:
        self.recorder = recorder
        self.stage = stage
        check_choice({"stage": stage}, "stage", ("gradient", "update"))
        if not isinstance(recorder, OutputMagnitudes):
            raise TypeError(f"migu() takes an OutputMagnitudes recorder, got {recorder!r}")
        super().__init__(migu_threshold=threshold)

    def validate(self, hp: Mapping[str, Any]) -> None:
        check_unit_interval(hp, "migu_threshold", closed_right=True)

    def init(self, params, hp) -> State:
        return {}

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        out = list(updates)
        for sl, hp in ctx.iter_segments():
            threshold = float(hp["migu_threshold"])
            for i in range(sl.start, sl.stop):
                magnitude = self.recorder.magnitude(params[i], ctx.name(i))
                u = updates[i]
                if magnitude is None or u.ndim < 1 or u.shape[0] != magnitude.numel():
                    continue
                magnitude = _all_reduce_sum(magnitude.to(u.device))
                mask = migu_mask(magnitude, threshold).to(u.dtype)
                out[i] = u * mask.reshape(-1, *([1] * (u.ndim - 1)))
        self.recorder.reset()
        return out

    def __repr__(self) -> str:
        return f"migu({self.recorder!r}, threshold={self.defaults['migu_threshold']!r})"


def _all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over data-parallel ranks (the official code averages; a quantile mask is the same)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


def migu(recorder: OutputMagnitudes, threshold: float = 0.5, *, stage: str = "gradient"):
    r"""MIGU: update only the output units of linear layers whose outputs are large.

    Du et al. (2024). During the forward passes of a step, :class:`OutputMagnitudes` sums the
    absolute outputs :math:`a_j = \sum_{\text{tokens}} |y_j|` of each linear layer per output unit
    :math:`j`. At the step, for each tracked weight :math:`W \in \mathbb{R}^{d_{out} \times
    d_{in}}`:

    .. math::
        M_j = \mathbb{1}\big[a_j \ge Q_T(a)\big],\qquad G_{j,:} \leftarrow M_j\, G_{j,:}

    where :math:`Q_T` is the :math:`T`-quantile (``torch.quantile``, linear interpolation), so
    roughly the top :math:`1 - T` fraction of units by output magnitude is updated. The paper
    describes the magnitudes as L1-normalized; the normalization does not move a quantile
    threshold, and the official code (``src/accelerate_local.py``) thresholds the raw sums.

    Defaults and official-code conventions we follow: ``threshold`` :math:`T = 0.5`
    (``ini_threshold`` default; hyperparameter ``migu_threshold`` in [0, 1]); only the linear
    layers' ``weight`` is masked (biases and untracked parameters pass through); magnitudes are
    summed over gradient-accumulation micro-batches and reset after every optimizer step; under
    ``torch.distributed`` they are reduced over ranks first. The official trainer masks the
    *gradient* before the optimizer (``stage="gradient"``, the default: the optimizer's momentum
    still moves masked rows); ``stage="update"`` masks the proposed update instead, so masked rows
    do not move at all. The official code skips masking on the first task of a continual-learning
    sequence: simply leave the transform out there. Parameters are matched to layers by identity,
    or by name when the optimizer got ``model.named_parameters()`` (needed for bf16/fp16
    parameters, whose fp32 working copies have no identity link).

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.masking import OutputMagnitudes, migu
        >>> model = torch.nn.Linear(4, 6)
        >>> recorder = OutputMagnitudes(model)
        >>> opt = gradkit.optim.SGD(model.parameters(), lr=0.1, transforms=[migu(recorder)])
        >>> model(torch.randn(8, 4)).square().sum().backward()
        >>> opt.step()  # only the 3 rows with the largest outputs moved
    """
    return Migu(recorder, threshold, stage)
