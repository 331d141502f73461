"""DiLoCo, Streaming DiLoCo and SparseLoCo around an AdamW inner optimizer.

Run on N CPU processes (gloo) or N GPUs (nccl), unchanged:

    torchrun --nproc-per-node 4 examples/distributed_diloco.py

Without torchrun it runs as a single process (world size 1), which is what the test suite does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gradkit.distributed import DiLoCo, SparseLoCo, StreamingDiLoCo
from gradkit.distributed.launch import init_from_env


def train(make_outer, device, steps: int = 40) -> tuple[float, str]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 4),
    ).to(device)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    outer = make_outer(model, inner)  # broadcasts rank 0's parameters
    data = torch.Generator().manual_seed(1 + dist.get_rank())
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(7))
    for _ in range(steps):
        x = torch.randn(64, 32, generator=data)
        y = (x @ teacher).argmax(1)
        outer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        outer.step()  # the inner AdamW step, plus an outer sync when one is due
    return loss.item(), outer.counters.summary()


def main() -> None:
    device = init_from_env()  # torchrun's environment, or a one-process group
    torch.set_flush_denormal(True)  # CPU denormals make steps several times slower
    for name, make_outer in [
        ("DiLoCo H=10", lambda m, o: DiLoCo(m, o, sync_every=10)),
        (
            "Streaming DiLoCo H=10, 2 fragments, tau=2",
            lambda m, o: StreamingDiLoCo(m, o, sync_every=10, fragments=2, overlap=2),
        ),
        ("SparseLoCo H=10", lambda m, o: SparseLoCo(m, o, sync_every=10)),
    ]:
        loss, summary = train(make_outer, device)
        if dist.get_rank() == 0:
            print(f"{name:<44} loss {loss:.3f}  {summary}")
    torch.set_flush_denormal(False)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
