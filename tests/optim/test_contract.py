"""The contract every gradkit optimizer must meet (DESIGN.md section 5).

For each spec in ``tests/support/specs_*.py``: the update matches an independent float64 reference
over several steps with state; ``state_dict`` resume is bit-exact; bad hyperparameters raise
``ValueError`` naming the argument; non-finite gradients never touch parameters or state; the
registry's state size is what the optimizer really allocates; convergence smoke tests pass.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gradkit
from gradkit.core import NonFiniteGradientError
from support.harness import (
    Spec,
    all_specs,
    checkpoint_roundtrip,
    grad_sequence,
    make_params,
    quadratic_problem,
    rosenbrock,
    run,
)

SPECS = all_specs()
by_id = pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
N_STEPS = 6


@by_id
def test_matches_reference_with_state(spec: Spec) -> None:
    if spec.reference is None:
        pytest.skip("no elementwise reference for this configuration")
    params = make_params()
    ref_params = [p.detach().clone() for p in params]
    ref_states: list[dict] = [{} for _ in params]
    opt = spec.make(params)
    hp = {**opt.defaults}
    for t, grads in enumerate(grad_sequence(N_STEPS), start=1):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for rp, g, st in zip(ref_params, grads, ref_states, strict=True):
            spec.reference(rp, g.clone(), st, t, hp)
        for p, rp, st in zip(params, ref_params, ref_states, strict=True):
            torch.testing.assert_close(
                p.detach(), rp, rtol=spec.ref_tolerance, atol=spec.ref_tolerance
            )
            for ours, theirs in spec.state_map.items():
                expected = st[theirs]
                expected = torch.as_tensor(expected, dtype=torch.float64)
                torch.testing.assert_close(
                    opt.state[p][ours].to(torch.float64).expand_as(expected),
                    expected,
                    rtol=spec.ref_tolerance,
                    atol=spec.ref_tolerance,
                    msg=lambda m, k=ours, t=t: f"state {k!r} at step {t}: {m}",
                )


@by_id
def test_gradients_are_not_modified(spec: Spec) -> None:
    params = make_params()
    opt = spec.make(params)
    grads = grad_sequence(3)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, step_grads, strict=True):
            assert torch.equal(p.grad, g)


@by_id
def test_state_dict_resume_is_bit_exact(spec: Spec) -> None:
    grads = grad_sequence(8)
    params = make_params()
    run(spec.make(params), params, grads)

    first = make_params()
    opt = spec.make(first)
    run(opt, first, grads[:4])
    saved_params = [p.detach().clone() for p in first]
    saved_state = checkpoint_roundtrip(opt.state_dict())

    resumed = [p.clone().detach().requires_grad_() for p in saved_params]
    fresh = spec.make(resumed)
    fresh.load_state_dict(saved_state)
    run(fresh, resumed, grads[4:])
    for p, q in zip(params, resumed, strict=True):
        assert torch.equal(p, q)


@by_id
def test_bad_hyperparameters_raise_naming_the_argument(spec: Spec) -> None:
    for kwargs, needle in spec.bad_args:
        with pytest.raises(ValueError, match=needle):
            spec.make(make_params(), **kwargs)
        # the same value in a param group is rejected too
        with pytest.raises(ValueError, match=needle):
            spec.make([{"params": make_params()[:1], **kwargs}])


def _nan_in_second_param(seed: int = 3) -> list[torch.Tensor]:
    grads = grad_sequence(1, seed=seed)[0]
    grads[1] = grads[1].clone()
    grads[1][0] = float("nan")
    return grads


@by_id
def test_nonfinite_skip_leaves_params_and_state_untouched(spec: Spec) -> None:
    params = make_params()
    opt = spec.make(params)
    run(opt, params, grad_sequence(2))
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict()["state"])
    for p, g in zip(params, _nan_in_second_param(), strict=True):
        p.grad = g
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, before_params, strict=True))
    after = opt.state_dict()["state"]
    for idx, entry in before_state.items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(after[idx][key]), torch.as_tensor(value)), key
    assert opt.param_groups[0]["nonfinite_skips"] == 1
    # a later finite step proceeds, and the warning is not repeated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(opt, params, grad_sequence(1, seed=9))
    assert not all(torch.equal(a, b) for a, b in zip(params, before_params, strict=True))


@by_id
def test_nonfinite_raise_names_the_parameter(spec: Spec) -> None:
    model = torch.nn.Linear(3, 2).double()
    opt = spec.make(model.named_parameters(), nonfinite="raise")
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.tensor([1.0, float("inf")], dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteGradientError, match="bias"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert all(not s for s in opt.state.values())


@by_id
def test_registry_state_bytes_match_allocation(spec: Spec) -> None:
    info = {i.name: i for i in gradkit.optim.available()}[spec.cls.__name__]
    p = torch.zeros(64, 32, requires_grad=True)
    opt = spec.cls([p], **info.defaults) if "lr" in info.defaults else spec.cls([p], lr=0.1)
    p.grad = torch.randn_like(p)
    opt.step()
    big = sum(
        v.numel() * v.element_size()
        for v in opt.state[p].values()
        if isinstance(v, torch.Tensor) and v.numel() > 1
    )
    assert big / p.numel() == info.state_bytes_per_param


def _converge_kwargs(spec: Spec, problem: str) -> dict:
    if spec.converge is None:
        pytest.skip("convergence is checked on another configuration of this optimizer")
    kwargs = {k: v for k, v in spec.converge.items() if k != "rosen_lr"}
    if problem == "rosenbrock":
        kwargs["lr"] = spec.converge.get("rosen_lr", kwargs["lr"])
    return kwargs


@by_id
def test_converges_on_quadratic(spec: Spec) -> None:
    a, b, optimum = quadratic_problem()
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    opt = spec.make([x], **_converge_kwargs(spec, "quadratic"))
    for _ in range(3000):
        opt.zero_grad()
        loss = 0.5 * x @ a @ x - b @ x
        loss.backward()
        opt.step()
    assert torch.linalg.vector_norm(x.detach() - optimum) < 0.05 * torch.linalg.vector_norm(optimum)


@by_id
def test_makes_progress_on_rosenbrock(spec: Spec) -> None:
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = spec.make([xy], **_converge_kwargs(spec, "rosenbrock"))
    start = rosenbrock(xy).item()
    for _ in range(3000):
        opt.zero_grad()
        loss = rosenbrock(xy)
        loss.backward()
        opt.step()
    end = rosenbrock(xy).item()
    assert end < 0.01 * start, (start, end)
