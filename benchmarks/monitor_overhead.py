"""Overhead of GradientMonitor on a small training loop, as a ratio to the same loop without it.

Trains the digits MLP of ``gradkit diagnose`` (64-H-H-10 GELU; ``--hidden 128``: 26k parameters,
``--hidden 1024``: 1.1M; batch 64) with SGD + momentum for ``--steps`` steps, in four
configurations, each from the same initialisation and batch order:

* ``none``: no monitor (the baseline);
* ``cheap``: GradientMonitor with per-layer statistics every step, no sinks;
* ``cheap+csv``: the same writing every step to a CSV file;
* ``cheap+probe``: cheap statistics every step plus a sharpness probe (Lanczos top eigenvalue,
  up to 20 Hessian-vector products on 256 examples) every ``--probe-every`` steps.

Each configuration is timed ``--repeats`` times (interleaved, to share the machine's noise); the
median wall time is reported with its ratio to ``none``. On a shared machine the absolute numbers
are noise; the ratios are the signal. The cheap statistics cost a fixed number of tensor ops per
parameter tensor plus one copy of the parameters (for update norms), so their ratio falls as the
forward/backward pass grows.

    python benchmarks/monitor_overhead.py --steps 300 --probe-every 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from gradkit.diagnostics import CSVSink, GradientMonitor, sharpness_probe
from gradkit.diagnostics._digits import DigitsMLPTask


def run(config: str, steps: int, probe_every: int, folder: Path, hidden: int = 128) -> float:
    task = DigitsMLPTask(seed=0, hidden=hidden)
    model = task.model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [task.batch(step) for step in range(steps)]
    monitor = None
    if config != "none":
        sinks = [CSVSink(folder / f"{config}.csv")] if config == "cheap+csv" else []
        probes = {}
        if config == "cheap+probe":
            probe_batch = (task.x_train[:256], task.y_train[:256])
            probes["sharpness"] = sharpness_probe(
                model,
                lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                [probe_batch],
                train=False,
                optimizer=opt,
                max_steps=20,
            )
        monitor = GradientMonitor(model, opt, sinks=sinks, probes=probes, probe_every=probe_every)
        monitor.attach()
    start = time.perf_counter()
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if monitor is not None:
            monitor.observe_loss(loss)
        opt.step()
    elapsed = time.perf_counter() - start
    if monitor is not None:
        monitor.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128, help="MLP width (128: 26k parameters)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    configs = ["none", "cheap", "cheap+csv", "cheap+probe"]
    times: dict[str, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as folder:
        run("cheap", 20, args.probe_every, Path(folder))  # warm-up: imports, allocator
        for _ in range(args.repeats):
            for config in configs:
                elapsed = run(config, args.steps, args.probe_every, Path(folder), args.hidden)
                times[config].append(elapsed)
    base = statistics.median(times["none"])
    rows = []
    print(
        f"hidden {args.hidden}, {args.steps} steps, probe every {args.probe_every}, "
        f"median of {args.repeats}"
    )
    print(f"{'config':<13} {'ms/step':>8} {'ratio':>6}")
    for config in configs:
        med = statistics.median(times[config])
        rows.append({"config": config, "ms_per_step": 1e3 * med / args.steps, "ratio": med / base})
        print(f"{config:<13} {1e3 * med / args.steps:8.3f} {med / base:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
