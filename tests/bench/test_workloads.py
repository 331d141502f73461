"""Tests of the gradkit bench workloads: interface, determinism, ground truth, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradkit.optim as go
from gradkit.bench import lm
from gradkit.bench.quadratic import NoisyQuadratic
from gradkit.bench.workloads import ROLES, WORKLOADS, get_workload

NAMES = sorted(WORKLOADS)


@pytest.fixture(autouse=True)
def _one_thread_flushed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)


def adamw_curve(workload, seed: int, steps: int, stop_at_target: bool = False):
    """Train with the workload's reference AdamW the way the runner does (no weight decay on
    ``"vector"`` parameters); (steps, values)."""
    task = workload.setup(seed)
    params = [
        {"params": group["params"], "weight_decay": 0.0}
        if group["role"] == "vector"
        else {"params": group["params"]}
        for group in task.param_groups()
    ]
    opt = go.AdamW(params, **workload.adamw_reference)
    evaluated, values = [], []
    for step in range(steps):
        loss_fn = task.batch_loss(step)

        def closure(loss_fn=loss_fn):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
        done = step + 1
        if done % workload.eval_every == 0 or done == steps:
            evaluated.append(done)
            values.append(task.evaluate()[workload.metric])
            if stop_at_target and values[-1] <= workload.target:
                break
    return evaluated, values


def test_registry_names_match_workloads():
    assert set(NAMES) == {
        "digits_logreg",
        "digits_mlp",
        "multitask_digits",
        "noisy_quadratic",
        "char_lm",
        "grokking",
    }
    for name in NAMES:
        assert get_workload(name).name == name


def test_unknown_workload_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown workload: 'mnist'.*digits_logreg.*grokking"):
        get_workload("mnist")


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="Invalid seed"):
        get_workload("noisy_quadratic").setup(seed)


@pytest.mark.parametrize("name", NAMES)
def test_workload_attributes(name):
    workload = get_workload(name)
    assert isinstance(workload.description, str) and workload.description
    assert isinstance(workload.metric, str) and workload.metric
    assert 0 < workload.eval_every <= workload.max_steps
    assert workload.batch_size > 0 and workload.target > 0
    assert {"lr", "weight_decay", "betas"} <= set(workload.adamw_reference)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_cover_every_parameter_once(name):
    task = get_workload(name).setup(0)
    groups = task.param_groups()
    seen = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in seen}) == len(seen) == len(list(task.model.parameters()))
    named = dict(task.model.named_parameters())
    for group in groups:
        assert group["role"] in ROLES
        assert len(group["names"]) == len(group["params"])
        for pname, param in zip(group["names"], group["params"], strict=True):
            assert named[pname] is param
            if group["role"] == "matrix":
                assert param.ndim >= 2


@pytest.mark.parametrize("name", NAMES)
def test_batch_loss_is_a_pure_function_of_the_step(name):
    task = get_workload(name).setup(0)
    first = task.batch_loss(3)()
    task.batch_loss(0)()  # another step in between changes nothing
    again = task.batch_loss(3)()
    assert first.ndim == 0 and first.requires_grad and torch.isfinite(first)
    assert torch.equal(first, again)
    if name != "grokking":  # full batch: every step is the same batch by design
        assert not torch.equal(first, task.batch_loss(4)())


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_restores_mode_and_reports_metric(name):
    workload = get_workload(name)
    task = workload.setup(0)
    result = task.evaluate()
    assert task.model.training
    assert workload.metric in result and np.isfinite(result[workload.metric])
    assert all(p.grad is None for p in task.model.parameters())
    task.model.eval()
    task.evaluate()
    assert not task.model.training


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_curve_and_global_rng_untouched(name):
    workload = get_workload(name)
    workload.eval_every = 2
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = adamw_curve(workload, seed=5, steps=4)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.manual_seed(999)  # a different global state must not matter
    second = adamw_curve(workload, seed=5, steps=4)
    assert first == second
    assert adamw_curve(workload, seed=6, steps=4) != first


def test_different_seeds_start_from_different_initializations():
    for name in NAMES:
        workload = get_workload(name)
        a, b = workload.setup(0), workload.setup(1)
        pa, pb = next(a.model.parameters()), next(b.model.parameters())
        assert not torch.equal(pa, pb), name


# --- noisy quadratic: the ground truth is known ----------------------------------------------


def _numpy_problem(workload: NoisyQuadratic):
    hessian, x_star, _ = workload.problem()
    return hessian.numpy(), x_star.numpy()


def test_quadratic_spectrum_and_excess_loss_match_float64_hand_computation():
    workload = NoisyQuadratic()
    task = workload.setup(0)
    hessian, x_star = _numpy_problem(workload)
    expected = np.logspace(-2, 1, workload.dim)
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), expected, rtol=1e-10)
    assert task.excess_loss(torch.from_numpy(x_star)) == 0.0
    point = np.random.default_rng(0).normal(size=workload.dim)
    diff = point - x_star
    by_hand = 0.5 * sum(diff[i] * hessian[i, j] * diff[j] for i in range(100) for j in range(100))
    assert task.excess_loss(torch.from_numpy(point)) == pytest.approx(by_hand, rel=1e-12)
    with torch.no_grad():
        task.model.x.copy_(torch.from_numpy(point))
    assert task.evaluate()["excess_loss"] == pytest.approx(by_hand, rel=1e-6)


def test_quadratic_stochastic_gradient_is_unbiased():
    workload = NoisyQuadratic()
    task = workload.setup(3)
    hessian, x_star = _numpy_problem(workload)
    x = task.model.x.detach().double().numpy()
    batches = 1500
    grads = np.empty((batches, workload.dim))
    for step in range(batches):
        task.model.x.grad = None
        task.batch_loss(step)().backward()
        grads[step] = task.model.x.grad.double().numpy()
    true_grad = hessian @ (x - x_star)
    # per-coordinate noise: cov(g) = sigma^2 / B * H^2
    std_error = np.sqrt(np.diag(hessian @ hessian) * workload.noise_std**2 / workload.batch_size)
    z = (grads.mean(0) - true_grad) / (std_error / np.sqrt(batches))
    assert np.abs(z).max() < 5.0
    assert np.abs(grads[0] - true_grad).max() > 0.1  # a single batch really is noisy


# --- char_lm: the text --------------------------------------------------------------------------


def test_char_lm_text_is_deterministic_and_splits_are_disjoint():
    text = lm.stdlib_docstring_text()
    lm.stdlib_docstring_text.cache_clear()
    lm.encoded_splits.cache_clear()
    assert lm.stdlib_docstring_text() == text
    assert len(text) > 100_000 and set(text) <= set(lm.VOCAB)
    train, val = lm.encoded_splits()
    assert len(train) + len(val) == len(text)
    assert len(val) == len(text) - int(len(text) * 0.9)
    assert "".join(lm.VOCAB[i] for i in val[:200].tolist()) == text[len(train) : len(train) + 200]

    task = get_workload("char_lm").setup(0)
    for step in range(5):
        starts = task.batch_starts(step)
        assert int(starts.max()) + task.context + 1 <= len(task.train_tokens)
    assert torch.equal(task.val_targets[:, :-1], task.val_inputs[:, 1:])
    assert task.val_inputs.shape[0] == get_workload("char_lm").eval_windows


# --- data order and splits ---------------------------------------------------------------------


def test_epoch_sampler_visits_each_example_at_most_once_per_epoch():
    from gradkit.bench._workload import EpochSampler

    sampler = EpochSampler(n=103, batch_size=10, seed=4)
    for epoch in range(2):
        seen = torch.cat([sampler.indices(epoch * 10 + k) for k in range(10)])
        assert len(seen) == 100 and len(set(seen.tolist())) == 100
    assert not torch.equal(sampler.indices(0), sampler.indices(10))  # reshuffled each epoch
    assert torch.equal(sampler.indices(13), EpochSampler(103, 10, 4).indices(13))


def test_digits_and_grokking_splits_are_fixed_and_disjoint():
    from gradkit.bench.digits import digits_split
    from gradkit.bench.grokking import modular_addition_split

    x_train, _, x_val, _ = digits_split()
    assert (len(x_train), len(x_val)) == (1437, 360)
    assert torch.allclose(x_train.mean(0), torch.zeros(64), atol=1e-5)
    pairs_train, sums_train, pairs_val, sums_val = modular_addition_split(59, 0.5)
    keys = lambda pairs: set((pairs[:, 0] * 59 + pairs[:, 1]).tolist())  # noqa: E731
    assert keys(pairs_train).isdisjoint(keys(pairs_val))
    assert len(keys(pairs_train) | keys(pairs_val)) == 59**2
    assert torch.equal(sums_train, pairs_train.sum(1) % 59)
    assert torch.equal(sums_val, pairs_val.sum(1) % 59)


# --- multitask_digits: per-task losses ----------------------------------------------------------


def test_multitask_task_losses_sum_to_the_training_loss():
    from gradkit.multitask import Sum, backward

    task = get_workload("multitask_digits").setup(0)
    losses = [f() for f in task.task_losses(7)]
    total = task.batch_loss(7)()
    assert len(losses) == 3
    assert torch.allclose(torch.stack(losses).sum(), total)
    shared, own = task.shared_parameters(), task.task_parameters()
    assert len(shared) + sum(map(len, own)) == len(list(task.model.parameters()))

    total.backward()
    expected = [p.grad.clone() for p in task.model.parameters()]
    task.model.zero_grad(set_to_none=True)
    backward([f() for f in task.task_losses(7)], shared, Sum(), task_params=own)
    for want, param in zip(expected, task.model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-5, atol=1e-6)


# --- every workload reaches its target with its reference AdamW ----------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_reference_adamw_reaches_target_within_budget(name):
    workload = get_workload(name)
    steps, values = adamw_curve(workload, seed=0, steps=workload.max_steps, stop_at_target=True)
    assert values[-1] <= workload.target, f"{name}: {values[-1]} > {workload.target} at {steps}"
    assert values[0] > workload.target  # the target is not met right after the first steps


def test_digits_reader_returns_sklearn_load_digits():
    from sklearn.datasets import load_digits

    from gradkit.bench.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.data)
    np.testing.assert_array_equal(labels, reference.target)
