r"""Gradient statistics: per-layer norms, update ratios, noise scale, coherence, conflicts.

* Per-layer gradient, parameter and update norms and the update-to-parameter ratio
  :math:`\|\Delta\theta_l\|/\|\theta_l\|` (a common health signal: around 1e-3 per step for SGD/Adam
  on well-tuned runs; orders of magnitude off means a learning-rate problem).
* Gradient noise scale, McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
  Training", arXiv:1812.06162 (2018), appendix A:
  :math:`\mathcal{B}_{\text{simple}} = \operatorname{tr}(\Sigma)/|G|^2` with :math:`G` the true
  gradient and :math:`\Sigma` the per-example covariance. Since
  :math:`E|G_B|^2 = |G|^2 + \operatorname{tr}(\Sigma)/B`, two batch sizes give unbiased
  estimates (:func:`noise_scale_two_batch`):

  .. math::

      |G|^2 \approx \frac{B_\text{big}|G_\text{big}|^2 - B_\text{small}|G_\text{small}|^2}
      {B_\text{big} - B_\text{small}}, \qquad
      \operatorname{tr}\Sigma \approx \frac{|G_\text{small}|^2 - |G_\text{big}|^2}
      {1/B_\text{small} - 1/B_\text{big}}.

  Per-example gradients give the same two quantities from one batch
  (:func:`noise_scale_per_sample`): :math:`\operatorname{tr}\Sigma \approx \frac{1}{B-1}
  \sum_i\|g_i-\bar g\|^2`, :math:`|G|^2 \approx \|\bar g\|^2 - \operatorname{tr}\Sigma/B`.
  The ratio of two noisy estimates is biased, so :class:`NoiseScaleEMA` averages numerator and
  denominator separately (bias-corrected EMAs) before dividing, as the paper recommends and as
  EleutherAI's gpt-neox ``gradient_noise_scale.py`` does (whose variable names ``noise``/``scale``
  are swapped relative to their meaning; ours follow the paper).
* Gradient coherence, Chatterjee & Zielinski, "Making Coherence Out of Nothing At All: Measuring
  the Evolution of Gradient Alignment", arXiv:2008.01217 (2020):
  :math:`\alpha = \|\bar g\|^2 / \overline{\|g_i\|^2}` over a sample of :math:`m` examples, 1 when
  all examples agree, :math:`1/m` for orthogonal equal-norm gradients; their *m-coherence*
  :math:`m\alpha` counts how many examples of the sample benefit, on average, from a small step
  along one example's gradient.
* The cosine conflict matrix between several losses (reusing :mod:`gradkit.multitask.metrics`).
* :func:`zero_gradient_check`: the "model is not training" alarm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Per-layer norms


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's ``.grad`` (0.0 where it is ``None``)."""
    return {
        n: 0.0 if p.grad is None else float(p.grad.detach().double().norm())
        for n, p in _named_trainable(model)
    }


@torch.no_grad()
def layer_param_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each trainable parameter."""
    return {n: float(p.detach().double().norm()) for n, p in _named_trainable(model)}


@torch.no_grad()
def global_grad_norm(model: nn.Module) -> float:
    """L2 norm of all gradients together (as ``clip_grad_norm_`` reports it, without clipping)."""
    return math.sqrt(sum(v * v for v in layer_grad_norms(model).values()))


class UpdateTracker:
    """Per-layer update norms and update-to-parameter ratios around an optimizer step.

    ``snapshot()`` before ``optimizer.step()``, ``measure()`` after: returns
    ``{"update_norm/<layer>": ..., "update_ratio/<layer>": ..., "update_norm": total}``.
    Costs one copy of the parameters.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> tracker = UpdateTracker(model)
        >>> tracker.snapshot(); opt.step(); stats = tracker.measure()
        >>> round(stats["update_norm/bias"], 6)  # lr * grad = 0.1 * 1
        0.1
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._before: list[Tensor] | None = None

    @torch.no_grad()
    def snapshot(self) -> None:
        self._before = [p.detach().clone() for _, p in _named_trainable(self.model)]

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        if self._before is None:
            raise RuntimeError("UpdateTracker.measure() called before snapshot()")
        stats: dict[str, float] = {}
        total = 0.0
        for (name, p), before in zip(_named_trainable(self.model), self._before, strict=True):
            update = float((p.detach() - before).double().norm())
            param = float(before.double().norm())
            stats[f"update_norm/{name}"] = update
            stats[f"update_ratio/{name}"] = update / param if param > 0 else math.inf
            total += update * update
        stats["update_norm"] = math.sqrt(total)
        self._before = None
        return stats


# --------------------------------------------------------------------------------------------
# Per-example gradients


def per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    train: bool,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-example gradients ``[B, n]`` (flattened trainable parameters) via
    ``torch.func.vmap(grad(...))``.

    ``loss_fn(output, target)`` is called on one example with a batch axis of size 1.
    ``train`` picks the model's mode explicitly. In train mode, dropout draws a different mask
    per example (``randomness="different"``); batch norm in train mode has no per-example meaning
    (its statistics couple the batch) and is refused -- use ``train=False``.
    """
    from torch.func import functional_call, grad, vmap

    if not isinstance(train, bool):
        raise ValueError(f"Invalid train: {train!r} (must be True or False, chosen explicitly)")
    if train and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("Invalid train: True with batch norm (per-example statistics undefined)")
    named = _named_trainable(model)
    params = {n: p.detach() for n, p in named}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    was_training = model.training
    model.train(train)
    try:
        grads = vmap(
            grad(one), in_dims=(None, 0, 0), randomness="different", chunk_size=chunk_size
        )(params, inputs, targets)
    finally:
        model.train(was_training)
    return torch.cat([grads[n].reshape(inputs.shape[0], -1) for n, _ in named], dim=1)


# --------------------------------------------------------------------------------------------
# Gradient noise scale


@dataclass
class NoiseScaleEstimate:
    """Unbiased estimates of :math:`|G|^2` and :math:`\\operatorname{tr}\\Sigma`;
    ``b_simple`` is their ratio (``inf`` when the |G|^2 estimate is <= 0, as it can be when noise
    dominates)."""

    grad_sq: float
    trace_cov: float

    @property
    def b_simple(self) -> float:
        return self.trace_cov / self.grad_sq if self.grad_sq > 0 else math.inf


def noise_scale_two_batch(
    small_grad_sq: float, big_grad_sq: float, small_batch: int, big_batch: int
) -> NoiseScaleEstimate:
    """McCandlish et al.'s two-batch-size estimator from :math:`|G_B|^2` at two sizes.

    >>> est = noise_scale_two_batch(small_grad_sq=3.0, big_grad_sq=1.5, small_batch=2, big_batch=8)
    >>> est.grad_sq, est.trace_cov, est.b_simple
    (1.0, 4.0, 4.0)
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(
            f"Invalid batch sizes: small_batch={small_batch!r}, big_batch={big_batch!r} "
            "(need 0 < small_batch < big_batch)"
        )
    grad_sq = (big_batch * big_grad_sq - small_batch * small_grad_sq) / (big_batch - small_batch)
    trace_cov = (small_grad_sq - big_grad_sq) / (1 / small_batch - 1 / big_batch)
    return NoiseScaleEstimate(grad_sq, trace_cov)


def noise_scale_per_sample(per_sample: Tensor) -> NoiseScaleEstimate:
    r"""The one-batch estimator from per-example gradients ``[B, n]`` (B >= 2)."""
    if per_sample.ndim != 2 or per_sample.shape[0] < 2:
        raise ValueError(f"Invalid per_sample: shape {tuple(per_sample.shape)} (need [B >= 2, n])")
    g = per_sample.double()
    b = g.shape[0]
    mean = g.mean(dim=0)
    trace_cov = float((g - mean).square().sum()) / (b - 1)
    grad_sq = float(mean.square().sum()) - trace_cov / b
    return NoiseScaleEstimate(grad_sq, trace_cov)


def noise_scale_from_batches(batch_grads: Tensor, batch_size: int) -> NoiseScaleEstimate:
    """Two-batch estimator from ``K >= 2`` gradients ``[K, n]`` of independent batches of size
    ``batch_size`` taken at the *same* parameters: small = each batch (|G_B|^2 averaged over the K),
    big = their mean (size ``K * batch_size``). Unlike gpt-neox's sequential micro-batches there is
    no stale-parameter bias, because nothing steps in between."""
    if batch_grads.ndim != 2 or batch_grads.shape[0] < 2:
        raise ValueError(
            f"Invalid batch_grads: shape {tuple(batch_grads.shape)} (need [K >= 2, n])"
        )
    g = batch_grads.double()
    small = float(g.square().sum(dim=1).mean())
    big = float(g.mean(dim=0).square().sum())
    return noise_scale_two_batch(small, big, batch_size, batch_size * g.shape[0])


@dataclass
class NoiseScaleEMA:
    """Bias-corrected EMAs of :math:`|G|^2` and :math:`\\operatorname{tr}\\Sigma`, divided after
    averaging (the ratio of EMAs, not the EMA of ratios). ``beta=0.99`` as in the paper's code."""

    beta: float = 0.99
    _grad_sq: float = 0.0
    _trace_cov: float = 0.0
    count: int = 0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise ValueError(f"Invalid beta: {self.beta!r} (must be in [0, 1))")

    def update(self, estimate: NoiseScaleEstimate) -> float:
        if not (math.isfinite(estimate.grad_sq) and math.isfinite(estimate.trace_cov)):
            return self.value  # skip non-finite estimates (gpt-neox does the same)
        self.count += 1
        self._grad_sq = self.beta * self._grad_sq + (1 - self.beta) * estimate.grad_sq
        self._trace_cov = self.beta * self._trace_cov + (1 - self.beta) * estimate.trace_cov
        self.history.append(self.value)
        return self.value

    @property
    def value(self) -> float:
        """Current :math:`B_\\text{simple}` (NaN before the first update)."""
        if self.count == 0:
            return math.nan
        correction = 1 - self.beta**self.count
        grad_sq, trace_cov = self._grad_sq / correction, self._trace_cov / correction
        return trace_cov / grad_sq if grad_sq > 0 else math.inf


# --------------------------------------------------------------------------------------------
# Coherence and conflicts


def gradient_coherence(per_sample: Tensor) -> dict[str, float]:
    r"""Chatterjee & Zielinski's :math:`\alpha = \|\bar g\|^2/\overline{\|g_i\|^2}`, the
    m-coherence :math:`m\alpha` (1 for orthogonal examples, ``m`` for identical ones) and the mean
    pairwise cosine over pairs ``i != j``.

    >>> import torch
    >>> gradient_coherence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))["alpha"]
    0.5
    """
    if per_sample.ndim != 2 or per_sample.shape[0] < 2:
        raise ValueError(f"Invalid per_sample: shape {tuple(per_sample.shape)} (need [B >= 2, n])")
    from gradkit.multitask.metrics import cosine_matrix

    g = per_sample.double()
    b = g.shape[0]
    mean_sq_norm = float(g.square().sum(dim=1).mean())
    alpha = float(g.mean(dim=0).square().sum()) / mean_sq_norm if mean_sq_norm > 0 else math.nan
    cos = cosine_matrix(g)
    off = (cos.sum() - cos.diagonal().sum()) / (b * (b - 1))
    return {"alpha": alpha, "m_coherence": b * alpha, "mean_cosine": float(off)}


def loss_gradient_matrix(losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """Jacobian ``[m, n]`` of several scalar losses (uses :func:`gradkit.multitask.jacobian`)."""
    from gradkit.multitask.jacobian import jacobian

    return jacobian(list(losses), list(params), retain_graph=True).detach()


def conflict_report(losses: Sequence[Tensor], params: Sequence[Tensor]) -> dict[str, Any]:
    """The pairwise cosine matrix between the losses' gradients and the scalar conflict metrics
    of :func:`gradkit.multitask.metrics.conflict_metrics` (``"cosine_matrix"``: ``[m, m]``)."""
    from gradkit.multitask.metrics import conflict_metrics, cosine_matrix

    jac = loss_gradient_matrix(losses, params)
    return {"cosine_matrix": cosine_matrix(jac), **conflict_metrics(jac)}


# --------------------------------------------------------------------------------------------
# Is the model training at all?


@dataclass
class TrainingCheck:
    """Result of :func:`zero_gradient_check`. ``fired`` means no trainable parameter received a
    non-zero finite gradient; ``reason`` says why in one line."""

    fired: bool
    reason: str
    frozen: list[str]
    missing: list[str]
    zero: list[str]
    nonfinite: list[str]


@torch.no_grad()
def zero_gradient_check(model: nn.Module, *, raise_error: bool = False) -> TrainingCheck:
    """Call after ``backward()``: lists frozen parameters (``requires_grad=False``), missing
    gradients (``.grad is None``), all-zero and non-finite gradients. Fires when nothing would
    train; ``raise_error=True`` raises ``RuntimeError(reason)`` instead of returning.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1).requires_grad_(False)
        >>> zero_gradient_check(model).reason
        'model is not training: all 2 parameters are frozen (requires_grad=False)'
    """
    frozen, missing, zero, nonfinite, healthy = [], [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen.append(name)
        elif p.grad is None:
            missing.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            nonfinite.append(name)
        elif not bool(p.grad.any()):
            zero.append(name)
        else:
            healthy.append(name)
    total = len(frozen) + len(missing) + len(zero) + len(nonfinite) + len(healthy)
    fired = not healthy
    if total == 0:
        reason = "model is not training: it has no parameters"
    elif len(frozen) == total:
        reason = f"model is not training: all {total} parameters are frozen (requires_grad=False)"
    elif fired:
        parts = [
            f"{len(v)} {k}"
            for k, v in (
                ("without .grad (backward not called or disconnected)", missing),
                ("all-zero", zero),
                ("non-finite", nonfinite),
                ("frozen", frozen),
            )
            if v
        ]
        reason = (
            "model is not training: no parameter has a usable gradient (" + ", ".join(parts) + ")"
        )
    else:
        reason = f"{len(healthy)} of {total} parameters have non-zero finite gradients"
    if fired and raise_error:
        raise RuntimeError(reason)
    return TrainingCheck(fired, reason, frozen, missing, zero, nonfinite)
