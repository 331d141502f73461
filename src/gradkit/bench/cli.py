"""``gradkit bench``: run, report and list AlgoPerf-style optimizer comparisons.

Only argparse is imported at module import time (``gradkit --help`` stays fast); torch, optuna
and rich load inside the subcommands. Every user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_OUT = "gradkit-bench"
DB_NAME = "bench.db"
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


def _one_line_error(parser: argparse.ArgumentParser) -> None:
    def error(message: str) -> NoReturn:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    parser.error = error  # type: ignore[method-assign]


def _count(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer (got {text!r})")
        return value

    return parse


def add_subparser(subparsers: Any) -> None:
    """Register ``gradkit bench`` and its subcommands ``run``, ``report`` and ``list``."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark training algorithms (AlgoPerf-style, CPU-sized)",
        description="Fair, reproducible comparisons of optimizers on small workloads: tuning "
        "by quasi-random search, time-to-target with untimed evaluation, resumable storage.",
    )
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{run,report,list}")
    run = sub.add_parser("run", help="train and tune, then write the report")
    run.add_argument("--suite", default="quick", help="quick (default) or standard")
    run.add_argument(
        "--optimizers", "--optimizer", dest="optimizers",
        help="comma-separated names or import paths pkg.mod:Class ('all': every gradkit one)",
    )  # fmt: skip
    run.add_argument(
        "--workloads", "--workload", dest="workloads",
        help="comma-separated names or import paths pkg.mod:Name",
    )  # fmt: skip
    run.add_argument("--seeds", type=_count("--seeds"), help="seeds per configuration")
    run.add_argument("--trials", type=_count("--trials"), help="trials per study")
    run.add_argument("--studies", type=_count("--studies"), help="independent studies")
    run.add_argument(
        "--defaults-only", action="store_true", help="one trial per study: the defaults"
    )
    run.add_argument(
        "--tune",
        help="hyperparameters to search, comma-separated (e.g. lr), or 'all' "
        "(default: the suite's choice; quick tunes lr and adam_lr only)",
    )
    run.add_argument(
        "--threads", type=_count("--threads"), default=1,
        help="torch intra-op threads (default 1: the workloads are too small to gain from more)",
    )  # fmt: skip
    _storage_args(run)
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="rebuild the report from the database alone")
    report.add_argument("--suite", help="only this suite's runs (default: all)")
    report.add_argument(
        "--mode", help="only runs of this tuning mode (needed when the database holds several)"
    )
    _storage_args(report)
    report.set_defaults(func=_report)
    listing = sub.add_parser("list", help="workloads, optimizers and suites")
    listing.set_defaults(func=_list)
    for parser in (bench, run, report, listing):
        _one_line_error(parser)


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        help=f"SQLite file or database URL, e.g. postgresql://user@host/db "
        f"(default: OUT/{DB_NAME})",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"report folder (default ./{DEFAULT_OUT})"
    )


def _guard(func: Any) -> Any:
    """Turn user errors into one line on stderr and exit status 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from gradkit.bench.storage import StorageError

        try:
            return func(args)
        except (UserError, StorageError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            print(f"gradkit bench {args.bench_command}: {message}", file=sys.stderr)
            return EXIT_USAGE
        except BrokenPipeError:  # `gradkit bench list | head`: the reader left, nothing wrong
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            print(
                "gradkit bench: interrupted; run the same command again to resume "
                "(finished runs are kept)",
                file=sys.stderr,
            )
            return 130

    return wrapped


def _db(args: argparse.Namespace) -> str:
    return args.db if args.db else str(Path(args.out) / DB_NAME)


@_guard
def _run(args: argparse.Namespace) -> int:
    from gradkit.bench.storage import open_storage, redacted, storage_url
    from gradkit.bench.suites import get_suite, resolve_optimizers, resolve_workload, split_names
    from gradkit.bench.tuning import run_sweep

    try:  # every ValueError here is about the command line (names, import paths, counts)
        suite = get_suite(args.suite)
        specs = resolve_optimizers(split_names(args.optimizers) or suite.optimizers)
        names = split_names(args.workloads) or list(suite.workload_names())
        workloads = {}
        for name in names:
            workload = resolve_workload(name, quick=suite.quick_sizes)
            workloads[workload.name] = workload
        config = suite.config(
            workloads=list(workloads), optimizers=list(specs), seeds=args.seeds,
            studies=args.studies, trials=args.trials, defaults_only=args.defaults_only,
        )  # fmt: skip
        if args.tune:
            tune = None if args.tune.strip() == "all" else tuple(split_names(args.tune))
            config = dataclasses.replace(config, tune=tune)
    except ValueError as err:
        raise UserError(str(err)) from err
    db = _db(args)
    storage = open_storage(db)
    import torch

    progress, threads = _RichProgress(), torch.get_num_threads()
    torch.set_num_threads(args.threads)  # 2 threads on tiny ops were 5-20x slower on 2 cores
    try:
        records = run_sweep(config, storage, workloads, specs, progress)
    finally:
        progress.close()
        torch.set_num_threads(threads)
    meta = {
        "suite": config.suite,
        "tuning": _tuning_text(config),
        "seeds": config.seeds,
        "torch threads": args.threads,
        "schedule": next(iter(specs.values())).schedule.describe(),
        "database": redacted(storage_url(db)),
        "command": "gradkit " + " ".join(sys.argv[1:]) if sys.argv[1:] else "gradkit bench run",
    }
    return _finish(records, Path(args.out), meta, redacted(db))


def _tuning_text(config: Any) -> str:
    if config.defaults_only:
        return "defaults only (one trial per optimizer and workload: the spec's defaults)"
    text = (
        f"external tuning: {config.studies} study(ies) x {config.trials} trials, Optuna "
        "QMCSampler (scrambled Halton), no pruning"
    )
    if config.tune:
        text += f", searching {', '.join(config.tune)} only (other hyperparameters at defaults)"
    return text + (
        "; the first trial of each study is the defaults" if config.include_defaults else ""
    )


@_guard
def _report(args: argparse.Namespace) -> int:
    from gradkit.bench.storage import bench_studies, load_records, open_storage, redacted

    db = _db(args)
    if "://" not in db and not Path(db).is_file():
        raise UserError(f"no database at {db} (run 'gradkit bench run' first, or give --db)")
    storage = open_storage(db, heartbeat=False)
    keys = bench_studies(storage, args.suite)
    modes = sorted({k.mode for k in keys})
    if args.mode is not None:
        keys = [k for k in keys if k.mode == args.mode]
        if not keys:
            raise UserError(f"no runs with mode {args.mode!r}; stored modes: {', '.join(modes)}")
    elif len(modes) > 1:  # trials of different modes share numbers: never score them together
        raise UserError(
            f"the database holds runs of several tuning modes ({', '.join(modes)}); "
            "choose one with --mode"
        )
    records = load_records(storage, suite=args.suite, keys=keys)
    if not records:
        where = f" for suite {args.suite!r}" if args.suite else ""
        raise UserError(f"no benchmark runs stored in {db}{where}")
    suites = sorted({r.suite for r in records})
    meta = {"suite": ", ".join(suites), "database": redacted(db)}
    return _finish(records, Path(args.out), meta, redacted(db))


def _finish(records: list[Any], out: Path, meta: dict[str, Any], db: str) -> int:
    from rich.console import Console

    from gradkit.bench.report import leaderboard, write_report
    from gradkit.bench.tuning import summarize

    Console(width=max(Console().width, 120)).print(leaderboard(records))
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(records, out, meta)
    counts = summarize(records)
    print(
        f"{len(records)} runs ({counts['ok']} ok, {counts['diverged']} diverged, "
        f"{counts['failed']} failed)"
    )
    print(f"report: {paths['html']} (also {paths['markdown'].name}, results.json, plots/)")
    print(f"database: {db}")
    return 0


@_guard
def _list(args: argparse.Namespace) -> int:
    from gradkit.bench.spaces import builtin_specs
    from gradkit.bench.suites import SUITES, workload_factories

    print("workloads:")
    for name, factory in workload_factories().items():
        w = factory()
        print(f"  {name:18s} {w.description} [{w.metric} <= {w.target:g}, {w.max_steps} steps]")
    print("optimizers:")
    for name, spec in builtin_specs().items():
        print(f"  {name:18s} {spec.description}; searches {spec.describe_space()}")
    print(
        "  (append @bf16 or @q8 to any of them for that optimizer with compressed state, "
        "e.g. AdamW@q8)"
    )
    print("suites:")
    for name, suite in SUITES.items():
        print(f"  {name:18s} {suite.summary()}")
    return 0


class _RichProgress:
    """A rich progress bar over training steps, with ETA; one line per finished study."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.runs = self.done = 0

    def start(self, total_steps: int, runs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.runs = runs
        if runs == 0:
            print("every run is already stored; nothing to train")
            return
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("steps"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task(f"{runs} runs", total=total_steps)

    def run_started(self, key: Any, trial: int) -> None:
        if self.progress is not None:
            label = f"[{self.done + 1}/{self.runs}] {key.workload} {key.optimizer} "
            label += f"s{key.study} t{trial} seed{key.seed}"
            self.progress.update(self.task, description=label)

    def advance(self, steps: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, steps)

    def run_finished(self, record: Any, skipped_steps: int) -> None:
        self.done += 1
        if self.progress is None:
            return
        self.progress.advance(self.task, skipped_steps)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
