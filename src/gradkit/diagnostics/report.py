"""The ``gradkit diagnose`` report: curvature, gradient statistics, step safety and landscapes.

:func:`diagnose` takes a *task* -- any object with ``model`` and ``batch_loss(step)`` (returning
the loss tensor, or a closure computing it, as the bench's tasks do) -- trains it briefly with
SGD under a :class:`~gradkit.diagnostics.monitor.GradientMonitor`, then measures at the final
parameters and writes plots plus ``summary.json`` / ``summary.md`` to a folder.

Optional task attributes unlock more: ``batch_size`` (noise scale in examples rather than
batches); ``batch(step) -> (inputs, targets)`` with ``loss_fn(outputs, targets)`` (per-example
noise scale, gradient coherence and the softmax radius :math:`\\rho_a`); ``evaluate()``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.diagnostics import gradstats, hessian, landscape, monitor, step_safety


@dataclass
class DiagnoseConfig:
    """Sizes of the report (defaults keep the digits MLP under a minute on 2 cores)."""

    train_steps: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    train: bool = False  # model mode for every measurement (eval: running stats, no dropout)
    curvature_batches: int = 8
    top_k: int = 5
    lanczos_steps: int = 60
    trace_probes: int = 30
    slq_runs: int = 4
    slq_steps: int = 40
    grid_1d: int = 31
    grid_2d: int = 13
    seed: int = 0


def _loss_of_step(task: Any, step: int) -> Tensor:
    out = task.batch_loss(step)
    return out() if callable(out) else out


def _is_rich(task: Any) -> bool:
    return hasattr(task, "batch") and hasattr(task, "loss_fn")


def _batch_size(task: Any) -> int | None:
    size = getattr(task, "batch_size", None) or getattr(
        getattr(task, "sampler", None), "batch_size", None
    )
    return int(size) if size else None


def _warm_up(task: Any, cfg: DiagnoseConfig, out: Path):
    model = task.model
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    history: list[dict] = []
    sinks = [
        monitor.CSVSink(out / "monitor.csv"),
        lambda step, s: history.append({"step": step, **s}),
    ]
    torch.set_flush_denormal(True)  # denormals make CPU steps several times slower
    mon = monitor.GradientMonitor(
        model, opt, sinks=sinks, spike_detector=monitor.SpikeDetector(window=50, min_history=10)
    )
    try:
        with mon:
            for step in range(cfg.train_steps):
                opt.zero_grad()
                loss = _loss_of_step(task, step)
                loss.backward()
                mon.observe_loss(loss)
                opt.step()
    finally:
        torch.set_flush_denormal(False)
    return history, mon, opt


def _curvature_setup(task: Any, cfg: DiagnoseConfig):
    """The curvature set: ``cfg.curvature_batches`` training batches (kept apart for the
    two-batch noise scale) and, for the Hessian, the same examples as one batch where the task
    exposes them (one cached gradient graph: every product is a single backward)."""
    if _is_rich(task):
        batches = [task.batch(i) for i in range(cfg.curvature_batches)]
        joined = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]

        def loss_fn(m: nn.Module, b: Any) -> Tensor:
            return task.loss_fn(m(b[0]), b[1])

        return batches, joined, loss_fn
    batches = list(range(cfg.curvature_batches))

    def step_loss(m: nn.Module, b: Any) -> Tensor:
        return _loss_of_step(task, b)

    return batches, batches, step_loss


def _curvature(op: hessian.HessianOperator, cfg: DiagnoseConfig) -> dict[str, Any]:
    both = hessian.top_eigenpairs(
        op, cfg.top_k, which="both", max_steps=cfg.lanczos_steps, tol=1e-6, seed=cfg.seed
    )
    k = min(cfg.top_k, both.eigenvalues.numel())
    top, bottom = both.eigenvalues[:k], both.eigenvalues[k:].flip(0)
    trace = hessian.hutchinson_trace(op, cfg.trace_probes, seed=cfg.seed)
    slq = hessian.spectral_density(
        op, num_runs=cfg.slq_runs, num_steps=cfg.slq_steps, seed=cfg.seed
    )
    grad = op.gradient()
    threshold = hessian.stability_threshold(cfg.lr, cfg.momentum)
    return {
        "top_eigenvalues": top.tolist(),
        "smallest_eigenvalues": bottom.tolist(),
        "lanczos_residuals": both.residuals.tolist(),
        "lanczos_matvecs": both.num_matvecs,
        "trace": trace.trace,
        "trace_stderr": trace.stderr,
        "slq_mean_eigenvalue": slq.moment(1),
        "slq_second_moment": slq.moment(2),
        "sharpness": float(top[0]),
        "stability_threshold": threshold,
        "sharpness_ratio": float(top[0]) / threshold,
        "gradient_overlap_top_k": hessian.subspace_overlap(grad, both.eigenvectors[:k]),
        "grad_norm": float(grad.norm()),
        "_slq": slq,
        "_vectors": both.eigenvectors[:k],
    }


def _gradients(task: Any, batches: list, loss_fn: Callable, cfg: DiagnoseConfig) -> dict:
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.train(cfg.train)
    try:
        rows = [hessian.flatten(torch.autograd.grad(loss_fn(model, b), params)) for b in batches]
    finally:
        model.train(was)
    grads = torch.stack(rows)
    size = _batch_size(task)
    est = gradstats.noise_scale_from_batches(grads, size or 1)
    out: dict[str, Any] = {
        "noise_scale_two_batch": {
            "grad_sq": est.grad_sq,
            "trace_cov": est.trace_cov,
            "b_simple": est.b_simple,
            "unit": "examples" if size else "batches",
        },
        "batch_size": size,
    }
    if _is_rich(task):
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        per = gradstats.per_sample_gradients(model, task.loss_fn, x, y, train=cfg.train)
        ps = gradstats.noise_scale_per_sample(per)
        out["noise_scale_per_sample"] = {
            "grad_sq": ps.grad_sq,
            "trace_cov": ps.trace_cov,
            "b_simple": ps.b_simple,
            "examples": len(x),
        }
        out["coherence"] = gradstats.gradient_coherence(per)
    return out


def _set_mean_gradient(task: Any, batches: list, loss_fn: Callable, train: bool) -> None:
    model = task.model
    model.zero_grad()
    was = model.training
    model.train(train)
    try:
        for b in batches:
            (loss_fn(model, b) / len(batches)).backward()
    finally:
        model.train(was)


def diagnose(task: Any, out_dir: str | Path, config: DiagnoseConfig | None = None) -> dict:
    """Run the whole report on ``task``; returns the summary written to ``summary.json``."""
    cfg = config or DiagnoseConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    history, mon, opt = _warm_up(task, cfg, out)
    lap("train")
    batches, hessian_batches, loss_fn = _curvature_setup(task, cfg)
    op = hessian.HessianOperator(task.model, loss_fn, hessian_batches, train=cfg.train)
    curv = _curvature(op, cfg)
    lap("curvature")
    grads = _gradients(task, batches, loss_fn, cfg)
    lap("gradients")
    # the step the warm-up optimizer (momentum included) would take next from the mean
    # curvature-set gradient: step safety and the update-direction slice
    _set_mean_gradient(task, batches, loss_fn, cfg.train)
    inputs = torch.cat([b[0] for b in batches]) if _is_rich(task) else None
    safety = None
    if inputs is not None:
        b_simple = grads["noise_scale_per_sample"]["b_simple"]
        safety = step_safety.measure_step_safety(
            task.model,
            inputs,
            opt,
            train=cfg.train,
            sharpness=curv["sharpness"],
            batch_size=grads["batch_size"],
            b_simple=b_simple,
        )
    lap("step_safety")

    def loss_of(m: nn.Module) -> Tensor:
        return sum(loss_fn(m, b) for b in hessian_batches) / len(hessian_batches)

    update = landscape.update_direction_slice(
        task.model, loss_of, opt, train=cfg.train, num_points=cfg.grid_1d, inputs=inputs
    )
    task.model.zero_grad()
    d1 = landscape.filter_normalized_direction(task.model, seed=cfg.seed + 1)
    d2 = landscape.filter_normalized_direction(task.model, seed=cfg.seed + 2)
    alphas = torch.linspace(-1, 1, cfg.grid_1d, dtype=torch.float64)
    line = landscape.loss_slice_1d(task.model, loss_of, d1, alphas, train=cfg.train)
    grid_axis = torch.linspace(-1, 1, cfg.grid_2d, dtype=torch.float64)
    surface = landscape.loss_surface_2d(
        task.model, loss_of, (d1, d2), grid_axis, grid_axis, train=cfg.train
    )
    lap("landscape")

    plots = _write_plots(out, curv, history, alphas, line, grid_axis, surface, update)
    lap("plots")
    timings["total"] = round(time.perf_counter() - start, 3)
    summary = {
        "parameters": op.dim,
        "config": asdict(cfg),
        "final_train_loss": history[-1].get("loss") if history else None,
        "evaluation": task.evaluate() if hasattr(task, "evaluate") else None,
        "curvature": {k: v for k, v in curv.items() if not k.startswith("_")},
        "gradients": grads,
        "step_safety": None if safety is None else safety.as_dict(),
        "update_slice": {"step_length": update.step_length, "rho_a": update.rho_a},
        "spikes": [e.reason for e in mon.spike_events],
        "not_training": mon.not_training_reason,
        "plots": plots,
        "seconds": timings,
    }
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _write_plots(out, curv, history, alphas, line, grid_axis, surface, update) -> list[str]:
    plt = landscape._pyplot()
    grid, density = curv["_slq"].density()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(grid.numpy(), density.clamp_min(1e-12).numpy())
    for lam in curv["top_eigenvalues"]:
        ax.axvline(lam, color="C3", alpha=0.4, linewidth=0.8)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (SLQ, Gaussian-broadened)")
    ax.set_title("Hessian spectral density (red: Lanczos top-k)", fontsize=10)
    fig.subplots_adjust(**landscape._MARGINS)
    fig.savefig(out / "spectral_density.png", dpi=100)
    plt.close(fig)

    layers = sorted({k.split("/", 1)[1] for h in history for k in h if k.startswith("grad_norm/")})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in layers:
        steps = [h["step"] for h in history if f"grad_norm/{name}" in h]
        axes[0].semilogy(
            steps, [h[f"grad_norm/{name}"] for h in history if f"grad_norm/{name}" in h], label=name
        )
        axes[1].semilogy(
            steps,
            [h.get(f"update_ratio/{name}", math.nan) for h in history if f"grad_norm/{name}" in h],
        )
    axes[0].set_title("per-layer gradient norm", fontsize=10)
    axes[1].set_title("per-layer update / parameter norm", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=6)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    fig.savefig(out / "layer_norms.png", dpi=100)
    plt.close(fig)

    landscape.plot_slice_1d(alphas, line, out / "landscape_1d.png")
    landscape.plot_surface_2d(grid_axis, grid_axis, surface, out / "landscape_2d.png")
    landscape.plot_slice_1d(
        update.taus,
        update.losses,
        out / "update_slice.png",
        xlabel="distance along the SGD update direction",
        markers={"tau (step)": update.step_length, "rho_a": update.rho_a},
        title="loss along the proposed update",
    )
    return [
        "spectral_density.png",
        "layer_norms.png",
        "landscape_1d.png",
        "landscape_2d.png",
        "update_slice.png",
    ]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _markdown(s: dict) -> str:
    c, g = s["curvature"], s["gradients"]
    rows = [
        ("parameters", s["parameters"]),
        ("final train loss", s["final_train_loss"]),
        ("top eigenvalues (Lanczos)", c["top_eigenvalues"]),
        ("smallest eigenvalues", c["smallest_eigenvalues"]),
        ("trace (Hutchinson) +/- stderr", f"{c['trace']:.4g} +/- {c['trace_stderr']:.2g}"),
        (
            "SLQ mean eigenvalue / second moment",
            f"{c['slq_mean_eigenvalue']:.4g} / {c['slq_second_moment']:.4g}",
        ),
        (
            "sharpness / (2+2 beta)/lr",
            f"{c['sharpness']:.4g} / {c['stability_threshold']:.4g} = {c['sharpness_ratio']:.3g}",
        ),
        ("gradient overlap with top-k subspace", c["gradient_overlap_top_k"]),
        (
            "B_simple (two-batch, " + g["noise_scale_two_batch"]["unit"] + ")",
            g["noise_scale_two_batch"]["b_simple"],
        ),
    ]
    if "noise_scale_per_sample" in g:
        rows.append(("B_simple (per-example)", g["noise_scale_per_sample"]["b_simple"]))
        rows.append(("gradient m-coherence", g["coherence"]["m_coherence"]))
    if s["step_safety"]:
        st = s["step_safety"]
        rows.append(
            (
                "SGD step tau / rho_a = r",
                f"{st['step_length']:.4g} / {st['rho_a']:.4g} = {st['r']:.3g}",
            )
        )
    rows.append(("spikes during warm-up", len(s["spikes"])))
    rows.append(("not training", s["not_training"] or "no"))
    rows.append(("wall time (s)", s["seconds"]["total"]))
    lines = ["# gradkit diagnose", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in s["plots"]), ""]
    return "\n".join(lines)
