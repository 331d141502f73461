"""Per-sample gradient throughput: gradkit (torch.func vmap) next to Opacus' GradSampleModule.

For each model (an MLP on 64 features, a small CNN on 1x28x28, a token model with Embedding,
LayerNorm and MultiheadAttention) and batch size, times one forward+backward that produces
per-sample gradients of every parameter:

* ``gradkit vmap``   — ``gradkit.privacy.per_sample_grads(..., method="vmap")``
* ``gradkit chunked`` — the same with ``chunk_size=batch/4`` (memory-bounded path)
* ``gradkit loop``   — the micro-batching fallback (one backward per example)
* ``opacus hooks``   — ``opacus.GradSampleModule(model)`` (hand-written per-layer rules),
  ``loss.backward()`` then reading ``p.grad_sample``. torch's MultiheadAttention is first replaced
  by Opacus' DPMultiheadAttention (``ModuleValidator.fix``; Opacus cannot run torch's MHA). In
  opacus 1.6 the fixed ``batch_first=True`` layer is *not* output-equivalent to torch's (max
  |difference| 0.68 on a random 8-dim layer; sequence-first layers match exactly, but
  GradSampleModule's single ``batch_first`` flag cannot serve a model that mixes layouts), so
  that row's gradients are not compared (``n/a``): it times the same amount of work, not the same
  numbers. Skipped with a note when opacus is not installed.

Reports the median of ``--repeats`` runs after one warm-up, as examples per second, and the ratio
gradkit vmap / opacus measured in the same run. Every method's result is checked against gradkit
vmap (max abs difference) so that a fast wrong answer cannot win. Absolute numbers are noise on a
shared machine; the ratios are the signal.

    python benchmarks/per_sample_grads.py --threads 2 --batch 64 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from gradkit.privacy import per_sample_grads


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 64)
        self.norm = nn.LayerNorm(64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(1))


def models() -> dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    return {
        "mlp 64-256-256-10": (
            lambda: nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)),
            lambda b: torch.randn(b, 64, generator=g),
        ),
        "cnn 1x28x28": (
            lambda: nn.Sequential(
                nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
            ),
            lambda b: torch.randn(b, 1, 28, 28, generator=g),
        ),
        "embed+layernorm+mha seq 16": (TokenModel, lambda b: torch.randint(0, 1000, (b, 16), generator=g)),
    }  # fmt: skip


def opacus_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    from opacus import GradSampleModule

    wrapped = (
        model
        if isinstance(model, GradSampleModule)
        else GradSampleModule(model, loss_reduction="sum")
    )
    wrapped.zero_grad(set_to_none=True)
    for p in wrapped.parameters():
        p.grad_sample = None
    # sum over examples: per-sample gradients of each example's own loss, as gradkit computes
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    return {n.removeprefix("_module."): p.grad_sample for n, p in wrapped.named_parameters()}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (and the value we check)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(batches: list[int], repeats: int) -> list[dict[str, object]]:
    try:
        import opacus  # noqa: F401

        have_opacus = True
    except ImportError:
        have_opacus = False
        print("opacus not installed: its rows are skipped (pip install opacus)")
    rows = []
    for name, (make_model, make_input) in models().items():
        for batch in batches:
            torch.manual_seed(0)
            model = make_model()
            x = make_input(batch)
            y = torch.randint(0, 10, (batch,))
            methods: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
                "gradkit vmap": lambda m=model, x=x, y=y: per_sample_grads(m, F.cross_entropy, x, y, method="vmap"),
                "gradkit chunked": lambda m=model, x=x, y=y, b=batch: per_sample_grads(
                    m, F.cross_entropy, x, y, method="vmap", chunk_size=max(1, b // 4)
                ),
                "gradkit loop": lambda m=model, x=x, y=y: per_sample_grads(m, F.cross_entropy, x, y, method="loop"),
            }  # fmt: skip
            if have_opacus:
                from opacus import GradSampleModule

                wrapped = GradSampleModule(opacus_ready_copy(model), loss_reduction="sum")
                methods["opacus hooks"] = lambda w=wrapped, x=x, y=y: opacus_grads(w, x, y)
            reference = None
            for method, fn in methods.items():
                seconds, grads = timed(fn, repeats)
                if reference is None:
                    reference = grads
                comparable = not (method == "opacus hooks" and "mha" in name)
                error = (
                    max((grads[k] - reference[k]).abs().max().item() for k in reference)  # type: ignore[index]
                    if comparable
                    else float("nan")
                )
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "method": method,
                        "examples_per_s": batch / seconds,
                        "max_abs_diff": error,
                    }
                )
    return rows


def opacus_ready_copy(model: nn.Module) -> nn.Module:
    """A copy with the same weights; nn.MultiheadAttention is swapped for Opacus'
    DPMultiheadAttention (its documented fix: hooks mode cannot handle torch's MHA), so the
    attention rows of Opacus use a differently parametrized layer and only the other parameters
    are compared."""
    import copy

    from opacus.validators import ModuleValidator

    return ModuleValidator.fix(copy.deepcopy(model))


def print_table(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Per-sample gradients: examples / second (median)")
    for column in ("model", "batch", "method", "examples/s", "vs opacus", "max |diff| vs vmap"):
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    for row in rows:
        opacus = next(
            (
                r
                for r in rows
                if r["model"] == row["model"]
                and r["batch"] == row["batch"]
                and r["method"] == "opacus hooks"
            ),
            None,
        )
        ratio = f"{row['examples_per_s'] / opacus['examples_per_s']:.2f}x" if opacus else "-"  # type: ignore[operator]
        table.add_row(
            str(row["model"]),
            str(row["batch"]),
            str(row["method"]),
            f"{row['examples_per_s']:,.0f}",
            ratio,
            f"{row['max_abs_diff']:.1e}" if row["max_abs_diff"] == row["max_abs_diff"] else "n/a",
        )
    Console(width=120).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the rows to this path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # DESIGN.md §6: CPU denormals distort timings
    rows = run(args.batch, args.repeats)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
