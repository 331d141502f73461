"""Published-claims checks on synthetic runs where each claim holds, fails, or cannot be measured."""

import pytest

from gradkit.bench import claims
from support.synthetic_runs import make_run


def _tuned(optimizer, workload, trials):
    """One study; ``trials`` = [(lr, reach_step or None), ...]."""
    return [
        make_run(optimizer, workload, reach, trial=t, hparams={"lr": lr})
        for t, (lr, reach) in enumerate(trials)
    ]


def _pair(mine, base, steps_mine, steps_base, workloads=("w1", "w2", "w3")):
    return [
        run
        for w, a, b in zip(workloads, steps_mine, steps_base, strict=True)
        for run in (make_run(mine, w, a), make_run(base, w, b))
    ]


def test_lion_lr_ratio_holds_fails_and_needs_tuning():
    adamw = [(1e-2, None), (1e-3, 30), (1e-4, 70)]
    held = _tuned("AdamW", "w", adamw) + _tuned("Lion", "w", [(1e-3, None), (2e-4, 30), (2e-5, 90)])
    result = claims.check_lion_lr(held)
    assert result.held is True and "w: 5x" in result.measured and "median 5x" in result.measured
    failed = _tuned("AdamW", "w", adamw) + _tuned("Lion", "w", [(1e-3, 20), (1e-4, 60)])
    assert claims.check_lion_lr(failed).held is False  # Lion's best lr equals AdamW's: ratio 1
    edge = _tuned("AdamW", "w", [(3e-3, 30), (1e-4, 70)]) + _tuned(
        "Lion", "w", [(3e-4, 30), (1e-3, 50)]
    )
    assert claims.check_lion_lr(edge).held is True  # 3e-3 / 3e-4 = 10 up to rounding
    defaults = [make_run("AdamW", "w", 30), make_run("Lion", "w", 40, hparams={"lr": 3e-4})]
    unmeasured = claims.check_lion_lr(defaults)
    assert unmeasured.held is None and "needs tuned runs" in unmeasured.measured


def test_sophia_fewer_steps():
    failed = claims.check_sophia(_pair("Sophia", "AdamW", [40, 50, None], [60, 40, 90]))
    assert failed.held is False and "fewer on 1/3" in failed.measured  # a miss is never fewer
    majority = claims.check_sophia(_pair("Sophia", "AdamW", [40, 30, None], [60, 40, 90]))
    assert majority.held is True and "fewer on 2/3" in majority.measured
    tie = claims.check_sophia(_pair("Sophia", "AdamW", [40, 50], [60, 40], ("w1", "w2")))
    assert tie.held is False  # 1 of 2 is not a majority
    result = claims.check_sophia(_pair("Sophia", "AdamW", [40, 30, 80], [60, 40, None]))
    assert result.held is True and "fewer on 3/3" in result.measured
    assert "w3: 80 vs miss" in result.measured


def test_fewer_steps_claims_are_unmeasured_without_runs_or_targets():
    nothing_reached = claims.check_muon(_pair("Muon", "AdamW", [None] * 3, [None] * 3))
    assert nothing_reached.held is None and "reaches the target" in nothing_reached.measured
    absent = claims.check_muon([make_run("AdamW", "w", 30)])
    assert absent.held is None and "needs runs of Muon" in absent.measured
    apart = claims.check_muon([make_run("AdamW", "w1", 30), make_run("Muon", "w2", 30)])
    assert apart.held is None and "common workload" in apart.measured


def test_diffgrad_compares_with_adam_or_says_it_used_adamw():
    with_adam = claims.check_diffgrad(_pair("DiffGrad", "Adam", [30, 30, 30], [40, 40, 40]))
    assert with_adam.held is True and "AdamW" not in with_adam.measured
    with_adamw = claims.check_diffgrad(_pair("DiffGrad", "AdamW", [50, 50, 50], [40, 40, 40]))
    assert with_adamw.held is False and "AdamW used in its place" in with_adamw.measured


def test_ademamix_steps_ratio():
    held = claims.check_ademamix(_pair("AdEMAMix", "AdamW", [30, 40, 50], [60, 90, 80]))
    assert held.held is True and "median 2x" in held.measured  # ratios 2, 2.25, 1.6
    failed = claims.check_ademamix(_pair("AdEMAMix", "AdamW", [50, 40, 50], [60, 50, 60]))
    assert failed.held is False and "median 1.2x" in failed.measured
    assert claims.check_ademamix(_pair("Lion", "AdamW", [10, 20, 30], [10, 20, 30])).held is None


def test_8bit_state_pairs_with_fp32_runs():
    fp32 = [make_run("AdamW", w, 40, seed=s) for w in ("w1", "w2") for s in (0, 1)]
    q8 = [
        make_run("AdamW", w, 40, seed=s, hparams={"lr": 1e-3, "state_dtype": "q8"})
        for w in ("w1", "w2")
        for s in (0, 1)
    ]
    result = claims.check_8bit(fp32 + q8)
    assert result.held is True and "4 pair(s)" in result.measured
    bracketed = claims.check_8bit([make_run("AdamW[q8]", "w1", 40, seed=0), fp32[0]])
    assert bracketed.held is True and "1 pair(s)" in bracketed.measured
    by_name = [make_run("AdamW8bit", "w1", None, seed=0), fp32[0]]
    failed = claims.check_8bit(by_name)
    assert failed.held is False and "reach agreement 0/1" in failed.measured
    unmatched = claims.check_8bit([make_run("AdamW8bit", "w1", 40, seed=5), *fp32])
    assert unmatched.held is None and "state_dtype='q8'" in unmatched.measured


def test_check_claims_lists_every_claim_with_a_source():
    results = claims.check_claims([make_run("AdamW", "w", 30)])
    assert [r.name for r in results] == [
        "lion_lr",
        "sophia_steps",
        "ademamix_2x",
        "diffgrad_vs_adam",
        "muon_steps",
        "8bit_state",
    ]
    for r in results:
        assert r.held is None and r.measured.startswith("not measured in this run: needs")
        assert any(year in r.source for year in ("2019", "2022", "2023", "2024"))
        assert "arXiv:" in r.source or r.source.split()[-1].startswith("https://")


@pytest.mark.parametrize("check", claims.CHECKS)
def test_checks_accept_an_empty_run_list(check):
    assert check([]).held is None
