"""Runner and optimizer specs: determinism, divergence/failure records, untimed evaluation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.tiny_workloads import TinyMLP
from gradkit.bench.records import RunRecord
from gradkit.bench.runner import flushes_denormals, state_bytes, train
from gradkit.bench.spaces import Dim, WarmupCosine, builtin_specs, get_spec


def _run(name: str, seed: int = 0, workload: TinyMLP | None = None, **hp: float) -> RunRecord:
    workload = workload or TinyMLP()
    spec = get_spec(name)
    return train(workload, None, spec, {**spec.defaults, **hp}, seed)


def test_same_seed_same_curve_and_other_seed_differs() -> None:
    a, b, c = _run("AdamW", 0, lr=3e-2), _run("AdamW", 0, lr=3e-2), _run("AdamW", 1, lr=3e-2)
    assert a.status == "ok" and a.steps == [10, 20, 30, 40]
    assert a.values == b.values and a.train_loss == b.train_loss
    assert a.train_loss != c.train_loss
    assert a.steps_to_target is not None and a.steps_to_target in a.steps
    assert a.time_to_target == a.train_time[a.steps.index(a.steps_to_target)]
    assert a.final_value == a.values[-1] <= a.target


def test_runner_leaves_global_rng_and_denormal_flag_as_found() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    before = flushes_denormals()
    _run("SGD")
    assert torch.equal(torch.rand(3), expected)
    assert flushes_denormals() == before


def test_exploding_loss_is_recorded_as_diverged_and_stops_early() -> None:
    record = _run("SGD", lr=1e4, momentum=0.0, nesterov=False)
    assert record.status == "diverged"
    assert "training loss" in record.error
    assert record.steps_to_target is None and record.time_to_target is None
    assert len(record.steps) < 4  # stopped before the end of the budget


def test_exception_is_recorded_as_failed_with_the_error_text() -> None:
    record = _run("AdamW", workload=TinyMLP(fail_at=15))
    assert record.status == "failed"
    assert "tiny workload failure at step 15" in record.error
    assert record.steps == [10] and record.time_to_target is None


def test_bad_hyperparameter_is_a_failed_run_not_a_crash() -> None:
    record = _run("AdamW", lr=-1.0)
    assert record.status == "failed" and "lr" in record.error


def test_evaluation_time_is_excluded_from_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each evaluation moves the runner's clock forward by 1000 s; none of it may be counted."""
    import time

    from gradkit.bench import runner

    class Clock:
        offset = 0.0

        def perf_counter(self) -> float:
            return time.perf_counter() + self.offset

    clock = Clock()
    monkeypatch.setattr(runner, "time", clock)
    workload = TinyMLP()
    task = workload.setup(0)
    evaluate = task.evaluate

    def slow_evaluate() -> dict[str, float]:
        clock.offset += 1000.0
        return evaluate()

    task.evaluate = slow_evaluate
    spec = get_spec("AdamW")
    record = train(workload, task, spec, dict(spec.defaults), 0)
    assert record.status == "ok" and clock.offset == 4000.0
    assert record.total_train_time < 1000.0
    assert record.train_time == sorted(record.train_time)
    assert record.train_time[-1] == pytest.approx(record.total_train_time)


def test_state_bytes_and_peak_memory() -> None:
    record = _run("AdamW")
    n_params = 4 * 8 + 8 + 8 * 2 + 2
    assert record.state_bytes == 2 * 4 * n_params  # exp_avg and exp_avg_sq in fp32
    assert _run("SGD", momentum=0.0, nesterov=False).state_bytes == 0
    assert record.peak_memory_bytes >= 0
    assert record.extra["memory_method"] in ("rss_hwm", "cuda_allocated", "none")


@pytest.mark.parametrize("name", ["Sophia", "OASIS", "XGrad", "Muon", "AdEMAMix", "MARS"])
def test_special_optimizers_train(name: str) -> None:
    """Hessian refresh (Sophia, OASIS), closures (XGrad), role routing (Muon), budget kwargs."""
    record = _run(name)
    assert record.status == "ok", record.error
    assert all(math.isfinite(v) for v in record.values)
    assert record.state_bytes > 0


def test_hessian_refresh_happens_for_sophia() -> None:
    spec = get_spec("Sophia")
    record = train(TinyMLP(), None, spec, dict(spec.defaults), 0)
    assert record.status == "ok"
    # without Hessian refreshes (an interval longer than the run) the curvature estimate stays
    # at its initial value and the steps differ
    no_refresh = train(TinyMLP(), None, spec, {**spec.defaults, "hessian_interval": 10**6}, 0)
    assert no_refresh.train_loss != record.train_loss


def test_muon_routes_only_matrix_groups_and_vector_groups_get_no_decay() -> None:
    task = TinyMLP().setup(0)
    spec = get_spec("Muon")
    opt = spec.build(task.param_groups(), {**spec.defaults, "weight_decay": 0.1}, 100)
    matrix, head, vector = opt.param_groups
    assert matrix.get("use_muon") is None and head["use_muon"] is False
    assert vector["use_muon"] is False
    assert head["lr"] == spec.defaults["adam_lr"] and matrix["lr"] == spec.defaults["lr"]
    assert vector["weight_decay"] == 0.0 and head["weight_decay"] == 0.1


def test_every_registry_optimizer_has_a_spec_inside_its_space() -> None:
    import gradkit.optim as go

    specs = builtin_specs()
    assert set(specs) == {i.name for i in go.available()}
    for spec in specs.values():
        assert spec.space and spec.space[0].name == "lr"
        for dim in spec.space:
            assert dim.name in spec.defaults, (spec.name, dim.name)
            lo, hi = dim.sampled_bounds()
            assert 0 < lo < hi if dim.log else lo < hi


def test_warmup_cosine_schedule() -> None:
    sched = WarmupCosine(warmup_fraction=0.1)
    factors = [sched.factor(s, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_dim_one_minus_roundtrip_and_validation() -> None:
    dim = Dim("beta1", 0.8, 0.98, one_minus=True)
    assert dim.param_name == "one_minus_beta1"
    assert dim.sampled_bounds() == pytest.approx((0.02, 0.2))
    assert dim.value(0.1) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="Invalid range for lr"):
        Dim("lr", 1.0, 0.1)


def test_user_optimizer_by_import_path_gets_an_lr_space() -> None:
    spec = get_spec("torch.optim:SGD")
    assert spec.space[0].name == "lr" and spec.defaults["lr"] == pytest.approx(1e-3)
    record = train(TinyMLP(), None, spec, {"lr": 0.5}, 0)
    assert record.status == "ok" and record.optimizer == "torch.optim:SGD"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("NoSuchOpt", "Unknown optimizer: 'NoSuchOpt'; choose from: .*AdamW"),
        ("torch.optim:NoSuch", "has no 'NoSuch'"),
        ("no_such_module_xyz:Opt", "cannot import no_such_module_xyz"),
        ("torch.optim:", "expected 'package.module:Name'"),
        ("math:pi", "expected a torch.optim.Optimizer subclass"),
    ],
)
def test_bad_optimizer_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_spec(name)


def test_state_bytes_counts_tensors_except_step() -> None:
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(10)
    opt.step()
    assert state_bytes(opt) == 2 * 10 * 4


def test_record_json_roundtrip_with_non_finite_values() -> None:
    record = _run("SGD", lr=1e4, momentum=0.0, nesterov=False)
    record.values.append(math.inf)
    back = RunRecord.from_json(record.to_json())
    assert back.values[-1] == math.inf and back.error == record.error
    assert back.hparams == record.hparams
