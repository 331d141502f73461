"""Optimizer-state memory: bytes per parameter, step time and peak memory, per storage policy.

Three measurements, in one run:

1. **State bytes per parameter** on the GPT-2-shaped parameter list of ``step_speed.py``
   (``--size 124m``: 124M parameters; ``25m``), after one step, measured with
   :func:`gradkit.memory.state_bytes` (every state tensor but the ``step`` counters; block maxima
   included) next to the registry's theoretical value (``OptimizerInfo.bytes_per_param``).
2. **Step time**: median of ``--steps`` steps after one warm-up step, on the same parameters;
   ratios to gradkit's fp32 AdamW step measured in the same run.
3. **Peak process memory** of 50 training steps of a small transformer LM (d=384, 4 layers,
   8192-token vocabulary, batch 8x64) with fp32, bf16 and q8 state: each configuration runs in a
   fresh subprocess that reports its resident-set high-water mark (``VmHWM`` from
   ``/proc/self/status``; ``ru_maxrss`` is not used because Linux carries it over from the
   forking parent) after training and before the first step, so the figure counts torch itself,
   parameters, gradients, activations and state.

bitsandbytes' ``AdamW8bit`` is measured where it runs on CPU. ``EXTRA`` is the hook for other
configurations (the low-rank methods): name -> factory taking the parameter list.

    python benchmarks/memory.py --size 25m --json memory.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import gradkit.optim as go
from gradkit.memory import state_bytes

HERE = Path(__file__).resolve().parent
Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

EXTRA: dict[str, tuple[Factory, float | None]] = {}
"""More rows: name -> (factory, theoretical bytes per parameter or None). Filled below with the
low-rank methods when their modules exist."""


def _gpt2_params(size: str) -> list[torch.Tensor]:
    spec = importlib.util.spec_from_file_location("step_speed", HERE / "step_speed.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.gpt2_params(size)


def _info(name: str):
    return {i.name: i for i in go.available()}[name]


def _bnb_adamw8bit() -> Factory | None:
    try:
        import bitsandbytes as bnb
    except Exception as e:
        print(f"bitsandbytes not usable ({type(e).__name__}: {e}); its rows are skipped")
        return None
    return lambda p: bnb.optim.AdamW8bit(p, lr=1e-3)


def _add_lowrank_rows() -> None:
    """GaLore / Fira / FRUGAL rows (rank 128; FRUGAL at its default density 0.25), when
    gradkit.memory has them; theory left blank (their state depends on each matrix's shape)."""
    import gradkit.memory as gm

    for module, cls, kwargs in (
        ("galore", "GaLore", {"rank": 128}),
        ("fira", "Fira", {"rank": 128}),
        ("frugal", "FRUGAL", {}),
    ):
        try:
            found = getattr(importlib.import_module(f"gradkit.memory.{module}"), cls)
        except (ImportError, AttributeError):
            continue
        label = f"gradkit {cls} " + (f"r={kwargs['rank']}" if kwargs else "rho=0.25")
        EXTRA.setdefault(label, (lambda p, c=found, kw=kwargs: c(p, lr=1e-3, **kw), None))
    del gm


def configurations() -> dict[str, tuple[Factory, float | None]]:
    adamw, lion = _info("AdamW"), _info("Lion")
    rows: dict[str, tuple[Factory, float | None]] = {
        f"gradkit AdamW {policy}": (
            lambda p, s=policy: go.AdamW(p, lr=1e-3, state_dtype=s),
            adamw.bytes_per_param(policy),
        )
        for policy in ("fp32", "bf16", "q8")
    }
    rows["gradkit Lion q8"] = (
        lambda p: go.Lion(p, lr=1e-4, state_dtype="q8"),
        lion.bytes_per_param("q8"),
    )
    bnb = _bnb_adamw8bit()
    if bnb is not None:
        rows["bitsandbytes AdamW8bit"] = (bnb, 2 * (1 + 4 / 256))
    _add_lowrank_rows()
    rows.update(EXTRA)
    return rows


def measure(make: Factory, params: list[torch.Tensor], steps: int) -> dict[str, float]:
    opt = make(params)
    opt.step()  # state exists after the first step
    sb = state_bytes(opt)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    del opt
    return {
        "bytes_per_param": sb.bytes_per_param,
        "state_mb": sb.total / 2**20,
        "ms": statistics.median(times) * 1e3 if times else float("nan"),
    }


# -- peak memory of a small training run, one subprocess per configuration -------------------
def _high_water_mb() -> float:
    """Peak resident set size of this process image in MB (Linux ``VmHWM``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_child(policy: str, steps: int) -> None:
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    vocab, d, layers, seq, batch = 8192, 384, 4, 64, 8
    layer = torch.nn.TransformerEncoderLayer(d, 6, 4 * d, dropout=0.0, batch_first=True)
    model = torch.nn.ModuleDict(
        {
            "embed": torch.nn.Embedding(vocab, d),
            "body": torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False),
            "head": torch.nn.Linear(d, vocab),
        }
    )
    if policy == "bnb-q8":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(model.parameters(), lr=3e-4)
    else:
        opt = go.AdamW(model.parameters(), lr=3e-4, state_dtype=policy)
    data = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(seq)
    before = _high_water_mb()
    for _ in range(steps):
        h = model["body"](model["embed"](data[:, :-1]), mask=mask, is_causal=True)
        loss = torch.nn.functional.cross_entropy(
            model["head"](h).reshape(-1, vocab), data[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    peak = _high_water_mb()
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"peak_mb": peak, "before_mb": before, "params": n,
                      "state_mb": state_bytes(opt).total / 2**20, "loss": loss.item()}))  # fmt: skip


def peak_memory(policy: str, steps: int) -> dict[str, float] | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, __file__, "--child", policy, "--train-steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"  peak memory ({policy}) failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["25m", "124m"], default="25m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row")
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--skip-peak", action="store_true", help="skip the training subprocesses")
    ap.add_argument("--only", help="comma-separated substrings of row names to keep")
    ap.add_argument("--skip-table", action="store_true", help="only the peak-memory runs")
    ap.add_argument("--json", help="write the results to this path")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _train_child(args.child, args.train_steps)
        return
    torch.set_flush_denormal(True)
    params = _gpt2_params(args.size)
    n = sum(p.numel() for p in params)
    print(f"{args.size}: {n / 1e6:.1f}M parameters, {args.threads} thread(s)")
    print(f"  {'configuration':28s} {'B/param':>8s} {'theory':>7s} {'state MB':>9s} "
          f"{'ms/step':>9s} {'x fp32':>7s}")  # fmt: skip
    rows, base = [], None
    table = {} if args.skip_table else configurations()
    if args.only:
        keep = [k.strip() for k in args.only.split(",")]
        table = {
            k: v for k, v in table.items() if k.endswith("AdamW fp32") or any(s in k for s in keep)
        }
    for name, (make, theory) in table.items():
        for p in params:  # every row starts from the same parameters
            p.data.copy_(torch.randn_like(p) * 0.02)
        try:
            row = {"name": name, "theory": theory, **measure(make, params, args.steps)}
        except Exception as e:  # a peer failing is reported, not fatal
            print(f"  {name:28s} failed: {type(e).__name__}: {e}")
            continue
        base = base or row["ms"]
        row["ratio_to_fp32"] = row["ms"] / base
        rows.append(row)
        th = f"{theory:7.3f}" if theory is not None else "      -"
        print(f"  {name:28s} {row['bytes_per_param']:8.3f} {th} {row['state_mb']:9.1f} "
              f"{row['ms']:9.1f} {row['ratio_to_fp32']:7.2f}")  # fmt: skip
    peaks = {}
    if not args.skip_peak:
        policies = ["fp32", "bf16", "q8"] + (["bnb-q8"] if _bnb_adamw8bit() else [])
        print(f"\npeak RSS, {args.train_steps} steps of a small transformer LM (subprocesses):")
        for policy in policies:
            result = peak_memory(policy, args.train_steps)
            if result:
                peaks[policy] = result
                print(f"  AdamW {policy:7s} peak {result['peak_mb']:8.1f} MB  (before training "
                      f"{result['before_mb']:7.1f} MB; state {result['state_mb']:6.1f} MB; "
                      f"{result['params'] / 1e6:.1f}M params)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"size": args.size, "parameters": n, "rows": rows, "peak": peaks}, f, indent=1
            )


if __name__ == "__main__":
    main()
