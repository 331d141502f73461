"""state_dtype="fp32" | "bf16" | "q8" on every gradkit optimizer (gradkit.memory.storage)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import gradkit
import gradkit.optim as go
from gradkit.memory.quantization import code_map, dequantize_blockwise
from gradkit.transforms import clip_by_global_norm

# Adam family + Lion (the acceptance list) and the other stateful optimizers
FAMILY = [
    "Adam", "AdamW", "NAdam", "RAdam", "AdamP", "AdEMAMix", "MARS", "DiffGrad", "Grams",
    "AdaMomentum", "LAMB", "SPAM", "StableSPAM", "Lion", "Signum", "RMSprop", "Adagrad", "Muon",
    "LARS", "NovoGrad", "Sophia",
]  # fmt: skip
CLASSES = {info.name: info.cls for info in go.available()}


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),  # 5120 values: compressed
        torch.nn.Parameter(torch.randn(80, generator=g)),  # small: stays fp32
    ]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.1).to(p.dtype)


def _step(opt, params, step: int) -> None:
    _grads(params, step)
    if hasattr(opt, "update_hessian"):
        opt.update_hessian([p.grad.square() for p in params])
    opt.step()


@pytest.mark.parametrize("state_dtype", ["bf16", "q8"])
@pytest.mark.parametrize("name", FAMILY)
def test_every_optimizer_accepts_a_compressed_policy(name, state_dtype):
    params = _params()
    opt = CLASSES[name](params, lr=1e-3, state_dtype=state_dtype)
    for t in range(3):
        _step(opt, params, t)
    assert all(torch.isfinite(p).all() for p in params)
    big = opt.state[params[0]]
    stored = {v.dtype for k, v in big.items() if k != "step" and v.numel() == 64 * 80}
    assert stored == {torch.uint8 if state_dtype == "q8" else torch.bfloat16}
    small = opt.state[params[1]]
    assert all(v.dtype == torch.float32 for k, v in small.items() if k != "step" and v.numel() > 1)


@pytest.mark.parametrize("name", ["AdamW", "Lion", "AdEMAMix"])
def test_compressed_state_tracks_fp32_state(name):
    runs = {}
    for policy in ("fp32", "bf16", "q8"):
        params = _params()
        opt = CLASSES[name](params, lr=1e-3, state_dtype=policy)
        for t in range(5):
            _step(opt, params, t)
        runs[policy] = params[0].detach().clone()
    start = _params()[0].detach()
    moved = (runs["fp32"] - start).abs().mean()
    for policy in ("bf16", "q8"):
        assert (runs[policy] - runs["fp32"]).abs().mean() < 0.05 * moved


def test_nonnegative_state_uses_the_unsigned_map():
    params = _params()
    opt = go.AdamW(params, state_dtype="q8")
    _step(opt, params, 0)
    keys = set(opt.state[params[0]])
    assert "adam.exp_avg::absmax:s256" in keys and "adam.exp_avg_sq::absmax:u256" in keys


def test_per_group_policies_and_block_size():
    a, b, c = _params(0)[0], _params(1)[0], _params(2)[0]
    opt = go.Adam(
        [
            {"params": [a]},
            {"params": [b], "state_dtype": "q8", "state_block_size": 1024},
            {"params": [c], "state_dtype": "fp32"},
        ],
        state_dtype="bf16",
    )
    _step(opt, [a, b, c], 0)
    assert opt.state[a]["adam.exp_avg"].dtype == torch.bfloat16
    assert opt.state[b]["adam.exp_avg"].dtype == torch.uint8
    assert opt.state[b]["adam.exp_avg::absmax:s1024"].numel() == 5  # ceil(5120 / 1024)
    assert opt.state[c]["adam.exp_avg"].dtype == torch.float32


def test_small_tensors_stay_fp32_and_threshold_is_configurable():
    p = _params()[0]
    opt = go.AdamW([{"params": [p], "state_min_numel": 10_000}], state_dtype="q8")
    _step(opt, [p], 0)
    assert opt.state[p]["adam.exp_avg"].dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"state_dtype": "fp16"}, "Invalid state_dtype: 'fp16'"),
        ({"state_dtype": "int8"}, "Invalid state_dtype: 'int8'"),
        ({"state_dtype": "q8", "fused": True}, "Invalid state_dtype: 'q8' with fused=True"),
    ],
)
def test_bad_state_dtype_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        go.AdamW(_params(), **kwargs)


def test_bad_group_storage_keys_are_rejected():
    with pytest.raises(ValueError, match="Invalid state_dtype: 'q4'"):
        go.Lion([{"params": _params(), "state_dtype": "q4"}])
    with pytest.raises(ValueError, match="Invalid state_block_size: 0"):
        go.Lion([{"params": _params(), "state_block_size": 0}])


def _run(make, steps, params=None, opt=None):
    params = params or _params()
    opt = opt or make(params)
    for t in steps:
        _step(opt, params, t)
    return params, opt


def _same_state(a, b) -> bool:
    for pa, pb in zip(a.state.values(), b.state.values(), strict=True):
        if pa.keys() != pb.keys():
            return False
        if not all(torch.equal(pa[k], pb[k]) for k in pa):
            return False
    return True


@pytest.mark.parametrize("state_dtype", ["bf16", "q8"])
@pytest.mark.parametrize("name", ["AdamW", "Lion", "MARS"])
def test_state_dict_resume_is_bit_exact(name, state_dtype):
    def make(params):
        groups = [{"params": params, "stochastic_rounding": True}]
        return CLASSES[name](groups, lr=1e-2, state_dtype=state_dtype)

    full_params, full = _run(make, range(6))
    half_params, half = _run(make, range(3))
    buffer = io.BytesIO()
    torch.save({"opt": half.state_dict(), "params": [p.detach() for p in half_params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    codes = [v for k, v in saved["opt"]["state"][0].items() if k.endswith("exp_avg")]
    assert codes[0].dtype == (torch.uint8 if state_dtype == "q8" else torch.bfloat16)
    resumed_params = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved["opt"])
    _run(make, range(3, 6), resumed_params, resumed)
    assert all(torch.equal(a, b) for a, b in zip(full_params, resumed_params, strict=True))
    assert _same_state(full, resumed)


def test_bf16_parameters_with_stochastic_rounding_resume_bit_exactly():
    def make(params):
        return go.AdamW([{"params": params, "stochastic_rounding": True}], lr=1e-2)

    def bf16_params():
        return [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in _params()]

    full_params, _ = _run(make, range(4), bf16_params())
    half_params, half = _run(make, range(2), bf16_params())
    resumed = make(half_params)
    resumed.load_state_dict(half.state_dict())
    _run(make, range(2, 4), half_params, resumed)
    assert all(torch.equal(a, b) for a, b in zip(full_params, half_params, strict=True))
    # without stochastic rounding a 1e-5 step would vanish in bf16 (spacing ~1e-2 near 1)
    p = torch.nn.Parameter(torch.ones(8192, dtype=torch.bfloat16))
    opt = go.SGD([{"params": [p], "stochastic_rounding": True}], lr=1e-5)
    p.grad = torch.ones_like(p)
    opt.step()
    assert abs(p.float().mean().item() - (1 - 1e-5)) < 1e-5 and (p != 1).any()


def test_chunked_step_equals_single_piece():
    def make(params, chunk):
        return go.AdamW([{"params": params, "state_chunk_numel": chunk}], state_dtype="q8")

    a, _ = _run(lambda p: make(p, 1), range(3))  # one tensor per chunk
    b, _ = _run(lambda p: make(p, 0), range(3))  # chunking off
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_cross_parameter_transform_runs_in_one_piece():
    def make(params):
        opt = go.AdamW(
            [{"params": params, "state_chunk_numel": 1}],
            state_dtype="q8",
            transforms=[clip_by_global_norm(0.01)],
        )
        assert not opt.transform.per_parameter
        return opt

    clipped, _ = _run(make, range(2))
    # reference: the global clip applied by hand, then the same q8 AdamW without a transform
    ref_params = _params()
    ref = go.AdamW([{"params": ref_params, "state_chunk_numel": 0}], state_dtype="q8")
    for t in range(2):
        _grads(ref_params, t)
        torch.nn.utils.clip_grad_norm_(ref_params, 0.01)
        ref.step()
    for x, y in zip(clipped, ref_params, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_nonfinite_gradient_leaves_quantized_state_untouched():
    params, opt = _run(lambda p: go.AdamW(p, state_dtype="q8"), range(2))
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    weights = [p.detach().clone() for p in params]
    _grads(params, 9)
    params[0].grad[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert any("non-finite" in str(w.message) for w in caught)
    after = opt.state[params[0]]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(w, p) for w, p in zip(weights, params, strict=True))


def test_fp32_checkpoint_converts_into_q8_and_back():
    params, fp32_opt = _run(lambda p: go.AdamW(p), range(3))
    q8_opt = go.AdamW(params, state_dtype="q8")
    q8_opt.load_state_dict(fp32_opt.state_dict())
    assert q8_opt.param_groups[0]["state_dtype"] == "q8"  # the loading optimizer's policy wins
    entry, exact = q8_opt.state[params[0]], fp32_opt.state[params[0]]
    codes, absmax = entry["adam.exp_avg"], entry["adam.exp_avg::absmax:s256"]
    assert codes.dtype == torch.uint8
    decoded = dequantize_blockwise(codes, absmax, code_map(True))
    bound = 0.0071 * absmax.repeat_interleave(256)
    assert bool(((decoded - exact["adam.exp_avg"]).abs().view(-1) <= bound).all())
    # and back: q8 -> fp32 is the exact dequantized value
    back = go.AdamW(params)
    back.load_state_dict(q8_opt.state_dict())
    assert torch.equal(back.state[params[0]]["adam.exp_avg"], decoded)
    assert not any("absmax" in k for k in back.state[params[0]])
    _step(back, params, 5)  # and it keeps training in fp32
    assert back.state[params[0]]["adam.exp_avg"].dtype == torch.float32


def test_hessian_estimates_write_through_the_policy():
    params = _params()
    opt = go.Sophia(params, state_dtype="q8")
    for t in range(3):
        _step(opt, params, t)
    assert opt.state[params[0]]["sophia.hessian"].dtype == torch.uint8
    h = opt.read_state(params[0], "sophia.hessian")
    assert h.dtype == torch.float32 and h.abs().max() > 0


def test_chain_optimizer_takes_state_dtype_too():
    p = _params()[0]
    opt = gradkit.ChainOptimizer(
        [p], gradkit.chain(gradkit.trace(), gradkit.scale_by_lr()), lr=0.1, momentum=0.9,
        state_dtype="q8",
    )  # fmt: skip
    _step(opt, [p], 0)
    assert opt.state[p]["trace.momentum_buffer"].dtype == torch.uint8


def test_chunks_across_param_groups_equal_single_piece():
    def make(chunk):
        def build(params):
            return go.AdamW(
                [
                    {"params": params[:1], "lr": 1e-2, "state_chunk_numel": chunk},
                    {"params": params[1:], "lr": 1e-3, "state_chunk_numel": chunk},
                ],
                state_dtype="q8",
            )

        return build

    params = _params() + _params(1)
    a, opt_a = _run(
        make(100), range(3), params=[torch.nn.Parameter(p.detach().clone()) for p in params]
    )
    b, opt_b = _run(
        make(0), range(3), params=[torch.nn.Parameter(p.detach().clone()) for p in params]
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert _same_state(opt_a, opt_b)
