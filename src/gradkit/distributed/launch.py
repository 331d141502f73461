"""Start the default process group the same way under ``torchrun`` and as a plain script."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist


def init_from_env() -> torch.device:
    """Initialize the default process group and return this process's device.

    Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` in the environment) the group
    is read from the environment; otherwise a one-process group (world size 1) is started on a
    file store in a fresh temporary folder, so the same script runs unchanged as
    ``python script.py``. The backend is nccl with one GPU per process (``LOCAL_RANK``) when CUDA
    is available, gloo on the CPU otherwise. Call ``torch.distributed.destroy_process_group()``
    when done.
    """
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
