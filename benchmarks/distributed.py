"""Loss and accuracy versus bytes communicated: dense DDP, DGC, DiLoCo, Streaming DiLoCo, SparseLoCo.

Workload: scikit-learn's digits (1,797 8x8 images, 80/20 split, fixed seed), an MLP
64-H-H-10 (default H = 1280, 1.74 M parameters), the training set split into one disjoint shard
per worker, batch 32 per worker. The script launches its own worker processes (gloo on CPU):

    python benchmarks/distributed.py                # 2 workers, every method
    python benchmarks/distributed.py --methods dgc dense_sgd --steps 400 --workers 4
    python benchmarks/distributed.py --workload charlm --batch 16 --adam-lr 0.01

``--workload charlm`` swaps in gradkit.bench's character-level transformer LM (2 layers, width
64, context 64, stdlib docstrings; each worker samples windows from its own half of the
training text; "test" is the validation text, losses in nats/char).

Methods (same number of inner steps each):
  dense_sgd     DDP, SGD momentum 0.9 (DGC's baseline)
  dgc           DDP + DGC hook (paper warm-up 75% ... 99.9%, one stage per ``--stage-steps``),
                plain SGD after the hook
  dense_adamw   DDP, AdamW (the DiLoCo family's baseline)
  diloco        DiLoCo H=50, inner AdamW, outer Nesterov SGD lr 0.7 momentum 0.9
  streaming     Streaming DiLoCo H=50, 2 fragments, tau=5, alpha=0.5, FP4 (E3M0) outer gradients
  sparseloco    SparseLoCo H=50, chunk Top-64 of 4096 + 2-bit values, EF decay 0.95, outer lr 1

Bytes are what each rank hands to collectives (gradkit.distributed.CommunicationCounters); the
dense reference is a full fp32 gradient all-reduce every step. Denormals are flushed on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

METHODS = ("dense_sgd", "dgc", "dense_adamw", "diloco", "streaming", "sparseloco")


def _data(seed: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    return (x[:split], y[:split]), (x[split:], y[split:])


def _model(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


@torch.no_grad()
def _evaluate(model, train, test) -> dict[str, float]:
    model.eval()
    loss = torch.nn.functional.cross_entropy(model(train[0]), train[1]).item()
    test_logits = model(test[0])
    test_loss = torch.nn.functional.cross_entropy(test_logits, test[1]).item()
    accuracy = (test_logits.argmax(1) == test[1]).float().mean().item()
    model.train()
    return {"train_loss": loss, "test_loss": test_loss, "test_accuracy": accuracy}


def _setup(method: str, model: torch.nn.Module, args):
    """(model to call, optimizer-like with step/zero_grad, counters)."""
    from gradkit.distributed import DGC, DiLoCo, SparseLoCo, StreamingDiLoCo
    from gradkit.distributed.hooks import register_compression_hook

    if method in ("dense_sgd", "dense_adamw", "dgc"):
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        codec = DGC(steps_per_stage=args.stage_steps) if method == "dgc" else None
        state = register_compression_hook(ddp, codec, timeout=args.timeout)
        if method == "dense_sgd":
            opt = torch.optim.SGD(ddp.parameters(), lr=args.sgd_lr, momentum=0.9)
        elif method == "dgc":
            opt = torch.optim.SGD(ddp.parameters(), lr=args.sgd_lr)  # momentum is in the hook
        else:
            opt = torch.optim.AdamW(ddp.parameters(), lr=args.adam_lr, weight_decay=0.01)
        return ddp, opt, state.counters
    inner = torch.optim.AdamW(model.parameters(), lr=args.adam_lr, weight_decay=0.01)
    common = {"sync_every": args.sync_every, "timeout": args.timeout}
    if method == "diloco":
        outer = DiLoCo(model, inner, outer_lr=args.outer_lr, **common)
    elif method == "streaming":
        overlap = min(5, args.sync_every // 2 - 1)
        outer = StreamingDiLoCo(model, inner, fragments=2, overlap=overlap, **common)
    else:
        outer = SparseLoCo(model, inner, **common)
    return model, outer, outer.counters


class _Digits:
    """The digits MLP: each worker samples batches from its own shard of the training set."""

    def __init__(self, args, rank: int, world: int) -> None:
        self.args = args
        self.train, self.test = _data(args.seed)
        self.shard = (self.train[0][rank::world], self.train[1][rank::world])

    def model(self) -> torch.nn.Module:
        return _model(self.args.hidden, self.args.seed)

    def loss(self, model, generator) -> torch.Tensor:
        batch = torch.randint(len(self.shard[1]), (self.args.batch,), generator=generator)
        return torch.nn.functional.cross_entropy(model(self.shard[0][batch]), self.shard[1][batch])

    def evaluate(self, model) -> dict[str, float]:
        return _evaluate(model, self.train, self.test)


class _CharLM:
    """gradkit.bench's char transformer (2 layers, width 64, context 64) on stdlib docstrings;
    each worker samples windows from its own half of the training text."""

    def __init__(self, args, rank: int, world: int) -> None:
        from gradkit.bench.lm import encoded_splits

        self.args = args
        train, self.val = encoded_splits()
        size = len(train) // world
        self.shard = train[rank * size : (rank + 1) * size]
        fixed = torch.Generator().manual_seed(12345)
        self.eval_train = self._windows(
            train, torch.randint(len(train) - 65, (64,), generator=fixed)
        )
        self.eval_val = self._windows(
            self.val, torch.randint(len(self.val) - 65, (64,), generator=fixed)
        )

    @staticmethod
    def _windows(tokens, starts):
        index = starts[:, None] + torch.arange(65)
        windows = tokens[index]
        return windows[:, :-1], windows[:, 1:]

    def model(self) -> torch.nn.Module:
        from gradkit.bench.lm import VOCAB, CharTransformer, init_gpt_

        torch.manual_seed(self.args.seed)
        model = CharTransformer(len(VOCAB), 64, 4, 2, 64)
        init_gpt_(model, torch.Generator().manual_seed(self.args.seed))
        return model

    def _loss(self, model, pair) -> torch.Tensor:
        logits = model(pair[0])
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), pair[1].reshape(-1)
        )

    def loss(self, model, generator) -> torch.Tensor:
        starts = torch.randint(len(self.shard) - 65, (self.args.batch,), generator=generator)
        return self._loss(model, self._windows(self.shard, starts))

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        model.eval()
        out = {
            "train_loss": self._loss(model, self.eval_train).item(),
            "test_loss": self._loss(model, self.eval_val).item(),
            "test_accuracy": 0.0,
        }
        model.train()
        return out


WORKLOADS = {"digits": _Digits, "charlm": _CharLM}


def _worker(rank: int, world: int, store: str, out_dir: str, args) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=args.timeout),
    )
    workload = WORKLOADS[args.workload](args, rank, world)
    results = {}
    for method in args.methods:
        model = workload.model()
        net, opt, counters = _setup(method, model, args)
        sampler = torch.Generator().manual_seed(1000 * args.seed + rank)
        curve, start = [], time.perf_counter()
        post_warmup = [0, 0]  # DGC: (sent, dense) once the final sparsity is reached
        for step in range(1, args.steps + 1):
            opt.zero_grad()
            workload.loss(net, sampler).backward()
            opt.step()
            if method == "dgc" and step > 4 * args.stage_steps:
                post_warmup[0] += counters.bytes_sent_step
                post_warmup[1] += counters.dense_bytes_step
            if step % args.eval_every == 0 or step == args.steps:
                curve.append(
                    {
                        "step": step,
                        "bytes_sent": counters.bytes_sent_total,
                        **workload.evaluate(model),
                    }
                )
        results[method] = {
            "curve": curve,
            "seconds": time.perf_counter() - start,
            "bytes_sent": counters.bytes_sent_total,
            "dense_bytes": counters.dense_bytes_total,
            "ratio": counters.compression_ratio,
            "ratio_after_warmup": post_warmup[1] / post_warmup[0] if post_warmup[0] else None,
        }
        dist.barrier()
        if rank == 0:
            print(
                f"{method}: {results[method]['curve'][-1]} {results[method]['seconds']:.1f} s",
                flush=True,
            )
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    dist.destroy_process_group()


def _print(results, args) -> None:
    name = (
        f"digits MLP 64-{args.hidden}-{args.hidden}-10"
        if args.workload == "digits"
        else "char LM (2 layers, width 64; losses in nats/char, test = validation text)"
    )
    print(
        f"{name}, {args.workers} workers x batch {args.batch}, {args.steps} steps (rank 0's model)"
    )
    header = (
        f"{'method':<12} {'train loss':>10} {'test loss':>9} {'test acc':>8} "
        f"{'MB sent':>9} {'ratio':>8} {'after wu':>8} {'s':>6}"
    )
    print(header)
    print("-" * len(header))
    for method, r in results.items():
        last = r["curve"][-1]
        after = f"{r['ratio_after_warmup']:.0f}x" if r["ratio_after_warmup"] else ""
        accuracy = f"{100 * last['test_accuracy']:>7.2f}%" if args.workload == "digits" else "-"
        print(
            f"{method:<12} {last['train_loss']:>10.4f} {last['test_loss']:>9.4f} "
            f"{accuracy:>8} {r['bytes_sent'] / 1e6:>9.3f} "
            f"{r['ratio']:>7.1f}x {after:>8} {r['seconds']:>6.1f}"
        )
    print("\nloss vs bytes (step, MB sent, train loss, test loss, test acc):")
    for method, r in results.items():
        points = ", ".join(
            f"({p['step']}, {p['bytes_sent'] / 1e6:.2f}, {p['train_loss']:.3f}, "
            f"{p['test_loss']:.3f}, {100 * p['test_accuracy']:.1f}%)"
            for p in r["curve"]
        )
        print(f"  {method}: {points}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=1280)
    parser.add_argument("--stage-steps", type=int, default=25, help="DGC steps per warm-up stage")
    parser.add_argument("--sync-every", type=int, default=50, help="H of the DiLoCo family")
    parser.add_argument("--sgd-lr", type=float, default=0.05)
    parser.add_argument("--adam-lr", type=float, default=1e-3)
    parser.add_argument("--outer-lr", type=float, default=0.7, help="DiLoCo's outer lr")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    bad = [m for m in args.methods if m not in METHODS]
    if bad or args.workers < 1 or args.steps < 1:
        problem = (
            f"unknown method {bad[0]!r} (choose from {', '.join(METHODS)})"
            if bad
            else "--workers and --steps must be >= 1"
        )
        print(f"distributed.py: error: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _worker,
            args=(args.workers, os.path.join(tmp, "store"), tmp, args),
            nprocs=args.workers,
            join=True,
            start_method="spawn",
        )
        results = torch.load(os.path.join(tmp, "results.pt"), weights_only=False)
    _print(results, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
