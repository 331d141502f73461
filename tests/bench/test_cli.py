"""``gradkit bench``: list, one-line user errors, a tiny run by import path, report from the DB."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradkit.cli import main

TINY = "bench.tiny_workloads:TinyMLP"


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        rc = main(argv)
        raise SystemExit(rc)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_list_shows_workloads_optimizers_and_suites(capsys: pytest.CaptureFixture[str]) -> None:
    import gradkit.optim as go
    from gradkit.bench.workloads import WORKLOADS

    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert out.index("workloads:") < out.index("optimizers:") < out.index("suites:")
    lines = out.splitlines()
    for name in [*WORKLOADS, *(i.name for i in go.available()), "quick", "standard"]:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "searches lr in" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--optimizers", "AdamW,Nope"], "Unknown optimizer: 'Nope'; choose from: Adagrad"),
        (["--workloads", "nope"], "Unknown workload: 'nope'; choose from: digits_logreg"),
        (["--optimizer", "not_a_module_xyz:Opt"], "Invalid import path"),
        (["--workloads", "math:pi"], "not a gradkit bench Workload"),
        (["--workloads", "gradkit.optim:AdamW"], "constructing it failed"),
        (["--seeds", "0"], "--seeds must be a positive integer (got '0')"),
        (["--trials", "many"], "--trials must be a positive integer (got 'many')"),
        (["--suite", "huge"], "Unknown suite: 'huge'; choose from: quick, standard"),
        (["--db", "postgresql://me:secret@127.0.0.1:1/x"], "Cannot open database"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], expected: str
) -> None:
    err = _error_line(capsys, ["bench", "run", *args, "--out", str(tmp_path)])
    assert expected in err
    assert "secret" not in err


def test_bad_subcommand_and_missing_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert "invalid choice" in _error_line(capsys, ["bench", "frobnicate"])
    err = _error_line(capsys, ["bench", "report", "--db", str(tmp_path / "none.db")])
    assert "no database at" in err


def test_run_by_import_path_then_rerun_and_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["bench", "run", "--workloads", TINY, "--optimizers", "AdamW,torch.optim:SGD",
            "--trials", "2", "--seeds", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "4 runs (4 ok" in first and str(out / "bench.db") in first
    assert (out / "report.html").is_file() and (out / "bench.db").is_file()
    assert main(argv) == 0  # everything stored: nothing is trained again
    assert "nothing to train" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main(["bench", "report", "--db", str(out / "bench.db"), "--out", str(again)]) == 0
    assert "4 runs" in capsys.readouterr().out and (again / "report.md").is_file()
    err = _error_line(capsys, ["bench", "report", "--db", str(out / "bench.db"), "--suite", "x"])
    assert "no benchmark runs stored" in err


def test_tune_restricts_the_search_and_report_separates_modes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gradkit.bench.spaces import get_spec
    from gradkit.bench.storage import load_records, open_storage

    out = tmp_path / "out"
    base = ["bench", "run", "--workloads", TINY, "--optimizers", "AdamW", "--trials", "3",
            "--seeds", "1", "--out", str(out)]  # fmt: skip
    assert main(base) == 0  # quick suite: learning rate only
    assert main([*base, "--tune", "all"]) == 0
    capsys.readouterr()
    records = load_records(open_storage(str(out / "bench.db"), heartbeat=False))
    defaults = get_spec("AdamW").defaults
    lr_only = [r for r in records if r.hparams["beta1"] == defaults["beta1"]]
    searched = [r for r in records if r.hparams["beta1"] != defaults["beta1"]]
    # lr-only: every non-lr hyperparameter at its default, three different learning rates
    assert len(lr_only) >= 3 and len({r.hparams["lr"] for r in lr_only}) >= 3
    assert all(r.hparams["weight_decay"] == defaults["weight_decay"] for r in lr_only)
    assert len(searched) >= 2  # the full space moves beta1 (trial 0 is the defaults)
    err = _error_line(capsys, ["bench", "report", "--db", str(out / "bench.db")])
    assert "several tuning modes" in err and "tuned-lr+adam_lr" in err
    again = tmp_path / "again"
    argv = [
        "bench",
        "report",
        "--db",
        str(out / "bench.db"),
        "--mode",
        "tuned",
        "--out",
        str(again),
    ]
    assert main(argv) == 0 and "3 runs" in capsys.readouterr().out
    err = _error_line(capsys, ["bench", "report", "--db", str(out / "bench.db"), "--mode", "x"])
    assert "no runs with mode 'x'" in err


def test_state_policy_variant_pairs_with_its_base(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gradkit.bench.claims import check_8bit
    from gradkit.bench.storage import load_records, open_storage

    out = tmp_path / "out"
    argv = ["bench", "run", "--workloads", TINY, "--optimizers", "AdamW,AdamW@q8",
            "--trials", "3", "--seeds", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    records = load_records(open_storage(str(out / "bench.db"), heartbeat=False))
    by = {(r.optimizer, r.trial): r for r in records}
    for trial in range(3):  # the variant draws its base's Halton points, trial for trial
        assert by[("AdamW@q8", trial)].hparams["lr"] == by[("AdamW", trial)].hparams["lr"]
        assert by[("AdamW@q8", trial)].hparams["state_dtype"] == "q8"
    claim = check_8bit(records)
    assert claim.held is not None and "3 pair(s)" in claim.measured  # paired, not "not measured"
    err = _error_line(capsys, ["bench", "run", "--optimizers", "AdamW@int3", "--out", str(out)])
    assert "Invalid state policy" in err and "q8" in err
