"""Exact bytes of optimizer state: total, per parameter and per state name."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from gradkit.memory.storage import Q8_TAG


@dataclass(frozen=True)
class StateBytes:
    """Bytes held by an optimizer's state tensors (``numel * element_size``, storage counted once
    per tensor; views of one buffer would be counted twice, gradkit never stores such views).

    Attributes:
        total: every state tensor except the per-parameter ``step`` counters, including the
            fp32 block maxima of 8-bit state.
        step: bytes of the ``step`` counters (one scalar per parameter with state).
        per_param: ``total`` split by parameter, in ``param_groups`` order (0 for a parameter
            without state).
        per_name: ``total`` split by state name; block maxima count under their state's name
            (``"adam.exp_avg"`` includes ``"adam.exp_avg::absmax:s256"``).
        num_params: number of parameter values (elements) in the optimizer's param groups.
    """

    total: int
    step: int
    per_param: list[int] = field(repr=False)
    per_name: dict[str, int]
    num_params: int

    @property
    def bytes_per_param(self) -> float:
        """``total / num_params`` (the step counters excluded)."""
        return self.total / self.num_params if self.num_params else 0.0

    @property
    def total_with_step(self) -> int:
        return self.total + self.step


def state_bytes(optimizer: torch.optim.Optimizer) -> StateBytes:
    """Exact bytes of ``optimizer``'s state, for any ``torch.optim.Optimizer``.

    Example:
        >>> import torch, gradkit
        >>> from gradkit.memory import state_bytes
        >>> w = torch.nn.Parameter(torch.zeros(64, 64))  # 4096 values: compressed under q8
        >>> opt = gradkit.optim.AdamW([w], state_dtype="q8")
        >>> w.grad = torch.ones_like(w)
        >>> _ = opt.step()
        >>> sb = state_bytes(opt)
        >>> sb.total, sb.per_name["adam.exp_avg"], sb.bytes_per_param  # 2 * (4096 + 4 * 16)
        (8320, 4160, 2.03125)
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_param: list[int] = []
    per_name: dict[str, int] = {}
    step = 0
    for p in params:
        entry = optimizer.state.get(p, {})
        held = 0
        for key, value in entry.items():
            if not isinstance(value, Tensor):
                continue
            size = value.numel() * value.element_size()
            if key == "step":
                step += size
                continue
            held += size
            name = key.split(Q8_TAG)[0]
            per_name[name] = per_name.get(name, 0) + size
        per_param.append(held)
    return StateBytes(
        total=sum(per_param),
        step=step,
        per_param=per_param,
        per_name=per_name,
        num_params=sum(p.numel() for p in params),
    )


__all__ = ["StateBytes", "state_bytes"]
