"""The ``gradkit`` command: benchmark optimizers (``bench``), compare them quickly (``demo``), audit gradient leakage (``audit``) and diagnose training (``diagnose``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subsystems that add a subcommand: each module defines ``add_subparser(subparsers)``, which
# registers its parser and sets ``func`` (a callable taking the parsed namespace and returning
# the exit status). Those modules import only argparse at import time; heavy imports happen
# inside ``func``, so ``gradkit --help`` stays fast.
SUBCOMMAND_MODULES = ("gradkit.bench.cli", "gradkit.privacy.cli", "gradkit.diagnostics.cli")


def _demo(args: argparse.Namespace) -> int:
    import gradkit.optim as go
    from gradkit.demo import print_table, run_demo

    valid = [i.name for i in go.available()]
    chosen = [s.strip() for s in args.optimizers.split(",")] if args.optimizers else None
    unknown = [n for n in chosen or () if n not in valid]
    if unknown:
        print(
            f"gradkit demo: unknown optimizer(s) {', '.join(unknown)}; choose from: "
            f"{', '.join(valid)}",
            file=sys.stderr,
        )
        return 2
    if args.epochs < 1:
        print(f"gradkit demo: --epochs must be >= 1 (got {args.epochs})", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"gradkit demo: --seeds must be >= 1 (got {args.seeds})", file=sys.stderr)
        return 2
    results = run_demo(chosen, epochs=args.epochs, seeds=range(args.seeds))
    print_table(results, args.epochs)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compare gradkit optimizers on scikit-learn's digits")
    demo.add_argument("--optimizers", help="comma-separated names (default: all)")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    demo.set_defaults(func=_demo)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subparser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
