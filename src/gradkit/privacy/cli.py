"""``gradkit audit leakage``: attack gradients of digits under defences, print a table, save a grid.

Imports only argparse at module import time (``gradkit --help`` stays fast); torch, rich and
matplotlib are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_ATTACKS = "dlg,idlg,ig"
DEFAULT_DEFENSES = (
    "none,prune:0.5,prune:0.9,prune:0.99,noise:0.001,noise:0.01,noise:0.1,gauss:0.01,"
    "topk:0.1,topk:0.01,quant:8,quant:4,fp16,batch:4"
)


def add_subparser(subparsers: Any) -> None:
    """Register ``audit`` with its ``leakage`` subcommand."""
    audit = subparsers.add_parser("audit", help="privacy audits of shared gradients")
    kinds = audit.add_subparsers(dest="audit_kind", required=True)
    leak = kinds.add_parser(
        "leakage",
        help="reconstruct digits from their gradients (DLG, iDLG, Inverting Gradients) under defences",
    )
    leak.add_argument(
        "--defense",
        default=DEFAULT_DEFENSES,
        help="comma-separated: none, prune:P, noise:SIGMA[:C], gauss:STD, topk:K, quant:BITS, fp16, "
        "batch:B (default: %(default)s)",
    )
    leak.add_argument(
        "--attacks", default=DEFAULT_ATTACKS, help="subset of dlg,idlg,ig (default: all)"
    )
    leak.add_argument("--images", default="4", help="digits attacked per defence (default 4)")
    leak.add_argument("--out", default="leakage-audit", help="folder for grid.png and results.json")
    leak.add_argument(
        "--seed", default="0", help="picks the digits, the victim and the noise (default 0)"
    )
    leak.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"gradkit audit leakage: {message}", file=sys.stderr)
    return 2


def _positive_int(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer (got {text!r})") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})")
    return value


def run(args: argparse.Namespace) -> int:
    from gradkit.privacy import leakage
    from gradkit.privacy.defenses import parse_defenses

    try:
        defenses = parse_defenses(args.defense)
        attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
        unknown = [a for a in attacks if a not in leakage.ATTACKS] or (
            [] if attacks else ["(none)"]
        )
        if unknown:
            raise ValueError(
                f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(leakage.ATTACKS)}"
            )
        images = _positive_int("--images", args.images, 1)
        seed = _positive_int("--seed", args.seed, 0)
        out = _make_out_dir(args.out)
    except ValueError as err:
        return _error(str(err))
    return _audit_and_report(defenses, attacks, images, seed, out)


def _make_out_dir(path: str) -> Any:
    import pathlib

    out = pathlib.Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {path!r} cannot be created ({err.strerror})") from None
    return out


def _audit_and_report(
    defenses: list, attacks: tuple[str, ...], images: int, seed: int, out: Any
) -> int:
    import json
    import time

    import torch

    from gradkit.privacy.defenses import audit_leakage

    started, cpu = time.perf_counter(), time.process_time()
    was_flushing = float(torch.tensor(1e-40) * 1.0) == 0.0
    torch.set_flush_denormal(True)  # CPU denormals slow the attack loops (DESIGN.md §6)
    try:
        result = audit_leakage(defenses, attacks=attacks, images=images, seed=seed)
    finally:
        torch.set_flush_denormal(was_flushing)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    _print_table(result, wall, cpu)
    grid = out / "grid.png"
    _save_grid(result, attacks, grid)
    rows = [vars(r) for r in result.rows]
    (out / "results.json").write_text(
        json.dumps(
            {"unrelated_psnr": result.unrelated_psnr, "rows": rows, "images": images, "seed": seed},
            indent=1,
        )
    )
    print(f"wrote {grid} and {out / 'results.json'}")
    return 0


def _print_table(result: Any, wall: float, cpu: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Gradient leakage on scikit-learn digits (mean over attacked images)")
    for column in ("defense", "attack", "MSE", "PSNR dB", "label acc", "seconds"):
        table.add_column(column, justify="left" if column in ("defense", "attack") else "right")
    for row in result.rows:
        table.add_row(
            row.defense,
            row.attack,
            f"{row.mse:.4f}",
            f"{row.psnr:.1f}",
            f"{row.label_accuracy:.2f}",
            f"{row.seconds:.1f}",
        )
    table.caption = (
        f"PSNR of an unrelated digit (another class): {result.unrelated_psnr:.1f} dB; "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU"
    )
    Console(width=110).print(table)


def _save_grid(result: Any, attacks: tuple[str, ...], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defenses = list(dict.fromkeys(r.defense for r in result.rows))
    n_images, n_attacks = result.originals.shape[0], len(attacks)
    fig, axes = plt.subplots(
        1 + len(defenses),
        n_images * n_attacks,
        squeeze=False,
        figsize=(0.75 * n_images * n_attacks + 1.2, 0.75 * (1 + len(defenses)) + 0.4),
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for i in range(n_images):
        axes[0, i * n_attacks].imshow(result.originals[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        for a, name in enumerate(attacks):
            axes[0, i * n_attacks + a].set_title(f"#{i} {name}", fontsize=6)
            for d, defense in enumerate(defenses):
                image = result.reconstructions[(defense, name)][i, 0].numpy()
                axes[1 + d, i * n_attacks + a].imshow(image, cmap="gray_r", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("original", fontsize=6)
    for d, defense in enumerate(defenses):
        axes[1 + d, 0].set_ylabel(defense, fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
