"""Per-task Jacobian: one backward per task (loop) versus one vectorised backward (batched).

``gradkit.multitask.backward(..., batched=False|True)`` computes the same Jacobian either with
``m`` calls of ``torch.autograd.grad`` (retaining the graph) or with one call over the stacked
losses with ``is_grads_batched=True`` (vmap over the backward pass). Which is faster depends on
the model and the number of tasks; this script measures both on shared MLP trunks and prints the
median time of each and the ratio, so the default can be chosen by measurement.

    python benchmarks/multitask_jacobian.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradkit.multitask import jacobian


def setup(width: int, depth: int, tasks: int, batch: int = 128):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), nn.ReLU()]
    trunk = nn.Sequential(*layers)
    heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(tasks))
    x = torch.randn(batch, 64)
    ys = torch.randn(tasks, batch, 1)

    def losses():
        z = trunk(x)
        return [nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys, strict=True)]

    return list(trunk.parameters()), losses


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch 128, median of {args.repeats}"
    )
    print(
        f"{'trunk':>14} {'params':>9} {'tasks':>5} {'loop ms':>9} {'batched ms':>11} {'loop/batched':>13}"
    )
    for width, depth in ((64, 2), (256, 3), (1024, 3)):
        for tasks in (2, 4, 8):
            params, losses = setup(width, depth, tasks)
            n = sum(p.numel() for p in params)
            loop, batched = (
                median_ms(lambda b=b, f=losses, p=params: jacobian(f(), p, batched=b), args.repeats)
                for b in (False, True)
            )
            print(
                f"{f'{depth}x{width}':>14} {n:9d} {tasks:5d} {loop:9.2f} {batched:11.2f} "
                f"{loop / batched:13.2f}"
            )


if __name__ == "__main__":
    main()
