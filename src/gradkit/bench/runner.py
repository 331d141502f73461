"""Train one optimizer on one workload with one seed and record everything a report needs.

The clock follows AlgoPerf's ``submission_runner.py`` (Dahl et al. 2023, arXiv:2306.07179;
https://github.com/mlcommons/algorithmic-efficiency): every training step is timed (minibatch
construction, Hessian probes, the optimizer step and the learning-rate schedule included), and
the clock pauses while the harness evaluates. Time-to-target is the training time at the first
evaluation whose validation metric reaches the workload's target.

Peak memory: the growth of the process's resident set over its value before training, read from
``/proc/self/status`` (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, Linux);
``torch.cuda.max_memory_allocated`` growth when the model lives on a GPU; 0 where neither is
available. RSS growth is noisy (the allocator reuses memory freed by earlier runs in the same
process); ``state_bytes`` (tensor bytes in ``optimizer.state``) is exact.
"""

from __future__ import annotations

import math
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradkit.bench.records import RunRecord

EXPLODE_FACTOR = 10.0
"""A training loss above this multiple of the first step's loss (the loss at initialization)
counts as divergence."""

Progress = Callable[[int, int], None]


class _DivergedError(Exception):
    pass


def flushes_denormals() -> bool:
    """Whether torch flushes denormals now (torch has no getter: a denormal survives a
    multiplication by 1 unless flushing is on)."""
    return bool((torch.tensor(1e-40, dtype=torch.float32) * 1.0) == 0)


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak or Linux RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "none"
        self.start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start, self.method = torch.cuda.memory_allocated(self.device), "cuda_allocated"
        elif _reset_rss_peak():
            self.start, self.method = _status_kib("VmRSS") * 1024, "rss_hwm"
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def peak_bytes(self) -> int:
        if self.method == "cuda_allocated":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.start)
        if self.method == "rss_hwm":
            return max(0, _status_kib("VmHWM") * 1024 - self.start)
        return 0


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 resets VmHWM to the current RSS
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of tensors held in ``optimizer.state``, step counters excluded."""
    total = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                total += value.numel() * value.element_size()
    return total


def _device_of(task: Any) -> torch.device:
    for p in task.model.parameters():
        return p.device
    return torch.device("cpu")


def _refresh_curvature(opt: torch.optim.Optimizer, batch_loss: Callable, params: list, seed: int):
    """Sophia/OASIS: a Hutchinson diagonal-Hessian probe on the current minibatch when due."""
    from gradkit.optim import hutchinson_diagonal

    if getattr(opt, "hessian_due", lambda: True)():
        generator = opt.hessian_generator(seed)  # type: ignore[attr-defined]
        opt.update_hessian(hutchinson_diagonal(batch_loss, params, generator=generator))  # type: ignore[attr-defined]


class _Curve:
    def __init__(self, target: float) -> None:
        self.target = target
        self.steps: list[int] = []
        self.train_time: list[float] = []
        self.values: list[float] = []
        self.train_loss: list[float] = []
        self.steps_to_target: int | None = None
        self.time_to_target: float | None = None

    def add(self, step: int, seconds: float, value: float, loss: float) -> None:
        self.steps.append(step)
        self.train_time.append(seconds)
        self.values.append(value)
        self.train_loss.append(loss)
        if self.steps_to_target is None and value <= self.target:
            self.steps_to_target, self.time_to_target = step, seconds


def train(
    workload: Any,
    task: Any | None,
    spec: Any,
    hparams: dict[str, Any],
    seed: int,
    *,
    study: int = 0,
    trial: int = 0,
    suite: str = "",
    stop_at_target: bool = False,
    progress: Progress | None = None,
) -> RunRecord:
    """Train ``spec``'s optimizer with ``hparams`` on ``task`` (``workload.setup(seed)``, made
    here, untimed, when ``task`` is None) for
    ``workload.max_steps`` steps, evaluating every ``workload.eval_every`` steps and at the end.

    Never raises for a failing run: an exception gives ``status="failed"`` with the error text,
    a non-finite or exploding training loss (above ``EXPLODE_FACTOR`` times the first step's) or
    a non-finite validation metric gives ``status="diverged"`` and stops the run early.
    Denormals are flushed while training and the previous setting is restored. With
    ``stop_at_target`` the run ends at the first evaluation that reaches the target (AlgoPerf
    stops there too; the curve is then shorter). ``progress(step, max_steps)`` is called after
    every evaluation.
    """
    curve = _Curve(float(workload.target))
    status, error, seconds, opt = "ok", None, 0.0, None
    was_flushing = flushes_denormals()
    torch.set_flush_denormal(True)
    memory = PeakMemory(torch.device("cpu"))
    try:
        # seeding the global generator makes workloads that use it (dropout, default inits)
        # deterministic too; fork_rng keeps the caller's generator state untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            task = workload.setup(seed) if task is None else task
            memory = PeakMemory(_device_of(task))
            with memory:
                opt, seconds = _loop(
                    workload, task, spec, hparams, seed, curve, stop_at_target, progress
                )
    except _DivergedError as why:
        status, error, seconds = "diverged", str(why.args[0]), float(why.args[1])
    except Exception as err:  # a broken optimizer or workload is a result, not a crash
        status = "failed"
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
    finally:
        torch.set_flush_denormal(was_flushing)
    return RunRecord(
        workload=workload.name,
        optimizer=spec.name,
        study=study,
        trial=trial,
        seed=seed,
        hparams=dict(hparams),
        status=status,
        error=error,
        metric=workload.metric,
        target=float(workload.target),
        steps=curve.steps,
        train_time=curve.train_time,
        values=curve.values,
        train_loss=curve.train_loss,
        steps_to_target=curve.steps_to_target if status == "ok" else None,
        time_to_target=curve.time_to_target if status == "ok" else None,
        final_value=curve.values[-1] if curve.values else math.nan,
        peak_memory_bytes=memory.peak_bytes(),
        state_bytes=state_bytes(opt) if opt is not None else 0,
        total_train_time=seconds,
        suite=suite,
        extra={
            "schedule": spec.schedule.describe(),
            "memory_method": memory.method,
            "torch": torch.__version__,
        },
    )


def _loop(
    workload: Any,
    task: Any,
    spec: Any,
    hparams: dict[str, Any],
    seed: int,
    curve: _Curve,
    stop_at_target: bool,
    progress: Progress | None,
) -> tuple[torch.optim.Optimizer, float]:
    max_steps, eval_every = int(workload.max_steps), max(1, int(workload.eval_every))
    start = time.perf_counter()
    opt = spec.build(task.param_groups(), hparams, max_steps)
    scheduler = spec.schedule.build(opt, max_steps)
    params = [p for group in opt.param_groups for p in group["params"]]
    curvature = hasattr(opt, "update_hessian")
    seconds, reference = time.perf_counter() - start, 0.0
    last: list[torch.Tensor] = [torch.tensor(math.nan)]
    for step in range(max_steps):
        start = time.perf_counter()
        batch_loss = task.batch_loss(step)

        def closure(batch_loss: Callable[[], torch.Tensor] = batch_loss) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            value = batch_loss()
            value.backward()
            last[0] = value
            return value

        if curvature:
            _refresh_curvature(opt, batch_loss, params, seed)
        returned = opt.step(closure)  # closures let XGrad evaluate at its predicted weights
        scheduler.step()
        loss = float((returned if returned is not None else last[0]).detach())
        seconds += time.perf_counter() - start  # the clock stops here: evaluation is untimed
        if step == 0 and math.isfinite(loss):  # the loss at initialization sets the scale
            reference = abs(loss)
        if not math.isfinite(loss) or (reference > 0 and loss > EXPLODE_FACTOR * reference):
            raise _DivergedError(f"training loss {loss:.4g} at step {step + 1}", seconds)
        done = step + 1
        if done % eval_every == 0 or done == max_steps:
            value = float(task.evaluate()[workload.metric])
            curve.add(done, seconds, value, loss)
            if progress is not None:
                progress(done, max_steps)
            if not math.isfinite(value):
                raise _DivergedError(
                    f"validation {workload.metric} {value} at step {done}", seconds
                )
            if stop_at_target and curve.steps_to_target is not None:
                break
    return opt, seconds
