"""Muon-family step time: gradkit Muon / DropMuon / AuON next to torch.optim.Muon and
pytorch-optimizer's Muon, on the hidden matrices of a GPT-2-shaped model.

Only the 2-D hidden matrices of :func:`step_speed.gpt2_params` are optimised (torch.optim.Muon
rejects anything else; embeddings, heads and vectors belong to AdamW anyway): per layer
768x2304, 768x768, 768x3072 and 3072x768. ``--size 25m`` has 3 layers (12 matrices, 21M
parameters), ``124m`` has 12 (48 matrices, 85M). Every optimiser runs with ``lr=0.02``,
``weight_decay=0.1``, momentum 0.95 (Nesterov) and 5 Newton-Schulz steps of the original
quintic; the precision of the Newton-Schulz iteration is part of each row's name:

* ``torch.optim.Muon`` always iterates in bfloat16 (native bfloat16 GEMMs);
* pytorch-optimizer's ``Muon`` defaults to bfloat16 too (and batches same-shape matrices);
* gradkit's rows name their ``ns_dtype``: ``bfloat16`` is torch's arithmetic (bfloat16 operands,
  float32 accumulation, one rounding per product), ``float32`` is more accurate, and
  ``auto`` (gradkit's default) is float32 on CPU and bfloat16 on GPU.

Times are the median of ``--steps`` timed ``step()`` calls after one untimed first step and
``--warmup`` more, in wall-clock and in CPU time (which, at 1 thread, ignores the waits of a
loaded shared machine); the first step is reported separately. ``--ns`` also times Newton-Schulz alone
(torch's ``_zeropower_via_newtonschulz`` over the matrices one by one against gradkit's batched
kernel), which is what dominates; ``--ns-only`` times only that. Step ratios are to
torch.optim.Muon measured in the same run, Newton-Schulz ratios to torch's Newton-Schulz.

    python benchmarks/muon_speed.py --size 25m --threads 1
    python benchmarks/muon_speed.py --size 124m --threads 2 --json muon.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_speed import SIZES, gpt2_params

from gradkit.optim.auon import AuON
from gradkit.optim.dropmuon import DropMuon
from gradkit.optim.muon import Muon

BASELINE = "torch.optim.Muon (bf16 NS)"
COMMON = dict(lr=0.02, weight_decay=0.1, momentum=0.95)


def hidden_matrices(size: str) -> list[torch.nn.Parameter]:
    """The 2-D parameters of the GPT-2-shaped list that are neither embedding table."""
    params = gpt2_params(size)
    return [p for p in params[2:] if p.ndim == 2]


def candidates(rows: set[str] | None) -> dict[str, Callable[[list[torch.Tensor]], object]]:
    table: dict[str, Callable] = {BASELINE: lambda p: torch.optim.Muon(p, **COMMON)}
    for dtype, label in (("bfloat16", "bf16"), ("float32", "fp32"), ("auto", "auto")):
        table[f"gradkit Muon ({label} NS)"] = lambda p, d=dtype: Muon(p, **COMMON, ns_dtype=d)
    table["gradkit DropMuon (auto NS, progressive)"] = lambda p: DropMuon(p, **COMMON, seed=0)
    table["gradkit DropMuon (bf16 NS, all layers)"] = lambda p: DropMuon(
        p, **COMMON, ns_dtype="bfloat16", sampling="independent", update_prob=1.0
    )
    table["gradkit AuON"] = lambda p: AuON(p, lr=0.02, weight_decay=0.1)
    table["gradkit AuON hybrid (1 NS step)"] = lambda p: AuON(
        p, lr=0.02, weight_decay=0.1, hybrid=True
    )
    try:
        import pytorch_optimizer as po
    except ImportError:
        print("pytorch-optimizer not installed: its rows are skipped")
    else:
        table["pytorch-optimizer Muon (bf16 NS)"] = lambda p: po.Muon(
            [dict(params=p, use_muon=True)], **COMMON
        )
    if rows is not None:
        table = {k: v for k, v in table.items() if k == BASELINE or any(r in k for r in rows)}
    return table


def time_calls(call: Callable[[], object], warmup: int, steps: int) -> tuple[float, float, float]:
    """(median wall seconds and median CPU seconds of ``steps`` calls, wall seconds of the first
    call). CPU time (``time.process_time``, all threads) does not count waiting for a core, so
    on a loaded machine its 1-thread ratios are steadier than wall-clock ones."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(warmup):
        call()
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), first


def ns_candidates(matrices: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

    from gradkit.optim.muon import batched_newton_schulz

    coefficients = (3.4445, -4.7750, 2.0315)
    return {
        "NS only: torch (bf16, per matrix)": lambda: [
            torch_ns(m, coefficients, 5, 1e-7) for m in matrices
        ],
        "NS only: gradkit (bf16, batched)": lambda: batched_newton_schulz(
            matrices, 5, coefficients, 1e-7, dtype=torch.bfloat16
        ),
        "NS only: gradkit (fp32, batched)": lambda: batched_newton_schulz(
            matrices, 5, coefficients, 1e-7, dtype=torch.float32
        ),
    }


def run(args: argparse.Namespace) -> list[dict]:
    params = hidden_matrices(args.size)
    n = sum(p.numel() for p in params)
    rows: list[dict] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{args.size}: {len(params)} hidden matrices, {n / 1e6:.1f}M parameters, "
              f"{threads} thread(s); ratios to {BASELINE}, wall clock and CPU time")  # fmt: skip
        base: tuple[float, float] | None = None
        table = {} if args.ns_only else candidates(set(args.only.split(",")) if args.only else None)
        for name, make in table.items():
            for p in params:  # every candidate starts from the same parameters
                p.data.copy_(torch.randn_like(p) * 0.02)
            try:
                opt = make(params)
                timing = time_calls(opt.step, args.warmup, args.steps)
            except Exception as e:  # a peer failing is reported, not fatal
                print(f"  {name:42s} failed: {type(e).__name__}: {e}")
                continue
            del opt
            base = base if base is not None else timing[:2]
            rows.append(_row(name, threads, timing, base))
        if args.ns or args.ns_only:  # ratios to torch's Newton-Schulz (the first row)
            grads = [p.grad for p in params]
            ns_base = None
            for name, call in ns_candidates(grads).items():
                timing = time_calls(call, args.warmup, args.steps)
                ns_base = ns_base or timing[:2]
                rows.append(_row(name, threads, timing, ns_base))
    return rows


def _row(name: str, threads: int, timing: tuple, base: tuple[float, float] | None) -> dict:
    wall, cpu, first = timing
    ratio, cpu_ratio = (wall / base[0], cpu / base[1]) if base else (float("nan"),) * 2
    row = dict(name=name, threads=threads, ms=wall * 1e3, cpu_ms=cpu * 1e3,
               first_ms=first * 1e3, ratio_to_torch_muon=ratio,
               cpu_ratio_to_torch_muon=cpu_ratio)  # fmt: skip
    print(f"  {name:42s} {row['ms']:9.1f} ms/step (cpu {row['cpu_ms']:9.1f})  "
          f"first {row['first_ms']:8.1f} ms  x{ratio:.3f} (cpu x{cpu_ratio:.3f})")  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="25m")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median; >= 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    ap.add_argument("--only", help="comma-separated substrings of row names to keep")
    ap.add_argument("--ns", action="store_true", help="also time Newton-Schulz alone")
    ap.add_argument("--ns-only", action="store_true", help="time Newton-Schulz alone only")
    ap.add_argument("--json", help="write the table to this path")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or any(t < 1 for t in args.threads):
        print("muon_speed: --steps and --threads must be >= 1, --warmup >= 0", file=sys.stderr)
        sys.exit(2)
    torch.set_flush_denormal(True)
    try:
        rows = run(args)
    finally:
        torch.set_flush_denormal(False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "baseline": BASELINE, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
