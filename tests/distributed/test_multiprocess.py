"""gradkit.distributed with 2 real processes (gloo, FileStore): one launch runs every scenario.

Each scenario runs on both ranks and returns tensors/numbers; a failure in one scenario is
recorded (with its traceback) and fails only the tests that read it. Every collective has a
timeout and the parent kills the workers after a deadline, so nothing can hang the suite.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradkit.distributed import (
    DGC,
    EF21,
    QSGD,
    ChunkTopK,
    CommunicationError,
    CompressionHookState,
    DiLoCo,
    ErrorFeedback,
    ExchangeItem,
    NoFeedback,
    RandomK,
    SampledTopK,
    ScaledSign,
    SparseLoCo,
    StreamingDiLoCo,
    TopK,
    compression_hook,
    register_compression_hook,
    start_exchange,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD = 2
DEADLINE_S = 120  # parent-side limit for one spawn (normally ~10 s)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _batch(step: int, rank: int | None = None):
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    if rank is None:
        return x, y
    return x[rank * 4 : rank * 4 + 4], y[rank * 4 : rank * 4 + 4]


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def _loss(model, step, rank):
    x, y = _batch(step, rank)
    return ((model(x) - y) ** 2).mean()


def _train_ddp(rank, codec="plain", steps=4, lr=0.1, record=False):
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    state = None if codec == "plain" else register_compression_hook(ddp, codec, timeout=20)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    history = []
    for step in range(steps):
        opt.zero_grad()
        _loss(ddp, step, rank).backward()
        opt.step()
        history.append(_flat(ddp.module))
    return (history if record else history[-1]), state


class _ByteTally:
    """Counts the bytes of every tensor handed to all_reduce / all_gather (the real sends)."""

    def __init__(self):
        self.total = 0
        self.originals = {}

    def __enter__(self):
        for name in ("all_reduce", "all_gather_single", "all_gather_into_tensor"):
            if hasattr(dist, name):
                original = getattr(dist, name)
                self.originals[name] = original
                setattr(dist, name, self._wrap(name, original))
        return self

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            sent = args[0] if name == "all_reduce" else args[1]
            self.total += sent.numel() * sent.element_size()
            return original(*args, **kwargs)

        return counted

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(dist, name, original)


CODECS = {
    "ef_topk": lambda: ErrorFeedback(TopK(0.1)),
    "ef_sampled_topk": lambda: ErrorFeedback(SampledTopK(0.1, sample_ratio=0.5)),
    "randomk": lambda: NoFeedback(RandomK(0.2, seed=1)),
    "ef_sign": lambda: ErrorFeedback(ScaledSign()),
    "ef_qsgd2": lambda: ErrorFeedback(QSGD(bits=2, bucket_size=32)),
    "ef21_chunk2bit": lambda: EF21(ChunkTopK(chunk_size=32, k=4, value_bits=2)),
    "dgc": lambda: DGC(steps_per_stage=1),
}


def scenario_ddp_equality(rank):
    plain, _ = _train_ddp(rank)
    hook_dense, _ = _train_ddp(rank, None)
    hook_gather, _ = _train_ddp(rank, ErrorFeedback(TopK(1.0)))
    return {"plain": plain, "hook_dense": hook_dense, "hook_gather": hook_gather}


def scenario_codecs(rank):
    out = {}
    for name, make in CODECS.items():
        with _ByteTally() as tally:
            history, state = _train_ddp(rank, make(), steps=3, record=True)
        out[name] = {
            "history": history,
            "counted": state.counters.bytes_sent_total,
            "tallied": tally.total,
            "dense": state.counters.dense_bytes_total,
            "steps": state.counters.steps,
        }
    return out


def scenario_diloco_h1(rank):
    model = _model()
    diloco = DiLoCo(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        sync_every=1,
        outer_lr=1.0,
        outer_momentum=0.0,
    )
    for step in range(4):
        diloco.zero_grad()
        _loss(model, step, rank).backward()
        diloco.step()
    plain, _ = _train_ddp(rank)
    return {"diloco": _flat(model), "ddp": plain}


OUTER = {
    "diloco": lambda m, o: DiLoCo(m, o, sync_every=2),
    "streaming_alpha0": lambda m, o: StreamingDiLoCo(
        m, o, sync_every=4, fragments=2, overlap=1, alpha=0.0
    ),
    "streaming": lambda m, o: StreamingDiLoCo(m, o, sync_every=4, fragments=2, overlap=1),
    "sparseloco": lambda m, o: SparseLoCo(m, o, sync_every=2, chunk_size=16, k=4),
}


def scenario_outer_loops(rank):
    out = {}
    for name, make in OUTER.items():
        model = _model()
        outer = make(model, torch.optim.Adam(model.parameters(), lr=0.01))
        log, apply = [], outer._apply
        outer._apply = lambda fragment, log=log, apply=apply: (
            log.append(fragment),
            apply(fragment),
        )
        steps = []
        for step in range(8):
            outer.zero_grad()
            _loss(model, step, rank).backward()
            outer.step()
            applied = log[:]
            log.clear()
            steps.append(
                {
                    "params": {n: p.detach().clone() for n, p in outer.params.items()},
                    "globals": {n: t.clone() for n, t in outer.globals.items()},
                    "pending": sorted(outer.pending),
                    "applied": applied,
                }
            )
        out[name] = {
            "steps": steps,
            "fragments": outer.fragments,
            "sent": outer.counters.bytes_sent_total,
            "dense": outer.counters.dense_bytes_total,
        }
    return out


def _hook_run(rank, state_in=None, steps=(0, 3)):
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    state = CompressionHookState(ddp, DGC(steps_per_stage=1, weight_decay=0.01), timeout=20)
    if state_in is not None:
        ddp.module.load_state_dict(state_in["model"])
        opt.load_state_dict(state_in["opt"])
        state.load_state_dict(state_in["hook"])
    ddp.register_comm_hook(state, compression_hook)
    for step in range(*steps):
        opt.zero_grad()
        _loss(ddp, step, rank).backward()
        opt.step()
    return ddp, opt, state


def _outer_run(rank, state_in=None, steps=(0, 5)):
    model = _model()
    inner = torch.optim.Adam(model.parameters(), lr=0.01)
    outer = StreamingDiLoCo(
        model, inner, sync_every=4, fragments=2, overlap=1, codec=ErrorFeedback(QSGD(bits=4))
    )
    if state_in is not None:
        model.load_state_dict(state_in["model"])
        inner.load_state_dict(state_in["opt"])
        outer.load_state_dict(state_in["outer"])
    for step in range(*steps):
        outer.zero_grad()
        _loss(model, step, rank).backward()
        outer.step()
    return model, inner, outer


def scenario_checkpoint(rank):
    def snapshot(module, opt, extra_name, extra):
        return {
            "model": {k: v.clone() for k, v in module.state_dict().items()},
            "opt": opt.state_dict(),
            extra_name: extra.state_dict(),
        }

    ddp, opt, state = _hook_run(rank)
    saved_hook = snapshot(ddp.module, opt, "hook", state)
    saved_hook = torch.load(_roundtrip(saved_hook, rank, "hook"), weights_only=True)
    for step in range(3, 6):
        opt.zero_grad()
        _loss(ddp, step, rank).backward()
        opt.step()
    resumed, _, resumed_state = _hook_run(rank, saved_hook, steps=(3, 6))

    model, inner, outer = _outer_run(rank)
    pending_at_save = sorted(outer.pending)
    saved_outer = snapshot(model, inner, "outer", outer)
    saved_outer = torch.load(_roundtrip(saved_outer, rank, "outer"), weights_only=True)
    for step in range(5, 10):
        outer.zero_grad()
        _loss(model, step, rank).backward()
        outer.step()
    resumed_model, _, resumed_outer = _outer_run(rank, saved_outer, steps=(5, 10))
    return {
        "hook": (_flat(ddp.module), _flat(resumed.module)),
        "hook_counters": (state.counters.steps, resumed_state.counters.steps),
        "outer": (_flat(model), _flat(resumed_model)),
        "outer_globals": (
            torch.cat([t.reshape(-1) for t in outer.globals.values()]),
            torch.cat([t.reshape(-1) for t in resumed_outer.globals.values()]),
        ),
        "pending_at_save": pending_at_save,
    }


def _roundtrip(obj, rank, name):
    path = os.path.join(os.environ["GRADKIT_TEST_DIR"], f"ckpt-{name}-{rank}.pt")
    torch.save(obj, path)
    return path


def scenario_hang(rank):
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=2))
    result = {}
    if rank == 0:
        codec = ErrorFeedback(TopK(0.5))
        start = time.monotonic()
        try:
            start_exchange(
                codec, [ExchangeItem("w", torch.randn(4, 4))], group=group, timeout=1.5
            ).wait()
            result["error"] = None
        except CommunicationError as error:
            result["error"] = str(error)
        result["elapsed"] = time.monotonic() - start
    else:
        time.sleep(3.0)  # rank 1 "hangs": it never joins the collective
    return result


SCENARIOS = [
    scenario_ddp_equality,
    scenario_codecs,
    scenario_diloco_h1,
    scenario_outer_loops,
    scenario_checkpoint,
    scenario_hang,
]


def _worker(rank, store_path, out_dir, names):
    os.environ["GRADKIT_TEST_DIR"] = out_dir
    torch.set_num_threads(1)  # forked: never enter the parent's OpenMP pool
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store_path, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    results = {}
    for scenario in SCENARIOS:
        if scenario.__name__ not in names:
            continue
        start = time.monotonic()
        try:
            results[scenario.__name__] = {"ok": scenario(rank)}
        except Exception:
            results[scenario.__name__] = {"error": traceback.format_exc()}
        results[scenario.__name__]["seconds"] = time.monotonic() - start
    torch.save(results, os.path.join(out_dir, f"results-{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _worker_dies(rank, store_path, out_dir):
    torch.set_num_threads(1)  # forked: never enter the parent's OpenMP pool
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store_path, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    register_compression_hook(ddp, ErrorFeedback(TopK(0.2)), timeout=5)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    result = {"error": None}
    for step in range(3):
        if rank == 1 and step == 2:
            os._exit(7)  # dies without a word
        start = time.monotonic()
        try:
            opt.zero_grad()
            _loss(ddp, step, rank).backward()
            opt.step()
        except CommunicationError as error:
            result = {"error": str(error), "elapsed": time.monotonic() - start, "step": step}
            break
    torch.save(result, os.path.join(out_dir, f"dies-{rank}.pt"))


def _run(fn, args):
    # fork: the workers inherit the parent's imports (torch, and torch._dynamo, which DDP's
    # constructor imports: 5-12 s per process on a loaded 2-core machine with spawn)
    import torch._dynamo  # noqa: F401

    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + DEADLINE_S
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in context.processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, f"workers still running after {DEADLINE_S} s"
    return [p.exitcode for p in context.processes]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    names = [s.__name__ for s in SCENARIOS]
    _run(_worker, (str(tmp / "store"), str(tmp), names))
    return [torch.load(tmp / f"results-{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _get(results, name):
    out = []
    for rank_results in results:
        entry = rank_results[name]
        if "error" in entry:
            pytest.fail(f"{name} failed in a worker:\n{entry['error']}")
        out.append(entry["ok"])
    return out


def test_hook_without_compression_equals_plain_ddp(results):
    for rank in _get(results, "scenario_ddp_equality"):
        torch.testing.assert_close(rank["hook_dense"], rank["plain"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rank["hook_gather"], rank["plain"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_replicas_hold_identical_parameters_after_every_step(results, codec):
    rank0, rank1 = (r[codec] for r in _get(results, "scenario_codecs"))
    for a, b in zip(rank0["history"], rank1["history"], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(rank0["history"][0], rank0["history"][-1])


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_reported_bytes_equal_the_bytes_handed_to_collectives(results, codec):
    for rank in _get(results, "scenario_codecs"):
        entry = rank[codec]
        assert entry["counted"] == entry["tallied"] > 0
        assert entry["steps"] == 3
        if codec != "dgc":  # DGC's first stage sends 25% + dense biases: still < dense
            assert entry["counted"] < entry["dense"]


def test_diloco_h1_outer_lr1_no_momentum_equals_synchronous_data_parallel(results):
    for rank in _get(results, "scenario_diloco_h1"):
        torch.testing.assert_close(rank["diloco"], rank["ddp"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loop", sorted(OUTER))
def test_outer_loops_keep_global_copies_identical(results, loop):
    rank0, rank1 = (r[loop] for r in _get(results, "scenario_outer_loops"))
    for a, b in zip(rank0["steps"], rank1["steps"], strict=True):
        for name in a["globals"]:
            assert torch.equal(a["globals"][name], b["globals"][name])
    assert rank0["sent"] > 0 and rank0["dense"] > rank0["sent"]


@pytest.mark.parametrize("loop", ["diloco", "streaming_alpha0", "sparseloco"])
def test_replicas_identical_right_after_a_fragment_is_applied(results, loop):
    rank0, rank1 = (r[loop] for r in _get(results, "scenario_outer_loops"))
    applied_any = 0
    for a, b in zip(rank0["steps"], rank1["steps"], strict=True):
        for fragment in a["applied"]:
            for name in rank0["fragments"][fragment]:
                assert torch.equal(a["params"][name], b["params"][name])
                assert torch.equal(a["params"][name], a["globals"][name])
                applied_any += 1
    assert applied_any > 0


def test_streaming_schedule_staggers_fragments_with_overlap(results):
    steps = _get(results, "scenario_outer_loops")[0]["streaming"]["steps"]
    # H=4, P=2, tau=1: fragment 0 launches at 1, applies at 2; fragment 1 at 3 -> 4; then +4
    assert [s["pending"] for s in steps] == [[0], [], [1], [], [0], [], [1], []]
    assert [s["applied"] for s in steps] == [[], [0], [], [1], [], [0], [], [1]]


def test_checkpoint_restores_hook_and_outer_loop_state(results):
    for rank in _get(results, "scenario_checkpoint"):
        assert torch.equal(*rank["hook"])
        assert rank["hook_counters"] == (6, 6)
        assert rank["pending_at_save"] == [0]  # a fragment exchange was in flight at the save
        assert torch.equal(*rank["outer"])
        assert torch.equal(*rank["outer_globals"])


def test_a_hanging_worker_raises_a_clear_error_within_the_timeout(results):
    rank0 = _get(results, "scenario_hang")[0]
    assert rank0["error"] is not None and "rank 0 of 2" in rank0["error"]
    assert "peer has probably died or hangs" in rank0["error"]
    assert rank0["elapsed"] < 10


def test_a_dying_worker_raises_a_clear_error_on_the_others(tmp_path):
    exit_codes = _run(_worker_dies, (str(tmp_path / "store"), str(tmp_path)))
    assert exit_codes[1] == 7
    result = torch.load(tmp_path / "dies-0.pt", weights_only=False)
    assert result["error"] is not None and "gradkit.distributed" in result["error"]
    assert result["step"] == 2 and result["elapsed"] < 10


def test_timing_report(results):
    print({name: round(entry["seconds"], 2) for name, entry in results[0].items()})
    assert all(entry["seconds"] < 60 for entry in results[0].values())
