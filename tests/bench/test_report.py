"""The bench report: every file written, self-contained HTML, a JSON that rebuilds the report."""

import json
import math
import re
from pathlib import Path

import pytest

from gradkit.bench import report
from support.synthetic_runs import make_run

ODD = "my_pkg.mod:Opt<b>&1$"  # a user optimizer by import path; HTML and mathtext characters
WORKLOADS = ("digits_mlp", "my_pkg.w:Quad")  # a user workload by import path
PLOT_NAMES = ("digits_mlp", "my_pkg.w_Quad")


def _records():
    records = []
    for seed in range(2):
        for w, base, fast in [("digits_mlp", 60, 30), ("my_pkg.w:Quad", 80, None)]:
            records.append(
                make_run("AdamW", w, base, seed=seed, seconds_per_step=0.01 + seed / 1e3)
            )
            records.append(make_run("Lion", w, fast, seed=seed))
            records.append(make_run(ODD, w, 90, seed=seed))
    diverged = make_run("Lion", "my_pkg.w:Quad", None, seed=2, status="diverged")
    diverged.values[-1] = diverged.final_value = math.nan
    return [*records, diverged]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    records = _records()
    paths = report.write_report(records, out, {"suite": "unit", "tuning": "defaults only"})
    return records, out, paths


def test_every_file_is_written(written):
    _, out, paths = written
    for key in ("markdown", "html", "json"):
        assert paths[key].parent == out and paths[key].stat().st_size > 0
    names = sorted(p.name for p in paths["plots"])
    expected = [f"curves_{w}.png" for w in PLOT_NAMES]
    assert names == sorted(
        [*expected, "performance_profile.png", "time_to_target.png", "steps_to_target.png"]
    )
    for png in paths["plots"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_and_escaped(written):
    _, out, paths = written
    page = paths["html"].read_text()
    for name in ("AdamW", "Lion", "my_pkg.mod:Opt&lt;b&gt;&amp;1$", *WORKLOADS):
        assert name in page
    assert "Opt<b>" not in page and "<style>" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(paths["plots"])
    for src in sources:
        assert not src.startswith(("http", "/")) and (out / src).is_file()
    assert "<link" not in page and "<script" not in page


def test_markdown_states_protocol_leaderboard_and_claims(written):
    _, out, paths = written
    text = paths["markdown"].read_text()
    for phrase in (
        "evaluation time is excluded",
        "cpu_count",
        "torch_version",
        "defaults only",
        "## Leaderboard",
        "## Published claims",
        "arXiv:2302.06675",
        "diverged",
    ):
        assert phrase in text
    assert "Opt<b>&1" in text  # Markdown keeps the raw name (escaped only for tables' pipes)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out / image).is_file()


def test_results_json_round_trips_and_rebuilds_the_scores(written):
    records, _, paths = written
    raw = paths["json"].read_text()
    data = json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    loaded, meta = report.load_results(paths["json"])
    assert [r.to_json() for r in loaded] == [r.to_json() for r in records]
    assert math.isnan(loaded[-1].final_value) and meta["suite"] == "unit"
    rebuilt = report._json_safe(report.compute_results(loaded))
    assert rebuilt == data["results"]
    assert data["results"]["time"]["per_workload"]["Lion"]["my_pkg.w:Quad"] == "inf"


def test_leaderboard_ranks_by_score_and_shows_speedups(written):
    from rich.console import Console

    records = written[0]
    table = report.leaderboard(records)
    results = report.compute_results(records)
    scores = results["time"]["scores"]
    assert table.row_count == 3
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    order = [text.index(name) for name in report.ranking(results)]
    assert order == sorted(order)
    assert scores["AdamW"] > scores["Lion"]  # Lion: 2x faster on one workload, misses the other
    # Lion vs AdamW on digits_mlp, seed-matched: 0.6/0.3 and 0.66/0.3 -> median 2.1
    assert "2.1x [2, 2.2] n=2" in text


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="records"):
        report.write_report([], tmp_path, {})
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="results file"):
        report.load_results(Path(bad))
