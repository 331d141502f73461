r"""Learning-rate schedules as plain callables ``step -> value``.

A schedule maps the number of optimizer steps already taken, ``t = 0, 1, 2, ...`` (torch's
``LRScheduler.last_epoch``), to a number. With the default ``peak=1.0`` the number is a multiplier
of the base learning rate (what :class:`~gradkit.schedules.ScheduleLR` applies by default); give
``peak=3e-4`` and it is the learning rate itself (``ScheduleLR(..., multiply=False)``). Every
schedule is a frozen dataclass: it has a readable ``repr``, compares by value, pickles, and holds no
state, so the step count is the only thing a checkpoint has to remember.

Conventions shared by all schedules here (those of Optax and Hugging Face ``transformers``):

* warm-up is linear from ``init`` at ``t = 0`` to ``peak`` at ``t = warmup_steps``;
* a decay reaches ``final`` at ``t = total_steps`` and stays there; with ``total_steps`` optimizer
  steps numbered ``0 .. total_steps - 1`` the last step therefore uses a value one decay-step above
  ``final`` (so a ``final=0`` schedule never wastes a step with a zero learning rate).

Example:
    >>> from gradkit.schedules import CosineDecay, WarmupStableDecay
    >>> cos = CosineDecay(total_steps=100, warmup_steps=10, final=0.1)
    >>> [round(cos(t), 4) for t in (0, 5, 10, 55, 100)]
    [0.0, 0.5, 1.0, 0.55, 0.1]
    >>> wsd = WarmupStableDecay(total_steps=100, warmup_steps=10, decay_fraction=0.2, shape="1-sqrt")
    >>> [round(wsd(t), 4) for t in (0, 10, 50, 80, 95, 100)]
    [0.0, 1.0, 1.0, 1.0, 0.134, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from gradkit.schedules._checks import check_finite, check_fraction, check_int

#: decay shapes of :class:`WarmupStableDecay`: fraction ``x`` of the decay phase -> factor in [0, 1]
DECAY_SHAPES: dict[str, object] = {
    "linear": lambda x: 1.0 - x,
    "cosine": lambda x: 0.5 * (1.0 + math.cos(math.pi * x)),
    "1-sqrt": lambda x: 1.0 - math.sqrt(x),
}


def _check_step(step: float) -> float:
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not step >= 0:
        raise ValueError(f"Invalid step: {step!r} (expected a number >= 0)")
    return step


class Schedule:
    """Base class: a callable ``step -> float``. Subclasses implement :meth:`value`."""

    def value(self, step: float) -> float:
        raise NotImplementedError

    def __call__(self, step: float) -> float:
        return self.value(_check_step(step))

    def values(self, steps: int) -> list[float]:
        """The schedule at ``t = 0 .. steps - 1`` (handy for plots and tests)."""
        return [self(t) for t in range(steps)]


def _warmup(step: float, warmup_steps: int, init: float, peak: float) -> float:
    return init + (peak - init) * step / warmup_steps


def _check_warmup(warmup_steps: int, total_steps: int | None = None) -> None:
    check_int("warmup_steps", warmup_steps)
    if total_steps is not None and warmup_steps > total_steps:
        raise ValueError(
            f"Invalid warmup_steps: {warmup_steps!r} (must be <= total_steps={total_steps})"
        )


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    r"""Linear warm-up, then constant: :math:`\mathrm{init} + (\mathrm{peak}-\mathrm{init})\,
    \min(t/W, 1)`.

    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
    arXiv:1706.02677 (gradual warm-up, section 2.2).

    Example:
        >>> [LinearWarmup(warmup_steps=4)(t) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    warmup_steps: int
    peak: float = 1.0
    init: float = 0.0

    def __post_init__(self) -> None:
        _check_warmup(self.warmup_steps)
        check_finite("peak", self.peak)
        check_finite("init", self.init)

    def value(self, step: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.init, self.peak)
        return float(self.peak)


@dataclass(frozen=True)
class _Decay(Schedule):
    """Optional linear warm-up to ``peak``, then a decay to ``final`` at ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0
    peak: float = 1.0
    final: float = 0.0
    init: float = 0.0

    def __post_init__(self) -> None:
        check_int("total_steps", self.total_steps, minimum=1)
        _check_warmup(self.warmup_steps, self.total_steps)
        for name in ("peak", "final", "init"):
            check_finite(name, getattr(self, name))

    def _factor(self, fraction: float) -> float:
        raise NotImplementedError

    def value(self, step: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.init, self.peak)
        if step >= self.total_steps:
            return float(self.final)
        fraction = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.final + (self.peak - self.final) * self._factor(fraction)


@dataclass(frozen=True)
class LinearDecay(_Decay):
    r"""Warm-up, then linear decay: :math:`\mathrm{final} + (\mathrm{peak}-\mathrm{final})
    (1 - \frac{t - W}{T - W})`.

    The worst-case-optimal last-iterate schedule of Defazio, Cutkosky, Mehta & Mishchenko, "When,
    Why and How Much? Adaptive Learning Rate Scheduling by Refinement", 2023, arXiv:2310.07831
    (:math:`\eta_t \propto 1 - t/T`); they find it matches or beats cosine on most workloads.

    Example:
        >>> LinearDecay(total_steps=10, warmup_steps=2).values(4)
        [0.0, 0.5, 1.0, 0.875]
    """

    def _factor(self, fraction: float) -> float:
        return 1.0 - fraction


@dataclass(frozen=True)
class CosineDecay(_Decay):
    r"""Warm-up, then cosine decay: :math:`\mathrm{final} + (\mathrm{peak}-\mathrm{final})
    \tfrac12\bigl(1 + \cos(\pi\,\tfrac{t - W}{T - W})\bigr)`.

    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
    arXiv:1608.03983 (one cycle, no restart; ``final`` is their :math:`\eta_{\min}`).

    Example:
        >>> CosineDecay(total_steps=4).values(5)[2]
        0.5
    """

    def _factor(self, fraction: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    r"""Warm-up-stable-decay (WSD, "trapezoidal"): warm up, hold ``peak``, then cool down over the
    last ``decay_fraction`` of training.

    With :math:`D = \mathrm{round}(\mathrm{decay\_fraction}\cdot T)` decay steps starting at
    :math:`S = T - D`, the value is ``peak`` for :math:`W \le t < S` and
    :math:`\mathrm{final} + (\mathrm{peak}-\mathrm{final})\, f\bigl(\tfrac{t - S}{D}\bigr)` for
    :math:`S \le t \le T`, with the cool-down shape :math:`f(x)`:

    * ``"linear"``: :math:`1 - x`;
    * ``"cosine"``: :math:`\tfrac12(1 + \cos \pi x)`;
    * ``"1-sqrt"``: :math:`1 - \sqrt{x}` -- the shape Hägele et al. find best.

    Hägele, Bakouch, Kosson, Ben Allal, von Werra & Jaggi, "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations", NeurIPS 2024, arXiv:2405.18392 (cool-down shapes;
    1-sqrt; a cool-down of 10-20% of training matches cosine). Hu et al., "MiniCPM:
    Unveiling the Potential of Small Language Models with Scalable Training Strategies", 2024,
    arXiv:2404.06395 (named the WSD schedule).

    Our choices: MiniCPM's own decay is exponential (:math:`0.5^{(t-S)/T_{1/2}}`), which never
    reaches ``final``; we offer the three shapes of Hägele et al. that end exactly at ``final``.
    ``decay_fraction`` is a fraction of ``total_steps`` (warm-up included), as in both papers.

    Example:
        >>> wsd = WarmupStableDecay(total_steps=10, decay_fraction=0.4, shape="linear")
        >>> wsd.values(11)
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """

    shapes: ClassVar[tuple[str, ...]] = tuple(DECAY_SHAPES)

    total_steps: int
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    shape: str = "1-sqrt"
    peak: float = 1.0
    final: float = 0.0
    init: float = 0.0

    def __post_init__(self) -> None:
        check_int("total_steps", self.total_steps, minimum=1)
        _check_warmup(self.warmup_steps, self.total_steps)
        check_fraction("decay_fraction", self.decay_fraction)
        if self.shape not in DECAY_SHAPES:
            choices = ", ".join(map(repr, DECAY_SHAPES))
            raise ValueError(f"Invalid shape: {self.shape!r} (choose one of {choices})")
        for name in ("peak", "final", "init"):
            check_finite(name, getattr(self, name))
        if self.decay_start < self.warmup_steps:
            raise ValueError(
                f"Invalid decay_fraction: {self.decay_fraction!r} (the decay would start at step "
                f"{self.decay_start}, before the warm-up ends at {self.warmup_steps})"
            )

    @property
    def decay_steps(self) -> int:
        return round(self.decay_fraction * self.total_steps)

    @property
    def decay_start(self) -> int:
        return self.total_steps - self.decay_steps

    def value(self, step: float) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps, self.init, self.peak)
        if step >= self.total_steps:
            return float(self.final)
        if step < self.decay_start:
            return float(self.peak)
        fraction = (step - self.decay_start) / self.decay_steps
        return self.final + (self.peak - self.final) * DECAY_SHAPES[self.shape](fraction)
