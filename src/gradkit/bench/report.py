"""The bench report: a terminal leaderboard, Markdown + HTML + PNG plots, and a JSON export.

Everything shown is computed from the :class:`RunRecord` list by :func:`compute_results`
(AlgoPerf scoring, see :mod:`gradkit.bench.scoring`) and :func:`gradkit.bench.claims.check_claims`.
``results.json`` holds every record and the run metadata, so ``write_report(*load_results(p),
out_dir)`` rebuilds the same report anywhere; the computed scores are in it too, for readers
that do not run gradkit.

Layout follows AlgoPerf's outputs (leaderboard table, performance-profile plot,
time-to-target table; ``scoring/score_submissions.py``) plus validation curves per workload.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from gradkit.bench import scoring
from gradkit.bench.records import RunRecord

if TYPE_CHECKING:
    from rich.table import Table

FORMAT = "gradkit-bench-results/1"
BASELINE = "AdamW"


# --- computing ------------------------------------------------------------------------------


def compute_results(
    records: Sequence[RunRecord],
    *,
    baseline: str = BASELINE,
    taus: Sequence[float] | np.ndarray = scoring.DEFAULT_TAUS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """All numbers a report shows: per-workload times and steps, profiles, benchmark scores
    (time and steps), speedups vs ``baseline`` (time and steps) and the claims checks."""
    from gradkit.bench.claims import check_claims

    if not records:
        raise ValueError("Invalid records: empty (nothing to report; run `gradkit bench run`)")
    out: dict[str, Any] = {"baseline": baseline, "taus": [float(t) for t in taus]}
    for measure in ("time", "steps"):
        times = scoring.times_table(records, measure)
        profiles = scoring.performance_profiles(times, taus)
        out[measure] = {
            "per_workload": times,
            "profiles": {k: v.tolist() for k, v in profiles.items()},
            "scores": {k: scoring.benchmark_score(v, taus) for k, v in profiles.items()},
            "speedups": {
                f"{o}|{w}": asdict(s)
                for (o, w), s in scoring.speedup_vs_baseline(
                    records, baseline, measure=measure, n_boot=n_boot, seed=seed
                ).items()
            },
        }
    out["claims"] = [asdict(c) for c in check_claims(records)]
    return out


def ranking(results: Mapping[str, Any]) -> list[str]:
    """Optimizers by benchmark score (time), ties broken by the steps score, then by name."""
    time_scores, step_scores = results["time"]["scores"], results["steps"]["scores"]
    return sorted(time_scores, key=lambda o: (-time_scores[o], -step_scores[o], o))


def machine_info() -> dict[str, Any]:
    """CPU count, platform, Python and torch versions, torch threads (if torch is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["torch_version"] = version("torch")
    except PackageNotFoundError:
        info["torch_version"] = "not installed"
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


# --- formatting -----------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    """``"1.23 s"``, ``"miss"`` for ``inf``."""
    return "miss" if not math.isfinite(seconds) else f"{seconds:.3g} s"


def format_steps(steps: float) -> str:
    return "miss" if not math.isfinite(steps) else f"{int(steps)}"


def format_cell(seconds: float, steps: float) -> str:
    """``"0.31 s (400 st)"``; ``"miss"`` when neither reached the target."""
    if not (math.isfinite(seconds) or math.isfinite(steps)):
        return "miss"
    return f"{format_time(seconds)} ({format_steps(steps)} st)"


def format_speedup(s: Mapping[str, Any] | None) -> str:
    """``"1.8x [1.2, 2.5] n=3"``; ``"n/a"`` when no seed could be compared."""
    if s is None or s["n_seeds"] == 0:
        return "n/a"

    def x(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:.2g}"

    return f"{x(s['estimate'])}x [{x(s['low'])}, {x(s['high'])}] n={s['n_seeds']}"


def _held(held: bool | None) -> str:
    return {True: "held", False: "did not hold", None: "not measured"}[held]


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class _Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[_Table] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # paths relative to the report folder


def _workloads(records: Sequence[RunRecord]) -> list[str]:
    return sorted({r.workload for r in records})


def _leaderboard_rows(records: Sequence[RunRecord], results: Mapping[str, Any]) -> _Table:
    workloads = _workloads(records)
    t, s = results["time"], results["steps"]
    rows = []
    for o in ranking(results):
        cells = [format_cell(t["per_workload"][o][w], s["per_workload"][o][w]) for w in workloads]
        rows.append([o, *cells, f"{t['scores'][o]:.3f}", f"{s['scores'][o]:.3f}"])
    return _Table(["optimizer", *workloads, "score (time)", "score (steps)"], rows)


def _speedup_table(
    records: Sequence[RunRecord], results: Mapping[str, Any], measure: str, caption: str
) -> _Table:
    workloads = _workloads(records)
    speedups = results[measure]["speedups"]
    rows = [
        [o, *[format_speedup(speedups.get(f"{o}|{w}")) for w in workloads]]
        for o in ranking(results)
        if o != results["baseline"]
    ]
    return _Table(["optimizer", *workloads], rows, caption)


def _protocol(records: Sequence[RunRecord], meta: Mapping[str, Any]) -> _Section:
    studies = sorted({r.study for r in records})
    trials = max(len({(r.study, r.trial) for r in records if r.study == s}) for s in studies)
    seeds = sorted({r.seed for r in records})
    tuning = meta.get("tuning") or meta.get("mode")
    tuning = tuning or ("defaults only" if trials == 1 else "external tuning")
    paragraphs = [
        f"Tuning: {tuning}; {len(studies)} study(ies) x up to {trials} trial(s) per optimizer and "
        f"workload; seeds {seeds}. Per-workload time = median over studies of the best trial's "
        "time-to-target (a miss counts as infinity), as in AlgoPerf's external-tuning ruleset "
        "(Dahl et al. 2023, arXiv:2306.07179). A configuration run with several seeds counts "
        "with the median over its seeds.",
        "Time-to-target is cumulative training time at the first evaluation that meets the "
        "target; evaluation time is excluded from the clock. Steps-to-target (the same, counted "
        "in optimizer steps) is hardware-independent and the better signal on a shared machine.",
        "Benchmark score: area under the performance profile over tau in [1, 4] divided by 3 "
        "(trapezoid rule on 100 points, AlgoPerf); times above 4x a workload's best count as "
        "misses. Speedup vs the baseline: median over seeds of baseline time / optimizer time "
        "(seed-matched), 95% percentile-bootstrap interval over seeds; an optimizer miss gives "
        "ratio 0, a baseline-only miss gives inf, seeds where both missed are left out.",
    ]
    workloads = []
    for w in _workloads(records):
        run = next(r for r in records if r.workload == w)
        workloads.append([w, run.metric, f"{run.target:g}", str(max(run.steps, default=0))])
    machine = [[str(k), str(v)] for k, v in meta.items() if k not in ("tuning", "mode")]
    return _Section(
        "Protocol",
        paragraphs,
        [
            _Table(["workload", "metric (lower is better)", "target", "step budget"], workloads),
            _Table(["setting", "value"], machine),
        ],
    )


def _problems(records: Sequence[RunRecord]) -> _Section:
    bad = [r for r in records if r.status != "ok"]
    rows = [
        [r.optimizer, r.workload, f"{r.study}/{r.trial}/{r.seed}", r.status, (r.error or "")[:160]]
        for r in bad
    ]
    text = (
        f"{len(bad)} of {len(records)} runs diverged or failed; they count as misses (the "
        "runner stores no time-to-target for them)."
    )
    tables = [_Table(["optimizer", "workload", "study/trial/seed", "status", "reason"], rows)]
    return _Section("Diverged and failed runs", [text], tables if rows else [])


def _resources(records: Sequence[RunRecord]) -> _Section:
    rows = []
    for o in sorted({r.optimizer for r in records}):
        mine = [r for r in records if r.optimizer == o]
        rows.append(
            [
                o,
                f"{np.median([r.state_bytes for r in mine]) / 1024:.1f}",
                f"{np.median([r.peak_memory_bytes for r in mine]) / 2**20:.1f}",
                f"{sum(r.total_train_time for r in mine):.1f}",
            ]
        )
    headers = ["optimizer", "state KiB (median)", "peak memory MiB (median)", "train s (all runs)"]
    return _Section("Resources", [], [_Table(headers, rows)])


def _claims_section(results: Mapping[str, Any]) -> _Section:
    rows = [[c["claim"], c["source"], c["measured"], _held(c["held"])] for c in results["claims"]]
    text = (
        "Directional checks of what the papers report, on these small CPU workloads: a claim "
        "that does not hold here is not refuted at scale, and one that holds is not confirmed."
    )
    return _Section(
        "Published claims", [text], [_Table(["claim", "source", "measured here", "result"], rows)]
    )


def _sections(
    records: Sequence[RunRecord],
    results: Mapping[str, Any],
    meta: Mapping[str, Any],
    plots: Mapping[str, str],
) -> list[_Section]:
    base = results["baseline"]
    board = _Section(
        "Leaderboard",
        [
            "Per-workload time-to-target (steps-to-target in parentheses); optimizers ranked by "
            "the AlgoPerf benchmark score on time."
        ],
        [_leaderboard_rows(records, results)],
        [plots["performance_profile"], plots["time_to_target"], plots["steps_to_target"]],
    )
    speed = _Section(
        f"Speedup vs {base}",
        [
            f"Median over seeds of {base} time / optimizer time (> 1: faster than {base}), "
            "95% bootstrap interval, n = matched seeds."
            if any(r.optimizer == base for r in records)
            else f"No runs of the baseline {base}: no speedups."
        ],
        [
            _speedup_table(records, results, "time", "Time-to-target speedup"),
            _speedup_table(records, results, "steps", "Steps-to-target speedup"),
        ],
    )
    curves = _Section(
        "Validation curves",
        ["Best run per optimizer (fastest to target, else lowest final value); dashed: target."],
        images=[plots[f"curves_{w}"] for w in _workloads(records)],
    )
    return [
        _protocol(records, meta),
        board,
        speed,
        curves,
        _claims_section(results),
        _problems(records),
        _resources(records),
    ]


# --- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_markdown(title: str, sections: Sequence[_Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for p in section.paragraphs:
            lines += [p, ""]
        for t in section.tables:
            if t.caption:
                lines += [f"**{t.caption}**", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            lines.append("|" + "---|" * len(t.headers))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        lines += [f"![{Path(i).stem}]({i})" for i in section.images]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def _render_html(title: str, sections: Sequence[_Section]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        for t in section.tables:
            if t.caption:
                parts.append(f"<h3>{e(t.caption)}</h3>")
            head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts += [
            f'<img src="{e(quote(i), quote=True)}" alt="{e(Path(i).stem, quote=True)}">'
            for i in section.images
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


# --- public API -----------------------------------------------------------------------------


def leaderboard(records: Sequence[RunRecord], *, baseline: str = BASELINE) -> Table:
    """A rich table: optimizers ranked by AlgoPerf benchmark score (time); per workload the
    time-to-target (steps in parentheses) and the speedup vs ``baseline`` with its 95% CI."""
    from rich.table import Table
    from rich.text import Text

    results = compute_results(records, baseline=baseline)
    workloads = _workloads(records)
    has_baseline = any(r.optimizer == baseline for r in records)
    note = "95% CI over seeds" if has_baseline else f"no {baseline} runs, so no speedups"
    table = Table(title=f"gradkit bench leaderboard (speedup vs {baseline}: {note})")
    table.add_column("optimizer", style="bold")
    for w in workloads:
        table.add_column(w, justify="right")
    table.add_column("score", justify="right")
    t, s = results["time"], results["steps"]
    for o in ranking(results):
        cells = []
        for w in workloads:
            cell = format_cell(t["per_workload"][o][w], s["per_workload"][o][w])
            if has_baseline and o != baseline:
                cell += "\n" + format_speedup(t["speedups"].get(f"{o}|{w}"))
            cells.append(Text(cell))  # Text: "[1.2, 2.5]" must not be read as rich markup
        table.add_row(Text(o), *cells, f"{t['scores'][o]:.3f}")
    return table


def write_report(
    records: Sequence[RunRecord], out_dir: Path, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``report.md``, ``report.html``, ``results.json`` and ``plots/*.png`` in ``out_dir``.

    ``meta`` describes the run (suite, tuning mode, seeds, ...); machine information
    (:func:`machine_info`) fills keys it lacks. Returns ``{"markdown", "html", "json": Path,
    "plots": [Path, ...]}``.
    """
    records = list(records)
    out_dir = Path(out_dir)
    full_meta = {**machine_info(), **(meta or {})}
    results = compute_results(records)
    rel = _write_plots(records, results, out_dir)
    title = (
        f"gradkit bench report{' — ' + str(full_meta['suite']) if full_meta.get('suite') else ''}"
    )
    full_meta.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    sections = _sections(records, results, full_meta, rel)
    paths = {
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "json": out_dir / "results.json",
    }
    paths["markdown"].write_text(_render_markdown(title, sections), encoding="utf-8")
    paths["html"].write_text(_render_html(title, sections), encoding="utf-8")
    payload = {
        "format": FORMAT,
        "meta": full_meta,
        "records": [r.to_json() for r in records],
        "results": results,
    }
    paths["json"].write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))
    return {**paths, "plots": [out_dir / p for p in rel.values()]}


def load_results(path: Path) -> tuple[list[RunRecord], dict[str, Any]]:
    """``(records, meta)`` from a ``results.json`` written by :func:`write_report`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(
            f"Invalid results file: {path} (format {data.get('format')!r}, expected {FORMAT!r})"
        )
    return [RunRecord.from_json(r) for r in data["records"]], data["meta"]


def _write_plots(
    records: Sequence[RunRecord], results: Mapping[str, Any], out_dir: Path
) -> dict[str, str]:
    """Every PNG, keyed by plot name; values are paths relative to ``out_dir``."""
    from gradkit.bench import plots

    plot_dir = out_dir / "plots"
    paths = {
        f"curves_{w}": plots.plot_curves(records, w, plot_dir / f"curves_{_slug(w)}.png")
        for w in _workloads(records)
    }
    profiles = {k: np.asarray(v) for k, v in results["time"]["profiles"].items()}
    paths["performance_profile"] = plots.plot_profiles(
        profiles, results["taus"], plot_dir / "performance_profile.png"
    )
    for measure in ("time", "steps"):
        name = f"{measure}_to_target"
        paths[name] = plots.plot_time_to_target(records, plot_dir / f"{name}.png", measure)
    return {k: p.relative_to(out_dir).as_posix() for k, p in paths.items()}


def _slug(name: str) -> str:
    """A file-name-safe version of a workload name (user workloads come by import path)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``"inf"``/``"-inf"``/``"nan"`` (the RunRecord convention), tuples
    become lists, numpy scalars become Python numbers; anything else unknown becomes its str."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
