"""Optimizer step time: every gradkit optimizer next to torch.optim and peer libraries, one run.

Builds a GPT-2-shaped parameter list (``--size 124m``: token embedding 50304x768, position
embedding 1024x768 and 12 layers of 768x2304, 768x768, 768x3072, 3072x768 matrices plus LayerNorm
weights/biases; ``25m`` is the same with an 8192-token embedding and 3 layers), fills gradients
with random data, and times ``optimizer.step()``: the median of ``--steps`` steps after
``--warmup`` steps, for each thread count in ``--threads`` (default 1 and 2).

Columns: ms/step; parameters/s; effective GB/s at the method's minimal bytes per parameter
(``min B``: 4 bytes per fp32 read or write of parameter, gradient and state in the best
implementation — a one-pass method reads p, g and its state and writes p and its state, so
``12 + 2 * state bytes``; methods whose update needs a per-tensor reduction first (LAMB, LARS,
NovoGrad, AdamP, SGDP) add the second pass); state bytes per parameter; the ratio to torch's
fused AdamW measured in the same run; and ``floor``: the time relative to torch's fused AdamW
scaled by minimal bytes (``t / (t_fused_adamw * minB / 28)``) — issue 8's target is <= 1.25 for
the Adam family — or, for Lion and SGD-momentum, relative to torch's fused SGD-momentum.

gradkit rows run with the default ``nonfinite="skip"``: one extra read of every gradient before
the update (a NaN/inf skips the step), which torch's fused kernels and the peers do not do; the
``nonfinite=apply`` rows time the methods with targets without it, the same work as theirs.

First-step overhead (kernel compilation) is measured separately, in fresh processes, with an
empty kernel cache and with a warm one. Peers that are not installed are listed as skipped.
``--json PATH`` writes everything.

Absolute times are noise on a shared machine; the ratios are the signal.

    python benchmarks/step_speed.py --size 124m --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import gradkit.optim as go

SIZES = {"124m": (50304, 12), "25m": (8192, 3)}
ADAMW_BYTES = 28  # p r/w, g r, exp_avg r/w, exp_avg_sq r/w: 7 x 4 bytes
# Methods that must read some tensors twice (a per-tensor reduction precedes the update):
# bytes of their best two-pass implementation.
TWO_PASS_BYTES = {
    # pass 1: p, g, m, v read, m, v written (|p|, |u| reduced); pass 2: p, m, v read, p written
    "LAMB": 40,
    # pass 1: p, g read (|p|, |g|); pass 2: p, g, buf read, p, buf written
    "LARS": 28,
    # pass 1: g read (|g|^2); pass 2: p, g, m read, p, m written
    "NovoGrad": 24,
    # pass 1: p, g, m, v read, m, v written (cosines, p.u); pass 2: p, m, v read, p written
    "AdamP": 40,
    # pass 1: p, g, buf read, buf written; pass 2: p, buf read, p written
    "SGDP": 32,
    # pass 1: g, last_grad read (|c|^2); pass 2: p, g, last_grad, m, v read, p, m, v, last_grad
    # written (2-D tensors; 1-D ones run AdamW)
    "MARS": 44,
}
SGD_FAMILY = ("SGD", "Lion", "Signum", "SignSGD")
# the methods issue 8 sets targets for, also timed without the non-finite check
APPLY_ROWS = ("AdamW", "Adam", "NAdam", "AdEMAMix", "MARS", "DiffGrad", "Grams", "AdamP", "LAMB",
              "Lion", "SGD")  # fmt: skip


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
    grads = [p.grad for p in params]

    def restore() -> None:  # heavyball sets p.grad = None inside step(); give every step its grads
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    opt = make(params)
    start = time.perf_counter()
    opt.step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        restore()
        opt.step()
    times = []
    for _ in range(steps):
        restore()
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    restore()
    state = sum(_state_bytes(s) for s in opt.state.values())
    del opt
    return statistics.median(times), first, state


def _state_bytes(obj) -> int:
    """Bytes of the non-scalar tensors in a state entry (peers nest dicts: heavyball)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() if obj.numel() > 1 else 0
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


NONFINITE = {"policy": "skip"}  # --nonfinite: the policy every gradkit row runs with


def _gradkit_kwargs(name: str) -> dict:
    if name in ("SGD", "SGDP"):
        return {"momentum": 0.9}
    return {}


def _unchecked(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return getattr(go, name)(params, lr=1e-3, nonfinite="apply", **_gradkit_kwargs(name))


def candidates() -> dict[str, tuple[str, Callable]]:
    """Row name -> (method, constructor). ``method`` keys the minimal-bytes table."""
    c: dict[str, tuple[str, Callable]] = {
        "torch AdamW fused": ("AdamW", lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)),
        "torch AdamW foreach": ("AdamW", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True)),
        "torch AdamW forloop": ("AdamW", lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=False)),
        "torch SGD-m fused": (
            "SGD",
            lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True),
        ),
        "torch SGD-m foreach": (
            "SGD",
            lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
        ),
        "torch SGD-m forloop": (
            "SGD",
            lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=False),
        ),
    }
    for info in go.available():
        if info.name in ("GaLore", "QGaLore", "Fira", "FRUGAL"):
            continue  # low-rank wrappers: their cost is the SVD schedule (benchmarks/memory.py)
        kwargs = _gradkit_kwargs(info.name)
        c[f"gradkit {info.name}"] = (
            info.name,
            lambda p, cls=info.cls, kw=kwargs: cls(p, lr=1e-3, nonfinite=NONFINITE["policy"], **kw),
        )
    if NONFINITE["policy"] != "apply":
        for name in APPLY_ROWS:  # the work torch's fused kernels do: no non-finite check
            c[f"gradkit {name} nonfinite=apply"] = (name, functools.partial(_unchecked, name))
    c["gradkit AdamW fused=True"] = ("AdamW", lambda p: go.AdamW(p, lr=1e-3, fused=True))
    c["gradkit AdamW state_dtype=q8"] = ("AdamW@q8", lambda p: go.AdamW(p, state_dtype="q8"))
    c.update(_peers())
    return c


PYTORCH_OPTIMIZER = {  # gradkit name -> pytorch-optimizer class name (the same method)
    "Adam": "Adam", "AdamW": "AdamW", "NAdam": "NAdam", "RAdam": "RAdam", "RMSprop": "RMSprop",
    "SGD": "SGD", "AdamP": "AdamP", "SGDP": "SGDP", "AdEMAMix": "AdEMAMix",
    "DiffGrad": "DiffGrad", "Grams": "Grams", "Gravity": "Gravity", "LARS": "LARS",
    "LAMB": "Lamb", "Lion": "Lion", "MARS": "MARS", "NovoGrad": "NovoGrad",
    "SignSGD": "SignSGD", "SPAM": "SPAM", "StableSPAM": "StableSPAM",
}  # fmt: skip
HEAVYBALL = {"AdamW": "AdamW", "NAdam": "NAdam", "RMSprop": "RMSprop", "AdEMAMix": "AdEMAMix"}


def _peers() -> dict[str, tuple[str, Callable]]:
    c: dict[str, tuple[str, Callable]] = {}
    try:
        import pytorch_optimizer as po
    except ImportError:
        print(
            "pytorch-optimizer not installed: its rows are skipped (pip install pytorch-optimizer)"
        )
    else:
        for ours, theirs in PYTORCH_OPTIMIZER.items():
            peer = getattr(po, theirs, None)
            if peer is not None:
                kw = _gradkit_kwargs(ours)
                c[f"pytorch-optimizer {theirs}"] = (
                    ours,
                    lambda p, cls=peer, kw=kw: cls(p, lr=1e-3, **kw),
                )
    try:
        import heavyball as hb
    except ImportError:
        print("heavyball not installed: its rows are skipped (pip install heavyball)")
    else:
        for ours, theirs in HEAVYBALL.items():
            peer = getattr(hb, theirs, None)
            if peer is not None:
                c[f"heavyball {theirs}"] = (ours, lambda p, cls=peer: cls(p, lr=1e-3))
    try:
        import bitsandbytes as bnb
    except ImportError:
        print("bitsandbytes not installed: its row is skipped (pip install bitsandbytes)")
    else:
        c["bitsandbytes AdamW8bit"] = (
            "AdamW@q8",
            lambda p: bnb.optim.AdamW8bit(p, lr=1e-3),
        )
    return c


def min_bytes(method: str, state_per_param: float) -> float:
    if method in TWO_PASS_BYTES:
        return TWO_PASS_BYTES[method]
    return 12 + 2 * state_per_param


FIRST_STEP = """
import time, torch, gradkit.optim as go
params = [torch.nn.Parameter(torch.randn(768, 768)) for _ in range(4)]
for p in params:
    p.grad = torch.randn_like(p)
start = time.perf_counter()
opt = {make}
opt.step()
print(time.perf_counter() - start)
"""


def first_step_overhead() -> dict[str, float]:
    """Seconds from construction to the end of the first step in a fresh process (imports
    excluded): torch's fused AdamW (its constructor imports torch._dynamo, ~2 s, a cost every
    torch optimizer pays), and gradkit's AdamW with an empty kernel cache (compiles the kernels)
    and with the cache that run left (loads them)."""
    runs = {
        "torch AdamW fused": "torch.optim.AdamW(params, lr=1e-3, fused=True)",
        "gradkit AdamW, cold kernel cache": "go.AdamW(params, lr=1e-3)",
        "gradkit AdamW, warm kernel cache": "go.AdamW(params, lr=1e-3)",
    }
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GRADKIT_CACHE_DIR": cache}
        for label, make in runs.items():
            done = subprocess.run(
                [sys.executable, "-c", FIRST_STEP.format(make=make)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            out[label] = float(done.stdout.strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="25m")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", help="comma-separated substrings of row names to keep")
    ap.add_argument("--json", help="write the table to this path")
    ap.add_argument(
        "--nonfinite",
        choices=("skip", "raise", "apply"),
        default="skip",
        help="non-finite gradient policy of the gradkit rows (default skip: one extra read of the "
        "gradients; apply: no check, the work torch's fused kernels do)",
    )
    args = ap.parse_args()
    NONFINITE["policy"] = args.nonfinite
    torch.set_flush_denormal(True)
    params = gpt2_params(args.size)
    n = sum(p.numel() for p in params)
    rows = []
    table = candidates()
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        table = {
            k: v
            for k, v in table.items()
            if k in ("torch AdamW fused", "torch SGD-m fused") or any(s in k for s in keep)
        }
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{args.size}: {n / 1e6:.1f}M parameters, {threads} thread(s)")
        print(
            f"  {'':34s} {'ms/step':>9s} {'Mparam/s':>9s} {'GB/s':>6s} {'min B':>6s} "
            f"{'state B':>7s} {'xAdamW':>7s} {'floor':>6s}"
        )
        base: dict[str, float] = {}
        for name, (method, make) in table.items():
            for p in params:  # every candidate starts from the same parameters
                p.data.copy_(torch.randn_like(p) * 0.02)
            try:
                median, first, state = time_steps(make, params, args.warmup, args.steps)
            except Exception as e:  # a peer failing is reported, not fatal
                print(f"  {name:34s} failed: {type(e).__name__}: {str(e)[:80]}")
                continue
            if name in ("torch AdamW fused", "torch SGD-m fused"):
                base[name] = median
            mb = min_bytes(method, state / n)
            adamw = base.get("torch AdamW fused", median)
            if method in SGD_FAMILY and "torch SGD-m fused" in base:
                floor = median / base["torch SGD-m fused"]
            else:
                floor = median / (adamw * mb / ADAMW_BYTES)
            row = dict(
                name=name, method=method, threads=threads, ms=median * 1e3, first_ms=first * 1e3,
                params_per_s=n / median, gb_per_s=n * mb / median / 1e9, min_bytes_per_param=mb,
                state_bytes_per_param=state / n, ratio_to_fused_adamw=median / adamw,
                floor_ratio=floor,
            )  # fmt: skip
            rows.append(row)
            print(
                f"  {name:34s} {row['ms']:9.1f} {row['params_per_s'] / 1e6:9.0f} "
                f"{row['gb_per_s']:6.1f} {mb:6.1f} {row['state_bytes_per_param']:7.2f} "
                f"{row['ratio_to_fused_adamw']:7.2f} {floor:6.2f}"
            )
    overhead = first_step_overhead()
    print("\nfirst step in a fresh process (construction + step, 4 x 768x768 parameters):")
    for label, seconds in overhead.items():
        print(f"  {label:40s} {seconds:6.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"size": args.size, "parameters": n, "rows": rows, "first_step_s": overhead},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
