"""AlgoPerf scoring against hand-computed values (see gradkit.bench.scoring for the definitions)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradkit.bench import scoring
from support.synthetic_runs import make_run

INF = math.inf

# 3 optimizers x 3 workloads, one miss (A on w3), one time beyond 4x the best (C on w1: 5x).
TIMES = {
    "A": {"w1": 10.0, "w2": 20.0, "w3": INF},
    "B": {"w1": 20.0, "w2": 10.0, "w3": 30.0},
    "C": {"w1": 50.0, "w2": 15.0, "w3": 60.0},
}
# ratios by hand: A = (1, 2, inf), B = (2, 1, 1), C = (inf [5 > 4], 1.5, 2)
TAUS = [1.0, 1.5, 2.0, 3.0, 4.0]
PROFILES = {
    "A": [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3],
    "B": [2 / 3, 2 / 3, 1.0, 1.0, 1.0],
    "C": [0.0, 1 / 3, 2 / 3, 2 / 3, 2 / 3],
}
# exact areas: sum over workloads of (4 - max(r, 1)) / 3, divided by 3 workloads
EXACT = {"A": (1 + 2 / 3) / 3, "B": (2 / 3 + 1 + 1) / 3, "C": (5 / 6 + 2 / 3) / 3}


def test_ratios_apply_the_4x_cut_and_keep_misses_infinite():
    ratios = scoring.performance_ratios(TIMES)
    assert ratios["A"] == {"w1": 1.0, "w2": 2.0, "w3": INF}
    assert ratios["B"] == {"w1": 2.0, "w2": 1.0, "w3": 1.0}
    assert ratios["C"] == {"w1": INF, "w2": 1.5, "w3": 2.0}


def test_profile_values_at_chosen_taus():
    profiles = scoring.performance_profiles(TIMES, TAUS)
    for name, expected in PROFILES.items():
        np.testing.assert_allclose(profiles[name], expected, rtol=0, atol=1e-12)


def test_profile_beyond_4_keeps_the_cut_time_out():
    # C's 5x time on w1 was set to inf before dividing, so even tau = 6 does not count it.
    profiles = scoring.performance_profiles(TIMES, [1.0, 6.0])
    assert profiles["C"][-1] == pytest.approx(2 / 3)
    uncut = scoring.performance_profiles(TIMES, [1.0, 6.0], max_ratio=10.0)
    assert uncut["C"][-1] == pytest.approx(1.0)


def test_workload_nobody_solved_counts_in_the_denominator_for_nobody():
    times = {k: {**v, "w4": INF} for k, v in TIMES.items()}
    profiles = scoring.performance_profiles(times, [4.0])
    assert profiles["B"][0] == pytest.approx(3 / 4)
    assert profiles["A"][0] == pytest.approx(2 / 4)


def test_missing_workload_counts_as_a_miss():
    times = {"A": {"w1": 1.0, "w2": 1.0}, "B": {"w1": 2.0}}
    profiles = scoring.performance_profiles(times, [1.0, 4.0])
    np.testing.assert_allclose(profiles["B"], [0.0, 0.5])


def test_score_is_the_trapezoid_area_computed_by_hand():
    profiles = scoring.performance_profiles(TIMES, TAUS)
    # A on [1, 1.5, 2, 3, 4]: 0.5*(1/3) + 0.5*(1/3+2/3)/2 + 1*(2/3) + 1*(2/3) = 7/4, / 3
    assert scoring.benchmark_score(profiles["A"], TAUS) == pytest.approx(7 / 12)
    # B: 0.5*(2/3) + 0.5*(2/3+1)/2 + 1 + 1 = 33/12, / 3
    assert scoring.benchmark_score(profiles["B"], TAUS) == pytest.approx(11 / 12)


def test_score_on_algoperf_grid_matches_the_exact_area_within_a_grid_step():
    step = 3 / 99
    scores = scoring.benchmark_scores(TIMES)
    for name, exact in EXACT.items():
        ratios = scoring.performance_ratios(TIMES)[name]
        assert scoring.exact_benchmark_score(ratios) == pytest.approx(exact)
        assert abs(scores[name] - exact) <= step
    assert scores["B"] > scores["A"] > scores["C"]


def test_best_on_every_workload_scores_exactly_one():
    times = {"fast": {"w1": 1.0, "w2": 2.0}, "slow": {"w1": 3.0, "w2": INF}}
    scores = scoring.benchmark_scores(times)
    assert scores["fast"] == pytest.approx(1.0)
    assert scores["slow"] == pytest.approx((4 - 3) / 3 / 2, abs=3 / 99)  # w1 at ratio 3 only


def test_zero_best_time_gives_ratio_one_to_ties_only():
    ratios = scoring.performance_ratios({"a": {"w": 0.0}, "b": {"w": 0.0}, "c": {"w": 1.0}})
    assert (ratios["a"]["w"], ratios["b"]["w"], ratios["c"]["w"]) == (1.0, 1.0, INF)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.floats(0.1, 100.0), st.just(INF)), min_size=3, max_size=3),
        min_size=1,
        max_size=4,
    )
)
def test_profile_properties(rows):
    times = {f"o{i}": {f"w{k}": t for k, t in enumerate(row)} for i, row in enumerate(rows)}
    profiles = scoring.performance_profiles(times)
    for name, profile in profiles.items():
        assert np.all(np.diff(profile) >= 0) and profile[0] >= 0 and profile[-1] <= 1
        exact = scoring.exact_benchmark_score(scoring.performance_ratios(times)[name])
        assert abs(scoring.benchmark_score(profile) - exact) <= 3 / 99 + 1e-12
    # each solved workload has a best optimizer at tau = 1
    solved = sum(any(math.isfinite(r[k]) for r in rows) for k in range(3))
    assert sum(p[0] for p in profiles.values()) * 3 >= solved - 1e-9


def _study(study, reach_steps, optimizer="opt", workload="w", seed=0):
    return [
        make_run(optimizer, workload, s, study=study, trial=t, seed=seed)
        for t, s in enumerate(reach_steps)
    ]


def test_median_over_three_studies_of_the_best_trial():
    records = _study(0, [50, 30, None]) + _study(1, [None, None]) + _study(2, [80, 60])
    # best per study: 30 steps, miss (inf), 60 steps -> median 60 steps = 0.6 s
    assert scoring.workload_time(records, "w", "opt", "steps") == 60
    assert scoring.workload_time(records, "w", "opt") == pytest.approx(0.6)
    assert scoring.best_trial_time(records[:3]) == pytest.approx(0.3)


def test_two_missed_studies_make_the_workload_a_miss():
    records = _study(0, [20]) + _study(1, [None]) + _study(2, [None, None])
    assert scoring.workload_time(records, "w", "opt") == INF
    assert scoring.workload_time(records, "w", "other") == INF


def test_trial_with_several_seeds_counts_with_its_median():
    records = [make_run("opt", "w", s, seed=k) for k, s in enumerate([20, 40, None])]
    assert scoring.workload_time(records, "w", "opt", "steps") == 40
    table = scoring.times_table([*records, make_run("base", "w2", 10)], "steps")
    assert table == {"base": {"w": INF, "w2": 10.0}, "opt": {"w": 40.0, "w2": INF}}


def test_bootstrap_ci_is_deterministic_given_the_seed_and_covers_the_true_median():
    rng = np.random.default_rng(123)
    covered = 0
    for _ in range(100):
        ratios = 2.0 * np.exp(rng.normal(0.0, 0.2, size=15))  # true median ratio: 2
        low, high = scoring.bootstrap_median_ci(ratios, n_boot=500, seed=7)
        covered += low <= 2.0 <= high
    assert covered >= 85
    data = [1.0, 2.0, 2.5, 3.0, INF]
    assert scoring.bootstrap_median_ci(data, seed=3) == scoring.bootstrap_median_ci(data, seed=3)
    assert not any(math.isnan(x) for x in scoring.bootstrap_median_ci(data, seed=3))


def test_speedup_is_seed_matched_and_contains_the_true_ratio():
    rng = np.random.default_rng(0)
    records = []
    for seed in range(12):
        # same step counts, independent timing noise; the optimizer's step costs half as much
        base, fast = 0.01 * np.exp(rng.normal(0, 0.05, size=2)) * [1.0, 0.5]
        records.append(make_run("AdamW", "w", 60, seconds_per_step=base, seed=seed))
        records.append(make_run("Fast", "w", 60, seconds_per_step=fast, seed=seed))
    records.append(make_run("Fast", "w", 60, seed=99))  # no AdamW partner: ignored
    result = scoring.speedup_vs_baseline(records, n_boot=400)[("Fast", "w")]
    assert result.n_seeds == 12 and result.estimate == pytest.approx(2.0, rel=0.05)
    assert result.low <= 2.0 <= result.high and result.low < result.high
    assert result == scoring.speedup_vs_baseline(records, n_boot=400)[("Fast", "w")]


def test_speedup_misses_give_zero_inf_or_drop_the_seed():
    records = [
        make_run("AdamW", "w", 60, seed=0),
        make_run("X", "w", 30, seed=0),  # ratio 2
        make_run("AdamW", "w", 60, seed=1),
        make_run("X", "w", None, seed=1),  # X missed: 0
        make_run("AdamW", "w", None, seed=2),
        make_run("X", "w", 30, seed=2),  # base missed: inf
        make_run("AdamW", "w", None, seed=3),
        make_run("X", "w", None, seed=3),  # both: dropped
    ]
    result = scoring.speedup(records, "w", "X", measure="steps")
    assert sorted(result.ratios) == [0.0, 2.0, INF]
    assert (result.estimate, result.n_seeds, result.n_both_missed) == (2.0, 3, 1)
    none = scoring.speedup(records[-2:], "w", "X")
    assert math.isnan(none.estimate) and none.n_seeds == 0


def test_bad_input_is_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="measure"):
        scoring.workload_time([make_run("a", "w", 10)], "w", "a", "epochs")
    with pytest.raises(ValueError, match="taus"):
        scoring.performance_profiles(TIMES, [2.0, 1.0])
    with pytest.raises(ValueError, match="times"):
        scoring.performance_profiles({"a": {"w": math.nan}})
    with pytest.raises(ValueError, match="profile"):
        scoring.benchmark_score([1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="n_boot"):
        scoring.bootstrap_median_ci([1.0], n_boot=0)
