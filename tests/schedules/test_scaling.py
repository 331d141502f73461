"""Batch-size scaling rules (Goyal et al. 2017; Malladi et al. 2022)."""

from __future__ import annotations

import math

import pytest

from gradkit.schedules import adam_sqrt_scaling, linear_lr_scaling, sqrt_lr_scaling


def test_linear_rule():
    assert linear_lr_scaling(0.1, batch_size=8192, base_batch_size=256) == pytest.approx(3.2)
    assert linear_lr_scaling(0.1, batch_size=128, base_batch_size=256) == pytest.approx(0.05)


def test_sqrt_rule():
    assert sqrt_lr_scaling(1e-3, batch_size=4096, base_batch_size=256) == pytest.approx(4e-3)
    assert sqrt_lr_scaling(1e-3, batch_size=64, base_batch_size=256) == pytest.approx(5e-4)


def test_full_adam_rule():
    out = adam_sqrt_scaling(2e-4, (0.9, 0.99), 1e-6, batch_size=1024, base_batch_size=256)
    assert out["lr"] == pytest.approx(4e-4)
    assert out["betas"] == pytest.approx((0.6, 0.96))
    assert out["eps"] == pytest.approx(5e-7)
    # scaling down lengthens the averaging horizons: 1 - beta shrinks by kappa
    down = adam_sqrt_scaling(1e-3, (0.9, 0.999), 1e-8, batch_size=64, base_batch_size=256)
    assert down["betas"] == pytest.approx((0.975, 0.99975))
    assert down["lr"] == pytest.approx(5e-4)
    assert down["eps"] == pytest.approx(2e-8)


def test_round_trip_is_identity():
    up = adam_sqrt_scaling(1e-3, (0.9, 0.98), 1e-8, batch_size=512, base_batch_size=128)
    back = adam_sqrt_scaling(up["lr"], up["betas"], up["eps"], 128, 512)
    assert back["lr"] == pytest.approx(1e-3)
    assert back["betas"] == pytest.approx((0.9, 0.98))
    assert back["eps"] == pytest.approx(1e-8)
    assert math.isclose(
        linear_lr_scaling(linear_lr_scaling(0.3, 1000, 10), 10, 1000), 0.3, rel_tol=1e-12
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: linear_lr_scaling(0.1, 0, 256), "batch_size"),
        (lambda: linear_lr_scaling(0.1, 256, -1), "base_batch_size"),
        (lambda: sqrt_lr_scaling(float("nan"), 256, 256), "lr"),
        (lambda: adam_sqrt_scaling(1e-3, (0.9, 0.999), 1e-8, 256 * 20, 256), "index 0"),
        (lambda: adam_sqrt_scaling(1e-3, (0.9, 1.0), 1e-8, 512, 256), "index 1"),
        (lambda: adam_sqrt_scaling(1e-3, (0.9, 0.999), 0.0, 512, 256), "eps"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
