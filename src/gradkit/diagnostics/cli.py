"""``gradkit diagnose``: curvature and gradient reports with plots for a workload or user model.

Only argparse is imported at module import time; torch, matplotlib and the rest load when the
command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

BUILTIN_WORKLOADS = ("digits_mlp",)


def add_subparser(subparsers: Any) -> None:
    """Register ``gradkit diagnose`` on the ``gradkit`` command's subparsers."""
    p = subparsers.add_parser(
        "diagnose",
        help="curvature, gradient statistics, step safety and loss landscapes of a model",
        description=(
            "Train a workload briefly with SGD under a GradientMonitor, then write a report "
            "(summary.md, summary.json, monitor.csv) and plots: Hessian spectral density, "
            "per-layer norms, 1-D/2-D loss landscapes, the loss along the update direction."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--workload",
        default="digits_mlp",
        help="digits_mlp (built in) or a gradkit bench workload name",
    )
    src.add_argument(
        "--model",
        metavar="PKG.MOD:FACTORY",
        help="a factory returning a task (.model and .batch_loss(step)) or a workload (.setup(seed))",
    )
    p.add_argument("--out", default="diagnose_report", help="output folder")
    p.add_argument(
        "--mode",
        choices=("eval", "train"),
        default="eval",
        help="model mode for all measurements (batch norm / dropout behaviour)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=60, help="SGD warm-up steps before measuring")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=5, help="Lanczos eigenpairs at each end")
    p.add_argument(
        "--curvature-batches",
        type=int,
        default=8,
        help="batches whose mean loss defines the Hessian",
    )
    p.add_argument("--grid", type=int, default=13, help="2-D landscape grid points per axis")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the products are small, and extra threads slow "
        "down badly on a shared machine)",
    )
    p.set_defaults(func=_run)


def _fail(message: str) -> int:
    print(f"gradkit diagnose: {message}", file=sys.stderr)
    return 2


def _check_args(args: argparse.Namespace) -> str | None:
    for name in ("train_steps",):
        if getattr(args, name) < 0:
            return f"--train-steps must be >= 0 (got {args.train_steps})"
    for flag, value, low in (
        ("--top-k", args.top_k, 1),
        ("--curvature-batches", args.curvature_batches, 2),
        ("--grid", args.grid, 2),
    ):
        if value < low:
            return f"{flag} must be >= {low} (got {value})"
    if not args.lr > 0:
        return f"--lr must be > 0 (got {args.lr})"
    if not 0 <= args.momentum < 1:
        return f"--momentum must be in [0, 1) (got {args.momentum})"
    if args.threads < 1:
        return f"--threads must be >= 1 (got {args.threads})"
    if args.seed < 0:
        return f"--seed must be >= 0 (got {args.seed})"
    return None


def _load_factory(spec: str) -> Any:
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like pkg.mod:factory (got {spec!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model: cannot import {module_name!r} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model: {module_name!r} has no callable {attr!r}")
    return factory


def _task(args: argparse.Namespace) -> Any:
    if args.model:
        task = _load_factory(args.model)()
        if not hasattr(task, "model") and callable(getattr(task, "setup", None)):
            task = task.setup(args.seed)  # a bench-style Workload: seed it into a Task
        if not hasattr(task, "model") or not hasattr(task, "batch_loss"):
            raise ValueError(
                f"--model: {args.model} returned {type(task).__name__}, "
                "which lacks .model and .batch_loss(step)"
            )
        return task
    if args.workload == "digits_mlp":
        from gradkit.diagnostics._digits import DigitsMLPTask

        return DigitsMLPTask(seed=args.seed)
    try:
        from gradkit.bench.workloads import get_workload  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            f"unknown workload {args.workload!r}; choose from: {', '.join(BUILTIN_WORKLOADS)}"
        ) from None
    try:
        return get_workload(args.workload).setup(args.seed)
    except (KeyError, ValueError) as err:
        raise ValueError(f"unknown workload {args.workload!r} ({err})") from None


def _run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        return _fail(problem)
    try:
        task = _task(args)
    except ValueError as err:
        return _fail(str(err))
    from gradkit.diagnostics.report import DiagnoseConfig, diagnose

    cfg = DiagnoseConfig(
        train_steps=args.train_steps,
        lr=args.lr,
        momentum=args.momentum,
        train=args.mode == "train",
        curvature_batches=args.curvature_batches,
        top_k=args.top_k,
        grid_2d=args.grid,
        seed=args.seed,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        summary = diagnose(task, args.out, cfg)
    finally:
        torch.set_num_threads(threads)
    c = summary["curvature"]
    print(
        f"wrote {args.out}/summary.md ({summary['parameters']} parameters, "
        f"{summary['seconds']['total']:.1f} s)"
    )
    print(
        f"sharpness {c['sharpness']:.4g} vs (2+2 beta)/lr = {c['stability_threshold']:.4g}; "
        f"trace {c['trace']:.4g}; top eigenvalues {', '.join(f'{v:.4g}' for v in c['top_eigenvalues'])}"
    )
    return 0
