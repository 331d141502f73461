r"""The three step-safety numbers in one place, along the optimizer's actual proposed update.

For the step the optimizer is about to take, :math:`\Delta\theta` (found by running its
``step()`` and then restoring the parameters, the optimizer state and the RNG):

1. **Softmax radius** (Sao, "Ghosts of Softmax", arXiv:2603.13552, 2026; code
   github.com/piyush314/ghosts-of-softmax): the cross-entropy's Taylor series along
   :math:`u = \Delta\theta/\|\Delta\theta\|` converges within :math:`\rho_a = \pi/\Delta_a`,
   :math:`\Delta_a = \max_i(\max_k a_{ik} - \min_k a_{ik})` with :math:`a = J_z u` (one JVP,
   :func:`gradkit.safe_step.softmax_radius`). Reported with the step length
   :math:`\tau = \|\Delta\theta\|` and :math:`r = \tau/\rho_a` (the paper: no failure while
   :math:`r < 1`).
2. **Edge of stability** (Cohen et al., ICLR 2021, arXiv:2103.00065): the sharpness
   :math:`\lambda_{\max}` against :math:`(2+2\beta)/\eta` (only defined here for SGD with
   heavy-ball momentum; other optimizers: pass ``threshold`` yourself).
3. **Noise scale** (McCandlish et al. 2018, arXiv:1812.06162): batch size over
   :math:`B_\text{simple}` -- below 1 the step is noise-dominated.

The reference experiment computes :math:`\rho_a` in eval mode on the whole training set; here
the caller passes the inputs and chooses ``train`` explicitly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


def proposed_update(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor] | None = None,
    closure: Callable[[], Any] | None = None,
) -> list[Tensor]:
    """The update :math:`\\Delta\\theta` that ``optimizer.step()`` would apply now, one tensor per
    parameter of ``params`` (default: all parameters of the optimizer, in group order).

    Runs the step, measures it, then restores the parameters, the optimizer's ``state_dict`` and
    the CPU RNG state, so training continues exactly as if this had not been called. Step hooks
    registered on the optimizer run during the probe step.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = torch.optim.SGD([w], lr=0.5)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> [d.tolist() for d in proposed_update(opt)], w.tolist()
        ([[-0.5, 0.5]], [1.0, 2.0])
    """
    if params is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    params = list(params)
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(optimizer.state_dict())
    rng = torch.random.get_rng_state()
    try:
        with torch.no_grad():
            optimizer.step(closure) if closure is not None else optimizer.step()
        delta = [p.detach() - b for p, b in zip(params, before, strict=True)]
    finally:
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b)
        optimizer.load_state_dict(state)
        torch.random.set_rng_state(rng)
    return delta


@dataclass
class StepSafety:
    """The step-safety numbers for one proposed step (``None`` where not computed).

    ``step_length`` :math:`\\tau`, ``rho_a``, ``r`` = :math:`\\tau/\\rho_a`; ``sharpness``,
    ``threshold``, ``sharpness_ratio`` = sharpness / threshold; ``batch_size``, ``b_simple``,
    ``noise_ratio`` = batch_size / b_simple."""

    step_length: float
    rho_a: float
    r: float
    lr: float | None = None
    sharpness: float | None = None
    threshold: float | None = None
    sharpness_ratio: float | None = None
    batch_size: int | None = None
    b_simple: float | None = None
    noise_ratio: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The numeric fields that were computed (for logging)."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}

    def summary(self) -> str:
        lines = [
            f"step length tau = {self.step_length:.4g}, softmax radius rho_a = "
            f"{self.rho_a:.4g}, r = tau/rho_a = {self.r:.3g} "
            f"({'beyond' if self.r >= 1 else 'within'} the radius)"
        ]
        if self.sharpness_ratio is not None:
            lines.append(
                f"sharpness {self.sharpness:.4g} vs threshold {self.threshold:.4g} "
                f"(ratio {self.sharpness_ratio:.3g})"
            )
        if self.noise_ratio is not None:
            lines.append(
                f"batch {self.batch_size} vs B_simple {self.b_simple:.4g} "
                f"(ratio {self.noise_ratio:.3g})"
            )
        return "\n".join(lines)


def _default_threshold(optimizer: torch.optim.Optimizer) -> float | None:
    """The EoS threshold where it is defined: SGD-style groups (momentum, no betas)."""
    from gradkit.diagnostics.hessian import optimizer_threshold

    group = optimizer.param_groups[0]
    sgd_like = isinstance(optimizer, torch.optim.SGD) or (
        "momentum" in group and "betas" not in group
    )
    if not sgd_like or group.get("nesterov", False):
        return None
    return optimizer_threshold(optimizer)


def measure_step_safety(
    model: nn.Module,
    inputs: Any,
    optimizer: torch.optim.Optimizer,
    *,
    train: bool,
    sharpness: float | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    b_simple: float | None = None,
    closure: Callable[[], Any] | None = None,
) -> StepSafety:
    """Measure the step the optimizer proposes (gradients must already be in ``.grad``).

    :param inputs: the model's input batch for the JVP (logits = ``model(inputs)``).
    :param train: model mode for the JVP, chosen explicitly (the reference uses eval).
    :param sharpness: :math:`\\lambda_{\\max}` measured elsewhere (e.g. :func:`top_eigenpairs`).
    :param threshold: stability threshold; default :math:`(2+2\\beta)/\\eta` for SGD-style
        optimizers, none otherwise.
    :param batch_size: with ``b_simple``, reports the noise ratio.

    The direction covers ``model.parameters()`` in order; parameters the optimizer does not own
    get a zero component.
    """
    from gradkit.safe_step import softmax_radius

    if not isinstance(train, bool):
        raise ValueError(f"Invalid train: {train!r} (must be True or False, chosen explicitly)")
    model_params = list(model.parameters())
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if not any(id(p) in owned for p in model_params):
        raise ValueError("Invalid optimizer: it owns none of the model's parameters")
    delta_owned = proposed_update(optimizer, [p for p in model_params if id(p) in owned], closure)
    it = iter(delta_owned)
    delta = [next(it) if id(p) in owned else torch.zeros_like(p) for p in model_params]
    tau = math.sqrt(sum(float(d.double().square().sum()) for d in delta))
    rho = softmax_radius(model, inputs, delta, train=train)
    r = tau / rho if rho > 0 else math.inf
    if threshold is None:
        threshold = _default_threshold(optimizer)
    ratio = None if sharpness is None or threshold is None else sharpness / threshold
    noise_ratio = None if batch_size is None or b_simple is None else batch_size / b_simple
    return StepSafety(
        step_length=tau,
        rho_a=rho,
        r=r,
        lr=float(optimizer.param_groups[0].get("lr", math.nan)),
        sharpness=sharpness,
        threshold=threshold,
        sharpness_ratio=ratio,
        batch_size=batch_size,
        b_simple=b_simple,
        noise_ratio=noise_ratio,
    )


def step_safety_probe(
    model: nn.Module, inputs: Any, optimizer: torch.optim.Optimizer, *, train: bool
) -> Callable[[], dict[str, float]]:
    """A :class:`~gradkit.diagnostics.monitor.GradientMonitor` probe (runs before the step, so
    it measures the very step about to be taken): keys ``step_length``, ``rho_a``, ``r``."""

    def probe() -> dict[str, float]:
        report = measure_step_safety(model, inputs, optimizer, train=train)
        return {"step_length": report.step_length, "rho_a": report.rho_a, "r": report.r}

    return probe
