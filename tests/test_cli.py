"""The gradkit command: the demo runs, and bad input is a one-line error."""

from __future__ import annotations

import pytest
import torch

from gradkit.cli import main
from gradkit.demo import run_demo


def test_demo_trains_and_the_table_prints(capsys):
    assert main(["demo", "--optimizers", "SGD,AdamW", "--epochs", "2", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "SGD" in out and "AdamW" in out and "val acc" in out


def test_demo_is_deterministic_and_learns():
    a = run_demo(["AdamW"], epochs=3, seeds=[1])[0][0]
    b = run_demo(["AdamW"], epochs=3, seeds=[1])[0][0]
    assert a.accuracy == b.accuracy and a.train_loss == b.train_loss
    assert a.accuracy > 0.8  # ten classes: chance is 0.1
    assert a.state_bytes_per_param == 8.0


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["demo", "--optimizers", "Adamm"], ["unknown optimizer(s) Adamm", "AdamW", "SGD"]),
        (["demo", "--epochs", "0"], ["--epochs must be >= 1", "got 0"]),
    ],
)
def test_bad_input_is_one_line_error(argv, needles, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert err.count("\n") == 1


def test_demo_restores_denormal_flushing():
    torch.set_flush_denormal(False)
    run_demo(["SGD"], epochs=1, seeds=[0])
    assert float(torch.tensor(1e-40) * 1.0) != 0.0
