"""Optimizer step time: gradkit next to torch.optim and pytorch-optimizer, in one run.

Builds a GPT-2-shaped parameter list (``--size 124m``: token embedding 50304x768 and 12 layers of
768x2304, 768x768, 768x3072, 3072x768 matrices plus LayerNorm weights/biases; ``25m`` is the same
with a 8192-token embedding and 3 layers), fills gradients with random data, and times
``optimizer.step()``: the median of ``--steps`` steps after ``--warmup`` steps. Prints ms/step,
state bytes per parameter and the ratio to torch's fused AdamW measured in the same run. Peers
that are not installed are listed as skipped. ``--json PATH`` writes the table.

Absolute times are noise on a shared machine; the ratios are the signal.

    python benchmarks/step_speed.py --size 25m --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import gradkit.optim as go

SIZES = {"124m": (50304, 12), "25m": (8192, 3)}


def gpt2_params(size: str) -> list[torch.Tensor]:
    vocab, layers = SIZES[size]
    d = 768
    shapes = [(vocab, d), (1024, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,)]
        shapes += [(4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    g = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3
        params.append(p)
    return params


def time_steps(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], params, warmup, steps):
    opt = make(params)
    start = time.perf_counter()
    opt.step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    state = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for k, v in s.items()
        if isinstance(v, torch.Tensor) and v.numel() > 1
    )
    del opt
    return statistics.median(times), first, state


def candidates() -> dict[str, Callable]:
    c: dict[str, Callable] = {
        "torch AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "torch AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "torch AdamW forloop": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False),
        "torch SGD-m fused": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True),
        "torch SGD-m foreach": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
    }
    c["gradkit AdamW fused"] = lambda p: go.AdamW(p, lr=1e-3, fused=True)
    for info in go.available():
        kwargs = {"momentum": 0.9} if info.name in ("SGD", "SGDP") else {}
        c[f"gradkit {info.name}"] = lambda p, cls=info.cls, kw=kwargs: cls(p, lr=1e-3, **kw)
    try:
        import pytorch_optimizer as po
    except ImportError:
        print(
            "pytorch-optimizer not installed: its rows are skipped (pip install pytorch-optimizer)"
        )
    else:
        for name in (
            "DiffGrad",
            "AdamP",
            "SGDP",
            "AdEMAMix",
            "MARS",
            "Grams",
            "NovoGrad",
            "Lamb",
            "LARS",
        ):
            peer = getattr(po, name, None)
            if peer is not None:
                c[f"pytorch-optimizer {name}"] = lambda p, cls=peer: cls(p, lr=1e-3)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="25m")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", help="comma-separated substrings of row names to keep")
    ap.add_argument("--json", help="write the table to this path")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    params = gpt2_params(args.size)
    n = sum(p.numel() for p in params)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{args.size}: {n / 1e6:.1f}M parameters, {threads} thread(s)")
        table = candidates()
        if args.only:
            keep = [s.strip() for s in args.only.split(",")]
            table = {
                k: v
                for k, v in table.items()
                if k.startswith("torch AdamW fused") or any(s in k for s in keep)
            }
        base = None
        for name, make in table.items():
            for p in params:  # every candidate starts from the same parameters
                p.data.copy_(torch.randn_like(p) * 0.02)
            try:
                median, first, state = time_steps(make, params, args.warmup, args.steps)
            except Exception as e:  # a peer failing is reported, not fatal
                print(f"  {name:32s} failed: {type(e).__name__}: {e}")
                continue
            base = base or median
            row = dict(
                name=name, threads=threads, ms=median * 1e3, first_ms=first * 1e3,
                params_per_s=n / median, state_bytes_per_param=state / n, ratio_to_fused_adamw=median / base,
            )  # fmt: skip
            rows.append(row)
            print(
                f"  {name:32s} {row['ms']:9.1f} ms/step  first {row['first_ms']:8.1f} ms  "
                f"state {row['state_bytes_per_param']:4.1f} B/param  x{row['ratio_to_fused_adamw']:.2f} fused AdamW"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "parameters": n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
