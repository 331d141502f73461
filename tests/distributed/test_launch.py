"""gradkit.distributed.launch.init_from_env: a plain process and a torchrun-style environment."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from gradkit.distributed.launch import init_from_env

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    if dist.is_initialized():
        pytest.skip("a default process group is already initialized in this process")
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    if dist.is_initialized():
        dist.destroy_process_group()


def expected_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def uses_file_store() -> bool:
    store = dist.distributed_c10d._get_default_store()  # a PrefixStore around the real one
    return isinstance(store.underlying_store, dist.FileStore)


def test_plain_process_gets_a_one_process_group(clean_env):
    device = init_from_env()
    assert device == expected_device()
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert uses_file_store()


def test_torchrun_environment_is_used(clean_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(port)}.items():
        clean_env.setenv(name, value)
    device = init_from_env()
    assert device == expected_device()
    assert dist.get_world_size() == 1
    assert not uses_file_store()  # the env:// rendezvous, not the plain-process file store
