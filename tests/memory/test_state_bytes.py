"""Exact state accounting (gradkit.memory.state_bytes) and per-policy registry bytes."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

import gradkit.optim as go
from gradkit.memory import state_bytes


def _two_params():
    w = torch.nn.Parameter(torch.zeros(64, 64))  # 4096 values: compressed (16 blocks of 256)
    b = torch.nn.Parameter(torch.zeros(10))  # under 4096: stays fp32
    for p in (w, b):
        p.grad = torch.ones_like(p)
    return w, b


@pytest.mark.parametrize(
    ("policy", "per_state_w"),
    [("fp32", 4096 * 4), ("bf16", 4096 * 2), ("q8", 4096 + 16 * 4)],
)
def test_state_bytes_counts_by_hand(policy, per_state_w):
    w, b = _two_params()
    opt = go.AdamW([w, b], state_dtype=policy)
    opt.step()
    sb = state_bytes(opt)
    per_state_b = 10 * 4
    assert sb.per_param == [2 * per_state_w, 2 * per_state_b]
    assert sb.per_name == {
        "adam.exp_avg": per_state_w + per_state_b,
        "adam.exp_avg_sq": per_state_w + per_state_b,
    }
    assert sb.total == 2 * per_state_w + 2 * per_state_b
    assert sb.step == 2 * 4  # two float32 scalar step counters, reported apart
    assert sb.total_with_step == sb.total + 8
    assert sb.num_params == 4106
    assert sb.bytes_per_param == pytest.approx(sb.total / 4106)


def test_state_bytes_before_the_first_step_and_for_torch_optimizers():
    w, b = _two_params()
    assert state_bytes(go.Lion([w, b], state_dtype="q8")).total == 0
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
    opt.step()
    assert state_bytes(opt).total == (4096 + 10) * 4


def test_registry_bytes_per_policy():
    info = {i.name: i for i in go.available()}
    assert info["AdamW"].bytes_per_param("fp32") == 8.0
    assert info["AdamW"].bytes_per_param("bf16") == 4.0
    assert info["AdamW"].bytes_per_param("q8") == pytest.approx(2 * (1 + 4 / 256))
    assert info["Lion"].bytes_per_param("q8", block_size=2048) == pytest.approx(1 + 4 / 2048)
    assert info["SGD"].bytes_per_param("q8") == 0.0
    with pytest.raises(ValueError, match="Invalid policy: 'fp8'"):
        info["AdamW"].bytes_per_param("fp8")


@pytest.mark.parametrize("policy", ["bf16", "q8"])
def test_measured_bytes_match_theory_for_large_tensors(policy):
    params = [torch.nn.Parameter(torch.zeros(256, 256)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn_like(p)
    for name in ("AdamW", "Lion", "AdEMAMix"):
        opt = getattr(go, name)(params, state_dtype=policy)
        opt.step()
        theory = {i.name: i for i in go.available()}[name].bytes_per_param(policy)
        assert state_bytes(opt).bytes_per_param == pytest.approx(theory)


def _digits_run(make) -> float:
    """Final full-batch loss of a 64-128-10 tanh MLP on digits after 500 steps at lr 3e-4."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    opt = make(model.parameters())
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y).item()


@pytest.fixture(scope="module")
def digits_losses():
    torch.set_flush_denormal(True)
    try:
        return {
            "fp32": _digits_run(lambda p: go.AdamW(p, lr=3e-4)),
            "q8": _digits_run(lambda p: go.AdamW(p, lr=3e-4, state_dtype="q8")),
        }
    finally:
        torch.set_flush_denormal(False)


def test_q8_adamw_tracks_fp32_adamw_on_digits(digits_losses):
    fp32, q8 = digits_losses["fp32"], digits_losses["q8"]
    assert fp32 < 0.3  # it learned (from ~2.3)
    # Faithful 8-bit Adam ends *lower* here (-9%: second moments far below their block's max
    # round to 0, enlarging those coordinates' steps); bitsandbytes does the same (next test).
    # So: never more than 2% worse than fp32, and within 15% of it.
    assert q8 <= 1.02 * fp32, (fp32, q8)
    assert q8 >= 0.85 * fp32, (fp32, q8)


def test_q8_adamw_matches_bitsandbytes_8bit_adamw_on_digits(digits_losses):
    try:
        import bitsandbytes as bnb

        torch.set_flush_denormal(True)
        theirs = _digits_run(lambda p: bnb.optim.AdamW8bit(p, lr=3e-4, weight_decay=1e-2))
    except Exception as e:  # import or CPU-kernel failure
        pytest.skip(f"bitsandbytes 8-bit AdamW does not run on CPU here: {type(e).__name__}: {e}")
    finally:
        torch.set_flush_denormal(False)
    assert abs(digits_losses["q8"] - theirs) <= 0.02 * theirs, (digits_losses["q8"], theirs)
