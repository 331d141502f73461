"""gradkit optimizers under DistributedDataParallel (2 CPU processes, gloo, file store)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradkit

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _batches():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(5)]


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    opt = gradkit.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for x, y in _batches():
        shard = slice(rank * 4, rank * 4 + 4)  # each rank sees half of the batch
        opt.zero_grad()
        ((model(x[shard]) - y[shard]) ** 2).mean().backward()
        opt.step()
    torch.save([p.detach() for p in model.parameters()], os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_replicas_agree_and_equal_single_process_full_batch():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), tmp), nprocs=2, join=True)
        rank0 = torch.load(os.path.join(tmp, "0.pt"))
        rank1 = torch.load(os.path.join(tmp, "1.pt"))
    single = _model()
    opt = gradkit.optim.AdamW(single.parameters(), lr=0.01, weight_decay=0.1)
    for x, y in _batches():
        opt.zero_grad()
        ((single(x) - y) ** 2).mean().backward()
        opt.step()
    for a, b, c in zip(rank0, rank1, single.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c.detach(), rtol=1e-5, atol=1e-6)
