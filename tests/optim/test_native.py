"""The native fast paths (gradkit._native) against the readable chain, for every optimizer.

Every contract spec runs twice from the same start: with the native kernel (where the optimizer
has one for that configuration) and with the readable path (``use_native=False`` and
``fuse_apply=False``: every transform materializes its output). Parameters and every state
tensor must agree after several steps (float64 to 1e-12, float32 to a few ulps), and a
checkpoint written by either path must load into the other and continue identically. The
reference tests in test_contract.py compare the default path (native where it exists) with the
paper's equations.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gradkit import _native
from gradkit.core.guards import nonfinite_indices
from support.harness import all_specs, checkpoint_roundtrip, grad_sequence, make_params, run

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="native kernels unavailable (no C compiler on this machine)"
)
N_STEPS = 5
SPECS = all_specs()


def _readable(opt):
    opt.use_native = False
    opt.fuse_apply = False
    return opt


def _native_used(opt) -> bool:
    spec = getattr(opt, "native_spec", None)
    return bool(getattr(opt, "_plain", False)) and all(
        spec is not None and spec(g) is not None for g in opt.param_groups
    )


def _compare(a_opt, a_params, b_opt, b_params, tol):
    for pa, pb in zip(a_params, b_params, strict=True):
        torch.testing.assert_close(pa, pb, atol=tol, rtol=tol)
        sa, sb = a_opt.state[pa], b_opt.state[pb]
        assert set(sa) == set(sb)
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                torch.testing.assert_close(sa[key], sb[key], atol=tol, rtol=tol, msg=key)
            else:
                assert sa[key] == sb[key], key


NATIVE_SPECS = [s for s in SPECS if _native_used(s.make(make_params()))]


def test_native_kernels_cover_the_fast_families():
    """Guards against a kernel silently falling back: the families with a native kernel."""
    covered = {s.cls.__name__ for s in NATIVE_SPECS}
    assert {"Adam", "AdamW"} <= covered


@pytest.mark.parametrize("spec", NATIVE_SPECS, ids=[s.id for s in NATIVE_SPECS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_matches_readable_path(spec, dtype):
    grads = grad_sequence(N_STEPS, dtype=dtype)
    fast_params, slow_params = make_params(dtype), make_params(dtype)
    fast, slow = spec.make(fast_params), _readable(spec.make(slow_params))
    run(fast, fast_params, grads)
    run(slow, slow_params, grads)
    _compare(fast, fast_params, slow, slow_params, 1e-12 if dtype == torch.float64 else 2e-6)


@pytest.mark.parametrize("spec", NATIVE_SPECS, ids=[s.id for s in NATIVE_SPECS])
def test_checkpoints_cross_between_paths(spec):
    grads = grad_sequence(2 * N_STEPS)
    params = make_params()
    fast = spec.make(params)
    run(fast, params, grads[:N_STEPS])
    saved = checkpoint_roundtrip(fast.state_dict())
    # the readable path resumes from the native path's checkpoint (and vice versa)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = _readable(spec.make(resumed_params))
    resumed.load_state_dict(saved)
    run(fast, params, grads[N_STEPS:])
    run(resumed, resumed_params, grads[N_STEPS:])
    _compare(fast, params, resumed, resumed_params, 1e-12)
    back_params = [p.detach().clone().requires_grad_() for p in resumed_params]
    back = spec.make(back_params)
    back.load_state_dict(checkpoint_roundtrip(resumed.state_dict()))
    run(back, back_params, grads[:2])
    run(resumed, resumed_params, grads[:2])
    _compare(back, back_params, resumed, resumed_params, 1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_groups_mixing_native_and_readable(spec):
    """One group native, one forced readable (extra hyperparameter override is not needed: a
    non-contiguous parameter is not eligible), in the same step."""
    if spec not in NATIVE_SPECS:
        pytest.skip("no native kernel for this configuration")
    grads = grad_sequence(N_STEPS)
    base = make_params()
    strided = [torch.randn(4, 5, dtype=torch.float64).t().requires_grad_()]
    a_params = [p.detach().clone().requires_grad_() for p in base]
    b_params = [p.detach().clone().requires_grad_() for p in base]
    a_str = [s.detach().clone().t().contiguous().t().requires_grad_() for s in strided]
    b_str = [s.detach().clone().t().contiguous().t().requires_grad_() for s in strided]
    a = spec.make([{"params": a_params}, {"params": a_str}])
    b = _readable(spec.make([{"params": b_params}, {"params": b_str}]))
    g_str = torch.randn(N_STEPS, 5, 4, dtype=torch.float64)
    for t, step_grads in enumerate(grads):
        for ps in (a_params, b_params):
            for p, g in zip(ps, step_grads, strict=True):
                p.grad = g.clone()
        for s in (*a_str, *b_str):
            s.grad = g_str[t].clone()
        a.step()
        b.step()
    _compare(a, a_params + a_str, b, b_params + b_str, 1e-12)


def test_readable_fallback_for_low_precision_state_and_extra_transforms():
    import gradkit
    import gradkit.optim as go

    params = make_params()
    assert not go.AdamW(params, transforms=[gradkit.clip_by_global_norm(1.0)])._plain
    big = [torch.zeros(5000, requires_grad=True)]
    opt = go.AdamW(big, state_dtype="bf16")
    big[0].grad = torch.ones(5000)
    opt.step()  # compressed state runs the storage path, never a kernel on bf16 tensors
    assert opt.state[big[0]]["adam.exp_avg"].dtype == torch.bfloat16
    torch.testing.assert_close(big[0].detach(), torch.full((5000,), -1e-3))


def test_nonfinite_check_native_matches_torch():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g) for n in (0, 1, 17, 4099)]
    tensors += [torch.randn(33, generator=g, dtype=torch.float64)]
    assert nonfinite_indices(tensors) == []
    tensors[2][5] = float("nan")
    tensors[3][-1] = float("-inf")
    tensors[4][0] = float("inf")
    assert nonfinite_indices(tensors) == [2, 3, 4]
    huge = [torch.full((8,), 3e38)]  # finite, though its squares overflow
    assert nonfinite_indices(huge) == []


def test_disabled_by_environment_runs_readable_path():
    code = (
        "import warnings, torch, gradkit.optim as go\n"
        "from gradkit import _native\n"
        "p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    go.AdamW([p], lr=0.1).step()\n"
        "print(_native.available(), max(abs(v + 0.1) for v in p.tolist()) < 1e-6, len(w))\n"
    )
    env = {**os.environ, "GRADKIT_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # unavailable, Adam's first step still moves each coordinate by lr, and no warning (the user
    # chose this)
    assert done.stdout.split() == ["False", "True", "0"]


@pytest.mark.parametrize("state_dtype", ["q8", "bf16"])
@pytest.mark.parametrize("name", ["AdamW", "Sophia"])
def test_compressed_state_runs_the_kernel_on_decoded_state(name, state_dtype):
    """With q8/bf16 state the kernel updates the decoded fp32 copies, which are then encoded
    again: the result tracks the readable path up to the codec's rounding."""
    import gradkit.optim as go

    cls = getattr(go, name)
    g = torch.Generator().manual_seed(0)
    start = torch.randn(64, 80, generator=g)
    grads = [torch.randn(64, 80, generator=g) for _ in range(4)]
    runs = {}
    for native in (True, False):
        p = start.clone().requires_grad_()
        opt = cls([p], lr=1e-3, state_dtype=state_dtype)
        opt.use_native = native
        assert opt.native_spec(opt.param_groups[0]) is not None
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        runs[native] = (
            p.detach(),
            {k: opt.read_state(p, k) for k in opt.native_spec(opt.param_groups[0]).state},
        )
    (fast, fast_state), (slow, slow_state) = runs[True], runs[False]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for key in fast_state:
        scale = slow_state[key].abs().max()
        torch.testing.assert_close(fast_state[key], slow_state[key], rtol=0, atol=0.02 * scale)


def test_a_group_mixing_float32_and_float64_runs_one_kernel_per_dtype():
    import gradkit.optim as go

    g = torch.Generator().manual_seed(3)
    shapes_dtypes = [((6, 5), torch.float32), ((7,), torch.float64), ((3, 3), torch.float32)]
    grads = [[torch.randn(s, generator=g, dtype=d) for s, d in shapes_dtypes] for _ in range(3)]
    runs = []
    for native in (True, False):
        params = [
            torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=d).requires_grad_()
            for i, (s, d) in enumerate(shapes_dtypes)
        ]
        opt = go.AdamW(params, lr=1e-2)
        opt.use_native = native
        calls = []
        run_native = opt._run_native
        opt._run_native = lambda spec, lists, *a, calls=calls, run_native=run_native: (
            calls.append(lists[0][0].dtype) or run_native(spec, lists, *a)
        )
        for step_grads in grads:
            for p, grad in zip(params, step_grads, strict=True):
                p.grad = grad.clone()
            opt.step()
        assert calls == ([torch.float32, torch.float64] * 3 if native else [])
        runs.append((params, opt))
    (fast, fast_opt), (slow, slow_opt) = runs
    for a, b in zip(fast, slow, strict=True):
        tol = 1e-12 if a.dtype == torch.float64 else 2e-6
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
        torch.testing.assert_close(
            fast_opt.state[a]["adam.exp_avg_sq"], slow_opt.state[b]["adam.exp_avg_sq"]
        )
