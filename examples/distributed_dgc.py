"""Gradient compression in DDP: the generic error-feedback hook and Deep Gradient Compression.

Run on N CPU processes (gloo) or N GPUs (nccl), unchanged:

    torchrun --nproc-per-node 4 examples/distributed_dgc.py

Without torchrun it runs as a single process (world size 1), which is what the test suite does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gradkit.distributed import DGC, ErrorFeedback, TopK, register_compression_hook
from gradkit.distributed.launch import init_from_env


def train(codec, device, steps: int = 30) -> tuple[float, str]:
    torch.manual_seed(0)  # same initial model everywhere (DDP also broadcasts rank 0's)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)
    ).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = register_compression_hook(ddp, codec, timeout=60)
    # DGC applies momentum inside the hook: plain SGD afterwards
    momentum = 0.0 if isinstance(codec, DGC) else 0.9
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=momentum)
    data = torch.Generator().manual_seed(1 + dist.get_rank())  # each rank its own data
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(7))
    for _ in range(steps):
        x = torch.randn(64, 32, generator=data)
        y = (x @ teacher).argmax(1)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
    return loss.item(), state.counters.summary()


def main() -> None:
    device = init_from_env()  # torchrun's environment, or a one-process group
    torch.set_flush_denormal(True)  # CPU denormals make steps several times slower
    for name, codec in [
        ("dense (hook, no compression)", None),
        ("error feedback + Top-1%", ErrorFeedback(TopK(0.01))),
        ("DGC (warm-up 75% ... 99.9%, 5 steps per stage)", DGC(steps_per_stage=5)),
    ]:
        loss, summary = train(codec, device)
        if dist.get_rank() == 0:
            print(f"{name:<48} loss {loss:.3f}  {summary}")
    torch.set_flush_denormal(False)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
