"""Directional checks of published claims, measured on the runs at hand.

Each check states the claim, its source (authors, year, arXiv/URL) and what is measured, and
returns the measured figure with ``held`` = True/False, or ``held=None`` with "not measured in
this run: needs ..." when the runs cannot answer (an optimizer not run, no tuning, no target
reached). Nothing is estimated or filled in: every figure comes from the records.

These are small CPU workloads with short budgets: a claim that does not hold here is not refuted
at scale, and one that holds is not confirmed. Step counts are per-workload steps-to-target as
scored by :func:`gradkit.bench.scoring.workload_time` (median over studies of the best trial).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradkit.bench import scoring

if TYPE_CHECKING:
    from gradkit.bench.records import RunRecord

LION_LR_RATIO = (3.0, 10.0)
"""Chen et al. 2023: Lion's learning rate is typically 3-10x smaller than AdamW's."""

ADEMAMIX_MIN_RATIO = 1.5
"""Pagliardini et al. 2024 report AdEMAMix at T steps ~ AdamW at ~2T; we call a measured
AdamW/AdEMAMix steps ratio of 1.5 or more consistent with it."""

Q8_MAX_GAP = 0.1
"""8-bit state "tracks" fp32 when both agree on reaching the target and the median final-value
gap is at most 10% of max(|fp32 final value|, target)."""

Q8_DTYPES = {"q8", "int8", "8bit", "uint8"}
FP32_DTYPES = {None, "fp32", "float32"}


@dataclass(frozen=True)
class ClaimResult:
    """One checked claim: ``measured`` is the figure from these runs, ``held`` the verdict
    (``None``: not measured, ``measured`` then says what is needed)."""

    name: str
    claim: str
    source: str
    how: str
    measured: str
    held: bool | None


def _has(records: Sequence[RunRecord], optimizer: str) -> bool:
    return any(r.optimizer == optimizer for r in records)


def _shared_workloads(records: Sequence[RunRecord], a: str, b: str) -> list[str]:
    wa = {r.workload for r in records if r.optimizer == a}
    wb = {r.workload for r in records if r.optimizer == b}
    return sorted(wa & wb)


def _missing(records: Sequence[RunRecord], names: Sequence[str]) -> str | None:
    absent = [n for n in names if not _has(records, n)]
    if absent:
        return f"not measured in this run: needs runs of {', '.join(absent)}"
    if len(names) == 2 and not _shared_workloads(records, *names):
        return f"not measured in this run: needs {names[0]} and {names[1]} on a common workload"
    return None


def _fmt_steps(v: float) -> str:
    return "miss" if math.isinf(v) else str(int(v))


def _steps_comparison(
    records: Sequence[RunRecord], mine: str, base: str
) -> tuple[list[str], int, int] | None:
    """Per shared workload where at least one reached the target: a description, and how many
    workloads ``mine`` needed fewer steps on / were compared. ``None`` if nothing comparable."""
    lines, fewer, compared = [], 0, 0
    for w in _shared_workloads(records, mine, base):
        a = scoring.workload_time(records, w, mine, "steps")
        b = scoring.workload_time(records, w, base, "steps")
        if math.isinf(a) and math.isinf(b):
            continue
        compared += 1
        fewer += a < b
        lines.append(f"{w}: {_fmt_steps(a)} vs {_fmt_steps(b)}")
    return (lines, fewer, compared) if compared else None


def _fewer_steps_claim(
    name: str, claim: str, source: str, mine: str, base: str, note: str = ""
) -> Callable[[Sequence[RunRecord]], ClaimResult]:
    how = (
        f"steps-to-target of {mine} vs {base} per workload; held if {mine} needs fewer steps "
        "on a majority of the workloads that at least one of them solved"
    )

    def check(records: Sequence[RunRecord]) -> ClaimResult:
        baseline = base
        extra = note
        if baseline == "Adam" and not _has(records, "Adam") and _has(records, "AdamW"):
            baseline, extra = "AdamW", " (Adam not run; AdamW used in its place)"
        missing = _missing(records, [mine, baseline])
        if missing:
            return ClaimResult(name, claim, source, how, missing, None)
        comparison = _steps_comparison(records, mine, baseline)
        if comparison is None:
            text = "not measured in this run: needs a workload where either reaches the target"
            return ClaimResult(name, claim, source, how, text, None)
        lines, fewer, compared = comparison
        measured = (
            f"{mine} vs {baseline} steps: "
            + "; ".join(lines)
            + f" -> fewer on {fewer}/{compared}{extra}"
        )
        return ClaimResult(name, claim, source, how, measured, fewer * 2 > compared)

    return check


def _best_lr(records: Sequence[RunRecord], workload: str, optimizer: str) -> float | None:
    """``lr`` of the best run (fastest to target, else lowest final value); ``None`` unless the
    learning rate was actually searched (2+ distinct values)."""
    runs = [r for r in records if r.workload == workload and r.optimizer == optimizer]
    lrs = {r.hparams.get("lr") for r in runs}
    if len(lrs - {None}) < 2:
        return None

    def key(r: RunRecord) -> tuple[float, float]:
        final = r.final_value if math.isfinite(r.final_value) else math.inf
        return (scoring.reach(r, "steps"), final)

    lr = min(runs, key=key).hparams.get("lr")
    return None if lr is None else float(lr)


def check_lion_lr(records: Sequence[RunRecord]) -> ClaimResult:
    """Lion's best learning rate is 3-10x below AdamW's (Chen et al. 2023)."""
    name, claim = "lion_lr", "Lion's best learning rate is 3-10x smaller than AdamW's"
    source = "Chen et al. 2023, Symbolic Discovery of Optimization Algorithms, arXiv:2302.06675"
    how = (
        "AdamW best-trial lr / Lion best-trial lr per workload (best = fastest to target, "
        "else lowest final value); held if the median ratio is in [3, 10]"
    )
    missing = _missing(records, ["Lion", "AdamW"])
    if missing:
        return ClaimResult(name, claim, source, how, missing, None)
    ratios = {}
    for w in _shared_workloads(records, "Lion", "AdamW"):
        lion, adamw = _best_lr(records, w, "Lion"), _best_lr(records, w, "AdamW")
        if lion and adamw:
            ratios[w] = adamw / lion
    if not ratios:
        text = (
            "not measured in this run: needs tuned runs (2+ learning rates per optimizer); "
            "with defaults the ratio is fixed by the chosen defaults"
        )
        return ClaimResult(name, claim, source, how, text, None)
    median = float(np.median(list(ratios.values())))
    parts = "; ".join(f"{w}: {v:.3g}x" for w, v in ratios.items())
    low, high = LION_LR_RATIO
    held = low * (1 - 1e-9) <= median <= high * (1 + 1e-9)  # 3e-3 / 3e-4 is 10.000000000000002
    return ClaimResult(name, claim, source, how, f"{parts} -> median {median:.3g}x", held)


def check_ademamix(records: Sequence[RunRecord]) -> ClaimResult:
    """AdEMAMix at T steps matches AdamW at ~2T (Pagliardini et al. 2024)."""
    name = "ademamix_2x"
    claim = "AdEMAMix trained for T steps matches AdamW trained for about 2T steps"
    source = (
        "Pagliardini, Ablin, Grangier 2024, The AdEMAMix Optimizer: Better, Faster, Older, "
        "arXiv:2409.03137"
    )
    how = (
        "AdamW steps-to-target / AdEMAMix steps-to-target per workload (same budget and "
        f"schedule); held if the median ratio is >= {ADEMAMIX_MIN_RATIO}"
    )
    missing = _missing(records, ["AdEMAMix", "AdamW"])
    if missing:
        return ClaimResult(name, claim, source, how, missing, None)
    ratios = {}
    for w in _shared_workloads(records, "AdEMAMix", "AdamW"):
        mine = scoring.workload_time(records, w, "AdEMAMix", "steps")
        base = scoring.workload_time(records, w, "AdamW", "steps")
        if not (math.isinf(mine) and math.isinf(base)):
            ratios[w] = scoring.speed_ratio(base, mine)
    if not ratios:
        text = "not measured in this run: needs a workload where either reaches the target"
        return ClaimResult(name, claim, source, how, text, None)
    median = float(np.median(list(ratios.values())))
    parts = "; ".join(f"{w}: {v:.3g}x" for w, v in ratios.items())
    return ClaimResult(
        name, claim, source, how, f"{parts} -> median {median:.3g}x", median >= ADEMAMIX_MIN_RATIO
    )


def _state_dtype(r: RunRecord) -> Any:
    return r.hparams.get("state_dtype")


# "AdamW8bit", "AdamW_q8", "AdamW[q8]", "AdamW:state_dtype=q8" all name 8-bit AdamW
_Q8_NAME = re.compile(r"[\W_]*(state_dtype=)?(8bit|q8|int8)[\W_]*$", re.IGNORECASE)


def _is_q8(r: RunRecord) -> bool:
    return _state_dtype(r) in Q8_DTYPES or bool(_Q8_NAME.search(r.optimizer))


def _fp32_partner(records: Sequence[RunRecord], q8: RunRecord) -> RunRecord | None:
    base = _Q8_NAME.sub("", q8.optimizer)
    for r in records:
        if (
            r.optimizer == base
            and not _is_q8(r)
            and _state_dtype(r) in FP32_DTYPES
            and (r.workload, r.study, r.trial, r.seed) == (q8.workload, q8.study, q8.trial, q8.seed)
        ):
            return r
    return None


def check_8bit(records: Sequence[RunRecord]) -> ClaimResult:
    """8-bit optimizer state tracks 32-bit state (Dettmers et al. 2022)."""
    name, claim = "8bit_state", "8-bit optimizer state matches 32-bit state"
    source = (
        "Dettmers, Lewis, Shleifer, Zettlemoyer 2022, 8-bit Optimizers via Block-wise "
        "Quantization, arXiv:2110.02861"
    )
    how = (
        "runs with state_dtype='q8' (or an optimizer name ending in 8bit/q8) paired with the "
        "fp32 run of the same optimizer, workload, study, trial and seed; held if every pair "
        "agrees on reaching the target and the median final-value gap is <= "
        f"{Q8_MAX_GAP:.0%} of max(|fp32 final|, target)"
    )
    pairs = [(q, _fp32_partner(records, q)) for q in records if _is_q8(q)]
    pairs = [(q, f) for q, f in pairs if f is not None]
    if not pairs:
        text = (
            "not measured in this run: needs 8-bit-state runs (state_dtype='q8') with matching "
            "fp32 runs"
        )
        return ClaimResult(name, claim, source, how, text, None)
    gaps, agree = [], 0
    for q, f in pairs:
        agree += (q.steps_to_target is None) == (f.steps_to_target is None)
        scale = max(abs(f.final_value), abs(f.target), 1e-12)
        gap = abs(q.final_value - f.final_value) / scale
        gaps.append(gap if math.isfinite(gap) else math.inf)
    median = float(np.median(gaps))
    measured = (
        f"{len(pairs)} pair(s); reach agreement {agree}/{len(pairs)}; "
        f"median final-value gap {median:.3g} (relative)"
    )
    held = agree == len(pairs) and median <= Q8_MAX_GAP
    return ClaimResult(name, claim, source, how, measured, held)


check_sophia = _fewer_steps_claim(
    "sophia_steps",
    "Sophia reaches the target in fewer steps than AdamW",
    "Liu et al. 2023, Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
    "Pre-training, arXiv:2305.14342",
    "Sophia",
    "AdamW",
)
check_diffgrad = _fewer_steps_claim(
    "diffgrad_vs_adam",
    "diffGrad converges faster than Adam",
    "Dubey et al. 2019, diffGrad: An Optimization Method for Convolutional Neural Networks, "
    "arXiv:1909.11015",
    "DiffGrad",
    "Adam",
)
check_muon = _fewer_steps_claim(
    "muon_steps",
    "Muon reaches the target in fewer steps than AdamW",
    "Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks, "
    "https://kellerjordan.github.io/posts/muon/",
    "Muon",
    "AdamW",
)

CHECKS: tuple[Callable[[Sequence[RunRecord]], ClaimResult], ...] = (
    check_lion_lr,
    check_sophia,
    check_ademamix,
    check_diffgrad,
    check_muon,
    check_8bit,
)


def check_claims(records: Sequence[RunRecord]) -> list[ClaimResult]:
    """Every check in :data:`CHECKS`, in order, on ``records``."""
    records = list(records)
    return [check(records) for check in CHECKS]
