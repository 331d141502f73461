"""Schedules against hand-computed values at the key steps (start, end of warm-up, middle, end)."""

from __future__ import annotations

import math
import pickle

import pytest

from gradkit.schedules import (
    CosineDecay,
    LinearDecay,
    LinearWarmup,
    WarmupStableDecay,
)


def test_linear_warmup_values():
    s = LinearWarmup(warmup_steps=10, peak=2.0, init=0.5)
    assert s(0) == 0.5
    assert s(5) == pytest.approx(0.5 + 1.5 * 0.5)
    assert s(10) == 2.0
    assert s(1000) == 2.0


def test_linear_decay_values():
    # warm-up 0 -> 1 over 10 steps, then 1 -> 0.1 linearly at step 110
    s = LinearDecay(total_steps=110, warmup_steps=10, final=0.1)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == 1.0
    assert s(60) == pytest.approx(0.55)  # halfway through the decay
    assert s(109) == pytest.approx(0.1 + 0.9 / 100)
    assert s(110) == pytest.approx(0.1)
    assert s(500) == pytest.approx(0.1)


def test_linear_decay_without_warmup_is_one_minus_t_over_T():
    s = LinearDecay(total_steps=8)
    assert s.values(9) == pytest.approx([1 - t / 8 for t in range(9)])


def test_cosine_values():
    s = CosineDecay(total_steps=1010, warmup_steps=10, peak=3e-4, final=3e-5, init=3e-6)
    assert s(0) == pytest.approx(3e-6)
    assert s(10) == pytest.approx(3e-4)
    assert s(510) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5)
    assert s(260) == pytest.approx(3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s(1010) == pytest.approx(3e-5)
    assert s(5000) == pytest.approx(3e-5)


@pytest.mark.parametrize(
    ("shape", "factor"),
    [
        ("linear", lambda x: 1 - x),
        ("cosine", lambda x: 0.5 * (1 + math.cos(math.pi * x))),
        ("1-sqrt", lambda x: 1 - math.sqrt(x)),
    ],
)
def test_wsd_values(shape, factor):
    # T=1000, warm-up 100, decay over the last 20% = 200 steps starting at 800
    s = WarmupStableDecay(
        total_steps=1000, warmup_steps=100, decay_fraction=0.2, shape=shape, final=0.01
    )
    assert s.decay_start == 800 and s.decay_steps == 200
    assert s(0) == 0.0
    assert s(50) == pytest.approx(0.5)
    assert s(100) == 1.0
    assert s(500) == 1.0
    assert s(799) == 1.0
    assert s(800) == pytest.approx(1.0)
    for t in (850, 900, 950, 999):
        assert s(t) == pytest.approx(0.01 + 0.99 * factor((t - 800) / 200))
    assert s(1000) == pytest.approx(0.01)
    assert s(2000) == pytest.approx(0.01)


def test_wsd_one_minus_sqrt_halfway():
    s = WarmupStableDecay(total_steps=100, decay_fraction=0.5, shape="1-sqrt")
    assert s(75) == pytest.approx(1 - math.sqrt(0.5))


def test_wsd_zero_decay_is_constant():
    s = WarmupStableDecay(total_steps=10, warmup_steps=2, decay_fraction=0.0)
    assert s.values(10) == [0.0, 0.5] + [1.0] * 8
    assert s(10) == 0.0  # final after total_steps


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: LinearWarmup(warmup_steps=-1), "warmup_steps"),
        (lambda: LinearWarmup(warmup_steps=2.5), "warmup_steps"),
        (lambda: LinearDecay(total_steps=0), "total_steps"),
        (lambda: LinearDecay(total_steps=10, warmup_steps=11), "warmup_steps"),
        (lambda: CosineDecay(total_steps=10, final=float("nan")), "final"),
        (lambda: CosineDecay(total_steps=10, peak=float("inf")), "peak"),
        (lambda: WarmupStableDecay(total_steps=10, decay_fraction=1.5), "decay_fraction"),
        (lambda: WarmupStableDecay(total_steps=10, shape="exp"), "shape"),
        (lambda: WarmupStableDecay(total_steps=10, warmup_steps=5, decay_fraction=0.8), "decay"),
    ],
)
def test_bad_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_step():
    with pytest.raises(ValueError, match="step"):
        LinearDecay(total_steps=10)(-1)


def test_repr_pickle_and_equality():
    s = WarmupStableDecay(total_steps=100, warmup_steps=10, shape="cosine")
    assert "WarmupStableDecay(total_steps=100, warmup_steps=10" in repr(s)
    assert pickle.loads(pickle.dumps(s)) == s
    assert s != WarmupStableDecay(total_steps=100, warmup_steps=10, shape="linear")
