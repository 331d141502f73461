r"""Where an Adam-family method adds :math:`\epsilon`: the two conventions in the literature.

``"corrected"`` (Kingma & Ba's paper, torch.optim.Adam, Optax): :math:`\epsilon` is added to the
bias-corrected root,

.. math:: d_t = \sqrt{v_t/(1-\beta_2^t)} + \epsilon.

``"uncorrected"`` (the original torch Adam and HF AdamW, and the official code of diffGrad and
Grams): :math:`\epsilon` is added to the raw root and the correction goes into the step size
:math:`\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)`, which is the same as

.. math:: d_t = \big(\sqrt{v_t} + \epsilon\big)/\sqrt{1-\beta_2^t},

i.e. an effective :math:`\epsilon/\sqrt{1-\beta_2^t}` in corrected units (larger early on). The
two agree once :math:`\sqrt{v_t} \gg \epsilon`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.validation import check_choice
from gradkit.optim.adam import adam_denominator, bias_corrections

EPS_PLACEMENTS = ("corrected", "uncorrected")


def check_eps_placement(hp: Mapping[str, Any]) -> None:
    check_choice(hp, "eps_placement", EPS_PLACEMENTS)


def denominator(
    exp_avg_sq: list[Tensor], b2: float, steps: Sequence[int], eps: float, placement: str
) -> list[Tensor]:
    """The bias-corrected Adam denominator under ``placement`` (a new list)."""
    if placement == "corrected":
        return adam_denominator(exp_avg_sq, b2, steps, eps)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(denom, [math.sqrt(bc) for bc in bias_corrections(b2, steps)])
    return denom
