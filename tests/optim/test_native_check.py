"""The non-finite check folded into a kernel's first pass (ChainOptimizer._deferred_checks).

Kernels that reduce every gradient of a group, read-only, before writing anything (LARS with
layer adaptation, NovoGrad, Gravity, Stable-SPAM, OASIS with adaptive_lr, InducedMetric, MARS)
do the ``nonfinite="skip"`` check themselves:
the guard does not read those gradients again. The skip must look exactly as the guard's (state,
parameters and step counts untouched, counters, log, warning), and a false alarm (non-finite
sums from finite gradients) must give exactly the unchecked kernel's step.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from gradkit import _native
from gradkit.core.guards import NonFiniteGuard, SpikeGuard
from support.harness import all_specs, grad_sequence, make_params, run

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="native kernels unavailable (no C compiler on this machine)"
)


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:]}]


def _defers(spec) -> bool:
    params = make_params()
    opt = spec.make(_groups(params))
    run(opt, params, grad_sequence(1))
    return hasattr(opt, "_checks_in_step") and all(
        opt._checks_in_step(g, g["params"], [p.grad for p in g["params"]]) for g in opt.param_groups
    )


SPECS = [s for s in all_specs() if _defers(s)]
IDS = [s.id for s in SPECS]


def test_the_two_pass_kernels_check_in_their_first_pass():
    names = {s.cls.__name__ for s in SPECS}
    assert {"LARS", "NovoGrad", "Gravity", "StableSPAM", "OASIS", "InducedMetric", "MARS"} <= names
    # one-pass kernels and LAMB (whose first pass writes the moments) keep the guard's check
    assert not names & {"AdamW", "Adam", "Lion", "SGD", "LAMB", "AdamP"}, names


def _never_skips() -> SpikeGuard:
    """A second guard that never fires (no loss to watch): the built-in guard then checks."""
    return SpikeGuard(monitor=("loss",))


@pytest.fixture
def checked_groups(monkeypatch):
    """Indices of the groups the built-in guard itself examined, per step."""
    seen: list[list[int]] = []
    original = NonFiniteGuard.check

    def spy(self, groups, loss):
        seen.append([gg.index for gg in groups])
        return original(self, groups, loss)

    monkeypatch.setattr(NonFiniteGuard, "check", spy)
    return seen


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for idx in a:
        assert a[idx].keys() == b[idx].keys()
        for key in a[idx]:
            x, y = torch.as_tensor(a[idx][key]), torch.as_tensor(b[idx][key])
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.filterwarnings("ignore:non-finite Hessian estimate")  # OASIS's feed of g*g
@pytest.mark.parametrize("where", [2, 3])  # group 1's (3, 2, 2) matrix or its (1,) vector
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_kernel_skip_matches_the_guard_skip(spec, bad, where, checked_groups):
    # the same optimizer twice: the kernel checks (default), the guard checks (use_native off
    # only for the bad step's reference: the readable path never defers)
    params = make_params()
    opt = spec.make(_groups(params))
    run(opt, params, grad_sequence(2))
    before_params, before_state = _snapshot(opt, params)
    checked_groups.clear()
    grads = grad_sequence(1, seed=5)[0]
    grads[where].view(-1)[0] = bad  # group 1
    with pytest.warns(RuntimeWarning, match="non-finite gradient in param group 1") as record:
        run(opt, params, [grads])
    assert checked_groups == [], "the guard read gradients the kernel checks"
    assert record[0].filename.endswith("harness.py")  # points at the step() call, as the guard's
    # group 1: untouched, step counts included; group 0 stepped
    for p, q in zip(params[2:], before_params[2:], strict=True):
        assert torch.equal(p, q)
    after = opt.state_dict()["state"]
    _assert_same_state({i: after[i] for i in (2, 3)}, {i: before_state[i] for i in (2, 3)})
    assert all(float(after[i]["step"]) == 3 for i in (0, 1))
    assert [g["nonfinite_skips"] for g in opt.param_groups] == [0, 1]
    assert [(e["group"], e["guard"]) for e in opt.skip_log] == [(1, "nonfinite")]
    # the same as an optimizer whose guard did the check
    ref_params = make_params()
    ref = spec.make(_groups(ref_params))
    ref.add_guard(_never_skips())
    run(ref, ref_params, grad_sequence(2))
    with pytest.warns(RuntimeWarning, match="non-finite") as record:
        run(ref, ref_params, [grads])
    assert record[0].filename.endswith("harness.py")
    assert checked_groups[-1] == [0, 1]
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)
    _assert_same_state(opt.state_dict()["state"], ref.state_dict()["state"])
    # and the next finite step goes on in both, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(opt, params, grad_sequence(1, seed=7))
        run(ref, ref_params, grad_sequence(1, seed=7))
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:non-finite Hessian estimate")  # OASIS's feed of g*g
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_false_alarms_run_the_unchecked_step(spec):
    # float64 gradients whose squares overflow, and a NaN parameter with finite gradients: the
    # sums are not finite, the gradients are; the step must equal the guard-checked one exactly
    def steps(deferred):
        params = make_params()
        opt = spec.make(_groups(params))
        if not deferred:
            opt.add_guard(_never_skips())
        run(opt, params, grad_sequence(2))
        with torch.no_grad():
            params[0][0, 0] = float("nan")
        huge = [g * 1e200 for g in grad_sequence(1, seed=5)[0]]
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="non-finite gradient")
            run(opt, params, [huge])
        return opt, params

    checked, checked_params = steps(deferred=True)
    unchecked, unchecked_params = steps(deferred=False)
    for p, q in zip(checked_params, unchecked_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, equal_nan=True)
    assert [g["nonfinite_skips"] for g in checked.param_groups] == [0, 0]
    assert not checked.skip_log
    _assert_same_state(checked.state_dict()["state"], unchecked.state_dict()["state"])


LARS = next(s for s in SPECS if s.cls.__name__ == "LARS")


def _guard_sees(opt, params, checked_groups) -> list[int]:
    checked_groups.clear()
    run(opt, params, grad_sequence(1, seed=4))
    return checked_groups[-1] if checked_groups else []


@pytest.mark.parametrize(
    "case", ["first step", "raise", "second guard", "q8 state", "readable path", "no adaptation"]
)
def test_the_guard_checks_where_the_kernel_cannot(case, checked_groups):
    params = make_params()
    kwargs = {
        "raise": {"nonfinite": "raise"},
        "q8 state": {"state_dtype": "q8"},
        "no adaptation": {"layer_adaptation": False},
    }.get(case, {})
    opt = LARS.make(_groups(params), **kwargs)
    if case == "second guard":
        opt.add_guard(SpikeGuard())
    if case == "readable path":
        opt.use_native = False
    if case != "first step":
        run(opt, params, grad_sequence(1))
    assert _guard_sees(opt, params, checked_groups) == [0, 1]
    # once the state exists, the kernel checks
    if case == "first step":
        assert _guard_sees(opt, params, checked_groups) == []


def test_mixed_groups_only_the_kernel_groups_defer(checked_groups):
    params = make_params()
    opt = LARS.make([{"params": params[:2]}, {"params": params[2:], "layer_adaptation": False}])
    run(opt, params, grad_sequence(1))
    assert _guard_sees(opt, params, checked_groups) == [1]
