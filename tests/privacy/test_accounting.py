"""Accounting: Opacus' golden values, monotonicity, and the noise search inverting epsilon."""

from __future__ import annotations

import itertools
import math

import pytest

pytest.importorskip("dp_accounting", reason="accounting needs dp-accounting (privacy extra)")

from gradkit.privacy import PrivacyAccountant, epsilon, noise_multiplier_for

SIGMA, Q, STEPS, DELTA = 1.5, 0.04, 2250, 1e-5  # Opacus accountants_test.py anchors


def test_rdp_golden_value_with_the_improved_conversion():
    # Opacus reports 7.32911117143 with its order grid; dp-accounting's grid gives 7.32933
    assert epsilon(SIGMA, Q, STEPS, DELTA) == pytest.approx(7.3291, abs=1e-3)


def test_classic_conversion_is_looser_and_matches_its_anchor():
    assert epsilon(SIGMA, Q, STEPS, DELTA, conversion="classic") == pytest.approx(8.0738, abs=1e-3)


def test_pld_is_tighter_and_close_to_opacus_prv():
    eps = epsilon(SIGMA, Q, STEPS, DELTA, accountant="pld")
    assert eps == pytest.approx(6.7774, abs=0.02)  # Opacus PRV anchor; a different numeric method
    assert eps < epsilon(SIGMA, Q, STEPS, DELTA)


def test_epsilon_is_monotone_in_steps_and_noise():
    by_steps = [epsilon(SIGMA, Q, t, DELTA) for t in (1, 10, 100, 1000, 5000)]
    by_noise = [epsilon(s, Q, 1000, DELTA) for s in (0.6, 0.8, 1.0, 1.5, 3.0)]
    assert all(a < b for a, b in itertools.pairwise(by_steps))
    assert all(a > b for a, b in itertools.pairwise(by_noise))
    assert epsilon(0.0, Q, 10, DELTA) == math.inf and epsilon(1.0, Q, 0, DELTA) == 0.0


def test_noise_multiplier_search_inverts_epsilon():
    sigma = noise_multiplier_for(8.0, DELTA, Q, epochs=90)
    eps = epsilon(sigma, Q, STEPS, DELTA)
    assert 8.0 - 0.01 <= eps <= 8.0
    assert sigma == pytest.approx(1.416, abs=1e-3)  # Opacus' golden value (RDP, 90 epochs)


def test_accountant_composes_like_one_event_and_round_trips():
    acc = PrivacyAccountant()
    for _ in range(100):
        acc.step(SIGMA, Q)
    acc.step(2.0, 0.01, count=50)
    assert acc.history == [(SIGMA, Q, 100), (2.0, 0.01, 50)] and acc.steps == 150
    assert acc.get_epsilon(DELTA) > epsilon(SIGMA, Q, 100, DELTA)
    copy = PrivacyAccountant()
    copy.load_state_dict(acc.state_dict())
    assert copy.get_epsilon(DELTA) == acc.get_epsilon(DELTA)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: epsilon(1.0, 1.5, 10, DELTA), "Invalid sample_rate"),
        (lambda: epsilon(1.0, Q, 10, 0.0), "Invalid delta"),
        (lambda: epsilon(-1.0, Q, 10, DELTA), "Invalid noise_multiplier"),
        (lambda: epsilon(1.0, Q, 10, DELTA, accountant="prv"), "Invalid accountant"),
        (lambda: noise_multiplier_for(8.0, DELTA, Q), "exactly one of steps and epochs"),
    ],
)
def test_bad_input_is_named(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
