"""The fused 8-bit step (gradkit.memory.storage._fused_q8, native gk_q8_fused) against the unfused
one (decode whole tensors to fp32, run the kernel, encode again).

The codec works per block and the kernels per element, so slicing a tensor into cache-sized
pieces must not change a single bit: parameters, codes and block maxima are compared with
``torch.equal`` after several steps, across block sizes, tensors that stay fp32 (fewer than
``state_min_numel`` values), lengths that end in a partial block and in a partial vector, and a
checkpoint written by one path and resumed by the other.
"""

from __future__ import annotations

import pytest
import torch

import gradkit.optim as go
from gradkit import _native
from gradkit.memory import storage

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="native kernels unavailable (no C compiler on this machine)"
)

# 2-D, a partial last block, a tail shorter than one vector, one tensor left in fp32 (< 4,096)
SHAPES = [(96, 130), (12_345,), (4_097,), (50,)]
N_STEPS = 4


def _elementwise_optimizers() -> list[str]:
    names = []
    for info in go.available():
        p = torch.nn.Parameter(torch.zeros(4))
        opt = info.cls([p], lr=1e-3, state_dtype="q8")
        spec = getattr(opt, "elementwise_spec", None)
        if spec is not None and spec(opt.param_groups[0]) is not None:
            names.append(info.name)
    return names


ELEMENTWISE = _elementwise_optimizers()


def _kwargs(name: str) -> dict:
    return {"momentum": 0.9} if name == "SGD" else {}


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    # scaled so that second moments and block maxima move between steps
    return [torch.randn(s, generator=g) * (1 + step) for s in SHAPES]


def _run(name: str, fused: bool, monkeypatch, steps=range(N_STEPS), opt=None, params=None, **kw):
    monkeypatch.setattr(storage, "use_fused_q8", fused)
    if params is None:
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    if opt is None:
        opt = getattr(go, name)(params, lr=1e-2, state_dtype="q8", **_kwargs(name), **kw)
    for t in steps:
        for p, grad in zip(params, _grads(t), strict=True):
            p.grad = grad
        opt.step()
    return opt, params


def _assert_identical(a_opt, a_params, b_opt, b_params) -> None:
    for pa, pb in zip(a_params, b_params, strict=True):
        assert torch.equal(pa, pb)
        sa, sb = a_opt.state[pa], b_opt.state[pb]
        assert set(sa) == set(sb)
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key


def test_the_fused_path_covers_the_elementwise_kernels():
    assert {"Adam", "AdamW", "SGD", "RMSprop", "DiffGrad", "AdEMAMix"} <= set(ELEMENTWISE)
    # kernels with a per-tensor reduction or a second phase keep the unfused path
    assert not {"LAMB", "Lion", "MARS", "NAdam"} & set(ELEMENTWISE)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_q8_step_is_bit_identical_to_the_unfused_step(name, monkeypatch):
    fused_opt, fused_params = _run(name, True, monkeypatch)
    plain_opt, plain_params = _run(name, False, monkeypatch)
    _assert_identical(fused_opt, fused_params, plain_opt, plain_params)
    entry = fused_opt.state[fused_params[0]]
    if any(k != "step" for k in entry):  # stateful: the state really is stored in 8 bits
        assert any(v.dtype == torch.uint8 for v in entry.values())


def test_the_fused_path_runs_from_the_second_step(monkeypatch):
    calls = []
    real = storage._run_fused_q8

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(storage, "_run_fused_q8", spy)
    _run("AdamW", True, monkeypatch)
    # step 1 creates the state on the unfused path (nothing stored yet), the rest are fused
    assert calls == [False] + [True] * (N_STEPS - 1)


@pytest.mark.parametrize("block", [64, 100, 2048])
def test_block_sizes(block, monkeypatch):
    def make():
        g = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
        group = {"params": ps, "state_block_size": block}  # a per-group storage key
        return go.AdamW([group], lr=1e-2, state_dtype="q8"), ps

    opt, ps = make()
    fused_opt, fused_params = _run("AdamW", True, monkeypatch, opt=opt, params=ps)
    opt, ps = make()
    plain_opt, plain_params = _run("AdamW", False, monkeypatch, opt=opt, params=ps)
    _assert_identical(fused_opt, fused_params, plain_opt, plain_params)
    assert any(f"u{block}" in k for k in fused_opt.state[fused_params[0]])


@pytest.mark.parametrize("first", [True, False])
def test_checkpoints_cross_between_fused_and_unfused(first, monkeypatch):
    """Two steps on one path, a state_dict, two more steps on the other path from the loaded
    checkpoint: the same bits as four steps on a single path."""
    ref_opt, ref_params = _run("AdamW", first, monkeypatch)
    opt, params = _run("AdamW", first, monkeypatch, steps=range(2))
    saved = opt.state_dict()
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = go.AdamW(resumed_params, lr=1e-2, state_dtype="q8")
    resumed.load_state_dict(saved)
    _run("AdamW", not first, monkeypatch, steps=range(2, N_STEPS), opt=resumed,
         params=resumed_params)  # fmt: skip
    _assert_identical(ref_opt, ref_params, resumed, resumed_params)


def test_groups_mixing_fused_and_other_paths(monkeypatch):
    """One q8 group runs fused, an fp32-state group and a q8 group under a kernel with a
    reduction (the unfused path) in the same step; each matches its own single-path run."""

    def make(fused: bool):
        monkeypatch.setattr(storage, "use_fused_q8", fused)
        g = torch.Generator().manual_seed(3)
        ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
        opt = go.AdamW(
            [{"params": ps[:2]}, {"params": ps[2:3], "state_dtype": "fp32"},
             {"params": ps[3:], "amsgrad": True}],
            lr=1e-2, state_dtype="q8",
        )  # fmt: skip
        return opt, ps

    fused_opt, fused_params = make(True)
    _run("AdamW", True, monkeypatch, opt=fused_opt, params=fused_params)
    plain_opt, plain_params = make(False)
    _run("AdamW", False, monkeypatch, opt=plain_opt, params=plain_params)
    _assert_identical(fused_opt, fused_params, plain_opt, plain_params)
    assert fused_opt.state[fused_params[2]]["adam.exp_avg"].dtype == torch.float32


def test_nonfinite_gradients_leave_the_q8_state_alone(monkeypatch):
    opt, params = _run("AdamW", True, monkeypatch, steps=range(2))
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    weights = [p.detach().clone() for p in params]
    for p, grad in zip(params, _grads(5), strict=True):
        p.grad = grad
    params[1].grad[7] = float("nan")
    opt.step()  # default nonfinite="skip": nothing moves
    for k, v in opt.state[params[0]].items():
        assert torch.equal(v, before[k]), k
    for p, w in zip(params, weights, strict=True):
        assert torch.equal(p, w)
