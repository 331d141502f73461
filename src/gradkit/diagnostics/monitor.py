r"""Training-health monitoring: :class:`GradientMonitor`, sinks and a :class:`SpikeDetector`.

The monitor attaches to any model and optimizer. Every ``every`` steps it computes cheap
statistics (loss, global and per-layer gradient norms, per-layer update norms and
update-to-parameter ratios, learning rate, a zero-gradient alarm); every ``probe_every`` steps it
runs the expensive probes you give it (sharpness, step safety, noise scale: any callable returning
a dict of floats). Results go to sinks: TensorBoard's ``SummaryWriter``, a CSV file, or any
callable ``sink(step, scalars)``.

The spike detector follows the rule of OLMo-core's ``SkipStepOptimizer`` (allenai/OLMo-core,
``optim/skip_step_optimizer.py``): a value is a spike when its z-score against a rolling window of
previous values (the current one excluded) exceeds ``z_threshold`` (default 6 sigma, window 128,
inactive until ``min_history`` values were seen). OLMo-core *reacts* (skips the step); we
*record*: each :class:`SpikeEvent` says which signal fired, its value, the window's mean and
standard deviation, and a ``context`` copy of the latest statistics and probe results (e.g. the
sharpness ratio or the step-safety ratio :math:`r=\tau/\rho_a`), so a spike can be linked to a
cause. A non-finite loss or gradient norm fires at once.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

Scalars = Mapping[str, float]


class Sink(Protocol):
    def write(self, step: int, scalars: Scalars) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Writes every scalar with ``SummaryWriter.add_scalar(tag, value, step)``
    (``torch.utils.tensorboard``, imported when the sink is created)."""

    def __init__(self, log_dir: str | Path, **writer_kwargs: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), **writer_kwargs)

    def write(self, step: int, scalars: Scalars) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class CSVSink:
    """Appends rows ``step,tag,value`` (long format: the set of tags may change between steps,
    e.g. probes run only on some). The header is written once for a new file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "tag", "value"])

    def write(self, step: int, scalars: Scalars) -> None:
        self._writer.writerows([step, tag, repr(float(v))] for tag, v in scalars.items())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class CallbackSink:
    """Calls ``fn(step, scalars)``."""

    def __init__(self, fn: Callable[[int, Scalars], Any]) -> None:
        self.fn = fn

    def write(self, step: int, scalars: Scalars) -> None:
        self.fn(step, dict(scalars))

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Spike detection


@dataclass
class SpikeEvent:
    """Why the detector fired: ``signal`` ("loss" or "grad_norm"), ``value``, window ``mean`` and
    ``std``, ``z`` score, a one-line ``reason`` and a ``context`` snapshot of the latest stats."""

    step: int
    signal: str
    value: float
    mean: float
    std: float
    z: float
    reason: str
    context: dict[str, float] = field(default_factory=dict)


class SpikeDetector:
    """Rolling z-score spike detector over loss and gradient norm.

    :param window: number of previous values the mean and standard deviation use (128).
    :param z_threshold: fire when ``|value - mean| / std > z_threshold`` (6.0).
    :param min_history: stay silent until this many values were seen (20; OLMo-core uses
        ``max(20, window // 2)``).
    :param two_sided: also fire on sudden drops (default ``False``: only increases are spikes).

    The window includes earlier spikes (as OLMo-core's does). A constant series has std 0; a
    floor of ``1e-6 * |mean| + 1e-12`` keeps rounding noise from firing.

    Example:
        >>> det = SpikeDetector(window=10, min_history=5)
        >>> for step in range(10):
        ...     _ = det.update(step, loss=1.0 + 0.01 * (step % 2))
        >>> [e.signal for e in det.update(10, loss=5.0)]
        ['loss']
    """

    def __init__(
        self,
        window: int = 128,
        z_threshold: float = 6.0,
        min_history: int = 20,
        *,
        two_sided: bool = False,
    ) -> None:
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"Invalid window: {window!r} (must be an integer >= 2)")
        if not z_threshold > 0:
            raise ValueError(f"Invalid z_threshold: {z_threshold!r} (must be > 0)")
        if not isinstance(min_history, int) or not 2 <= min_history <= window:
            raise ValueError(f"Invalid min_history: {min_history!r} (must be in [2, window])")
        self.window, self.z_threshold, self.min_history = window, z_threshold, min_history
        self.two_sided = two_sided
        self.history: dict[str, deque[float]] = {}
        self.events: list[SpikeEvent] = []

    def _check(self, step: int, signal: str, value: float, context: Scalars) -> SpikeEvent | None:
        past = self.history.setdefault(signal, deque(maxlen=self.window))
        event = None
        if not math.isfinite(value):
            event = SpikeEvent(
                step,
                signal,
                value,
                math.nan,
                math.nan,
                math.inf,
                f"non-finite {signal} ({value}) at step {step}",
                dict(context),
            )
        elif len(past) >= self.min_history:
            n = len(past)
            mean = math.fsum(past) / n  # plain Python: a tensor round trip costs more here
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in past) / (n - 1))
            std = max(std, 1e-6 * abs(mean) + 1e-12)
            z = (value - mean) / std
            if z > self.z_threshold or (self.two_sided and -z > self.z_threshold):
                reason = (
                    f"{signal} z-score {z:.1f} beyond {self.z_threshold:g} at step {step}: value "
                    f"{value:.4g} vs mean {mean:.4g} +/- {std:.3g} over the last {len(past)} steps"
                )
                event = SpikeEvent(step, signal, value, mean, std, z, reason, dict(context))
        if math.isfinite(value):
            past.append(value)
        if event is not None:
            self.events.append(event)
        return event

    def update(
        self,
        step: int,
        *,
        loss: float | None = None,
        grad_norm: float | None = None,
        context: Scalars | None = None,
    ) -> list[SpikeEvent]:
        """Check the new values; returns the events fired at this step (possibly empty)."""
        fired = []
        for signal, value in (("loss", loss), ("grad_norm", grad_norm)):
            if value is not None:
                event = self._check(step, signal, float(value), context or {})
                if event is not None:
                    fired.append(event)
        return fired


# --------------------------------------------------------------------------------------------
# The monitor


def _as_sink(sink: Any) -> Sink:
    if hasattr(sink, "write") and hasattr(sink, "close"):
        return sink
    if callable(sink):
        return CallbackSink(sink)
    raise ValueError(f"Invalid sink: {sink!r} (need .write/.close or a callable)")


class GradientMonitor:
    """Watches a model and optimizer; computes statistics and writes them to sinks.

    :param model: the network (the parameters with ``requires_grad`` when the monitor first
        runs are watched; build a new monitor after freezing or unfreezing layers).
    :param optimizer: a ``torch.optim.Optimizer``: the monitor registers step pre/post hooks, so
        ``optimizer.step()`` alone triggers it. For anything else (or ``None``), call
        :meth:`before_step` after ``backward()`` and :meth:`after_step` after the step yourself.
    :param sinks: sinks or callables ``fn(step, scalars)``.
    :param every: compute the cheap statistics every ``every`` steps (1).
    :param probes: name -> callable returning a dict of floats; run every ``probe_every`` steps
        in :meth:`before_step` (after ``backward()``, before the step, with the monitor's hooks
        silenced so a probe may call ``optimizer.step()``), logged as ``probe/<name>/<key>``.
    :param per_layer: also log per-layer gradient norms and update ratios (``True``).
    :param spike_detector: a :class:`SpikeDetector` (default one), or ``None`` to disable.

    Tags: ``loss`` (if :meth:`observe_loss` was called), ``grad_norm``, ``update_norm``, ``lr``,
    ``grad_norm/<param>``, ``update_ratio/<param>``, ``not_training`` (1.0 when the zero-gradient
    check fires), ``spike`` (number of spike events at that step), ``probe/...``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rows = []
        >>> with GradientMonitor(model, opt, sinks=[lambda step, s: rows.append((step, s))]) as mon:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         loss = model(torch.randn(4, 3)).pow(2).mean()
        ...         loss.backward()
        ...         mon.observe_loss(loss)
        ...         opt.step()
        >>> len(rows), sorted(rows[0][1])[:3]
        (3, ['grad_norm', 'grad_norm/bias', 'grad_norm/weight'])
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any = None,
        *,
        sinks: Sequence[Any] = (),
        every: int = 1,
        probes: Mapping[str, Callable[[], Scalars]] | None = None,
        probe_every: int = 100,
        per_layer: bool = True,
        spike_detector: SpikeDetector | str | None = "default",
    ) -> None:
        for name, value in (("every", every), ("probe_every", probe_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")
        self.model, self.optimizer = model, optimizer
        self.sinks = [_as_sink(s) for s in sinks]
        self.every, self.probe_every, self.per_layer = every, probe_every, per_layer
        self.probes = dict(probes or {})
        self.spikes = SpikeDetector() if spike_detector == "default" else spike_detector
        self.step = 0
        self.last: dict[str, float] = {}
        self.last_probes: dict[str, float] = {}
        self.not_training_reason: str | None = None
        self._loss: float | None = None
        self._pending: dict[str, float] | None = None
        self._before: list[Tensor] | None = None
        self._handles: list[Any] = []
        self._probing = False
        self._named: list[tuple[str, Tensor]] | None = None  # trainable parameters, by name
        self._probe_results: dict[str, float] = {}

    # -- wiring ------------------------------------------------------------------------------
    def attach(self) -> GradientMonitor:
        """Register the optimizer hooks (no-op without a ``torch.optim.Optimizer``)."""
        if isinstance(self.optimizer, torch.optim.Optimizer) and not self._handles:
            # a probe may itself call optimizer.step() (step safety): ignore those calls
            pre = self.optimizer.register_step_pre_hook(
                lambda *_: None if self._probing else self.before_step()
            )
            post = self.optimizer.register_step_post_hook(
                lambda *_: None if self._probing else self.after_step()
            )
            self._handles = [pre, post]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def close(self) -> None:
        self.detach()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> GradientMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per step ----------------------------------------------------------------------------
    def observe_loss(self, loss: Tensor | float) -> None:
        """The loss of the current step (call before ``optimizer.step()``)."""
        self._loss = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)

    def _params(self) -> list[tuple[str, Tensor]]:
        # cached: walking the module tree every step is a visible cost on small models
        if self._named is None:
            self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return self._named

    @torch.no_grad()
    def before_step(self) -> None:
        """Gradient statistics, due probes and a parameter snapshot; call after
        ``backward()``, before the step (probes thus see the gradients and parameters of the step
        about to be taken)."""
        self._probe_results = {}
        if self.probes and self.step % self.probe_every == 0:
            self._probing = True
            try:
                with torch.enable_grad():
                    self._probe_results = self.last_probes = self._run_probes()
            finally:
                self._probing = False
        if self.step % self.every:
            self._pending = None
            return
        named = self._params()
        with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
        stats: dict[str, float] = {}
        if self._loss is not None:
            stats["loss"] = self._loss
        norms = torch._foreach_norm([g for _, g in with_grad]) if with_grad else []
        values = torch.stack(norms).tolist() if with_grad else []
        stats["grad_norm"] = math.sqrt(sum(v * v for v in values))
        if self.per_layer:
            stats.update({f"grad_norm/{n}": v for (n, _), v in zip(with_grad, values, strict=True)})
        stats["not_training"] = float(self._zero_gradient(named, values))
        if self.optimizer is not None and hasattr(self.optimizer, "param_groups"):
            stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        # one batched copy instead of a clone per tensor (per-op dispatch dominates small models)
        params = [p.detach() for _, p in named]
        self._before = list(torch._foreach_mul(params, 1.0)) if params else []
        self._pending = stats

    def _zero_gradient(self, named: list[tuple[str, Tensor]], norms: list[float]) -> bool:
        from gradkit.diagnostics.gradstats import zero_gradient_check

        if any(v > 0 and math.isfinite(v) for v in norms):
            return False
        check = zero_gradient_check(self.model)
        if check.fired and self.not_training_reason is None:
            warnings.warn(f"step {self.step}: {check.reason}", RuntimeWarning, stacklevel=4)
            self.not_training_reason = check.reason
        return check.fired

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """Update statistics, probes, spike check; writes to the sinks. Returns the scalars."""
        stats = self._pending or {}
        if self._pending is not None and self._before is not None:
            self._update_stats(stats)
        stats.update(self._probe_results)
        if stats and self.spikes is not None:
            context = {**self.last_probes, **stats}
            fired = self.spikes.update(
                self.step,
                loss=stats.get("loss"),
                grad_norm=stats.get("grad_norm"),
                context=context,
            )
            stats["spike"] = float(len(fired))
        if stats:
            for sink in self.sinks:
                sink.write(self.step, stats)
            self.last = dict(stats)
        self.step += 1
        self._pending, self._before, self._loss = None, None, None
        self._probe_results = {}
        return stats

    def _update_stats(self, stats: dict[str, float]) -> None:
        named = self._params()
        params = [p.detach() for _, p in named]
        if not params:
            stats["update_norm"] = 0.0
            return
        deltas = torch._foreach_sub(params, self._before)
        both = torch.stack(torch._foreach_norm([*deltas, *self._before])).tolist()
        updates, sizes = both[: len(params)], both[len(params) :]
        stats["update_norm"] = math.sqrt(sum(u * u for u in updates))
        if self.per_layer:
            for (name, _), u, s in zip(named, updates, sizes, strict=True):
                stats[f"update_ratio/{name}"] = u / s if s > 0 else math.inf

    def _run_probes(self) -> dict[str, float]:
        out = {}
        for name, probe in self.probes.items():
            for key, value in probe().items():
                out[f"probe/{name}/{key}"] = float(value)
        return out

    @property
    def spike_events(self) -> list[SpikeEvent]:
        return [] if self.spikes is None else self.spikes.events


def sharpness_probe(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
    *,
    train: bool,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    momentum: float = 0.0,
    tol: float = 1e-3,
    max_steps: int = 30,
) -> Callable[[], dict[str, float]]:
    """A probe for :class:`GradientMonitor`: top Hessian eigenvalue on fixed ``batches`` and its
    ratio to the edge-of-stability threshold (read from an SGD-style ``optimizer``, or from
    ``lr``/``momentum``). Keys: ``sharpness``, ``threshold``, ``ratio``."""
    from gradkit.diagnostics.hessian import (
        HessianOperator,
        optimizer_threshold,
        stability_threshold,
        top_eigenpairs,
    )

    if optimizer is None and lr is None:
        raise ValueError("Invalid arguments: pass optimizer or lr (needed for the threshold)")

    def probe() -> dict[str, float]:
        op = HessianOperator(model, loss_fn, batches, train=train)
        top = float(top_eigenpairs(op, 1, tol=tol, max_steps=max_steps).eigenvalues[0])
        threshold = (
            optimizer_threshold(optimizer)
            if optimizer is not None
            else stability_threshold(lr, momentum)  # type: ignore[arg-type]
        )
        return {"sharpness": top, "threshold": threshold, "ratio": top / threshold}

    return probe


def noise_scale_probe(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    train: bool,
) -> Callable[[], dict[str, float]]:
    """A probe for :class:`GradientMonitor`: the per-example gradient noise scale on a fixed
    batch (:func:`~gradkit.diagnostics.gradstats.noise_scale_per_sample`; ``loss_fn(output,
    target)`` on one example). Keys: ``b_simple``, ``grad_sq``, ``trace_cov``."""
    from gradkit.diagnostics.gradstats import noise_scale_per_sample, per_sample_gradients

    def probe() -> dict[str, float]:
        grads = per_sample_gradients(model, loss_fn, inputs, targets, train=train)
        est = noise_scale_per_sample(grads)
        return {"b_simple": est.b_simple, "grad_sq": est.grad_sq, "trace_cov": est.trace_cov}

    return probe
