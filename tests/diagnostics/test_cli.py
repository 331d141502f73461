"""``gradkit diagnose`` end to end on tiny user tasks (by import path), and its input errors."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from gradkit.cli import main

TINY = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F

    class Rich:
        batch_size = 16

        def __init__(self):
            gen = torch.Generator().manual_seed(0)
            self.x = torch.randn(64, 4, generator=gen)
            self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                             torch.nn.Linear(6, 3))
            self.loss_fn = F.cross_entropy

        def batch(self, step):
            i = (step * 16) % 64
            return self.x[i : i + 16], self.y[i : i + 16]

        def batch_loss(self, step):
            x, y = self.batch(step)
            return lambda: self.loss_fn(self.model(x), y)

    class Plain(Rich):
        batch_size = None

        def __init__(self):
            super().__init__()
            del self.loss_fn

        def batch(self, step):  # not part of the plain contract
            raise AttributeError

        def batch_loss(self, step):  # returns the tensor itself
            i = (step * 16) % 64
            return F.cross_entropy(self.model(self.x[i : i + 16]), self.y[i : i + 16])

    def make_rich():
        return Rich()

    def make_plain():
        task = Plain()
        return task

    not_a_factory = 3
    """
)

ARGS = ["--train-steps", "4", "--curvature-batches", "2", "--grid", "3", "--top-k", "2"]


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    name = f"gradkit_tiny_task_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_diagnose_rich_task_writes_report_with_correct_curvature(tiny_module, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["diagnose", "--model", f"{tiny_module}:make_rich", "--out", str(out), *ARGS]) == 0
    assert "summary.md" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for plot in summary["plots"]:
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert (out / "monitor.csv").read_text().startswith("step,tag,value")
    assert "| top eigenvalues (Lanczos) |" in (out / "summary.md").read_text()
    assert summary["parameters"] == 4 * 6 + 6 + 6 * 3 + 3
    assert summary["step_safety"]["rho_a"] > 0 and summary["gradients"]["coherence"]["alpha"] > 0
    ns = summary["gradients"]["noise_scale_per_sample"]
    assert ns["examples"] == 32 and ns["trace_cov"] > 0


def test_diagnose_top_eigenvalues_match_exact_hessian(tiny_module):
    from gradkit.diagnostics import DiagnoseConfig, diagnose
    from gradkit.diagnostics.hessian import HessianOperator

    task = sys.modules.get(tiny_module) or __import__(tiny_module)
    rich = task.Rich()
    cfg = DiagnoseConfig(
        train_steps=3,
        curvature_batches=2,
        grid_1d=3,
        grid_2d=3,
        top_k=2,
        slq_runs=1,
        trace_probes=2,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        summary = diagnose(rich, folder, cfg)
    batches = [rich.batch(0), rich.batch(1)]
    joined = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]
    op = HessianOperator(rich.model, lambda m, b: rich.loss_fn(m(b[0]), b[1]), joined, train=False)
    exact = np.linalg.eigvalsh(op.dense().double().numpy())
    reported = summary["curvature"]["top_eigenvalues"]
    np.testing.assert_allclose(reported, exact[::-1][:2], rtol=1e-3)
    np.testing.assert_allclose(
        summary["curvature"]["smallest_eigenvalues"],
        exact[:2],
        rtol=1e-3,
        atol=1e-4 * abs(exact).max(),
    )


def test_diagnose_plain_task_skips_per_example_reports(tiny_module, tmp_path):
    out = tmp_path / "plain"
    assert main(["diagnose", "--model", f"{tiny_module}:make_plain", "--out", str(out), *ARGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step_safety"] is None and "noise_scale_per_sample" not in summary["gradients"]
    assert summary["gradients"]["noise_scale_two_batch"]["unit"] == "batches"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--model", "no_colon_here"], ["--model must look like pkg.mod:factory"]),
        (["--model", "surely_missing_mod_xyz:f"], ["cannot import", "surely_missing_mod_xyz"]),
        (["--model", "{mod}:not_a_factory"], ["no callable", "not_a_factory"]),
        (["--model", "{mod}:missing"], ["no callable", "missing"]),
        (["--lr", "-1"], ["--lr must be > 0", "-1"]),
        (["--top-k", "0"], ["--top-k must be >= 1", "got 0"]),
        (["--momentum", "1.5"], ["--momentum must be in [0, 1)", "1.5"]),
        (["--workload", "nope_workload"], ["unknown workload", "nope_workload"]),
        (["--threads", "0"], ["--threads must be >= 1", "got 0"]),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needles, tiny_module, tmp_path, capsys):
    argv = [a.replace("{mod}", tiny_module) for a in argv]
    assert main(["diagnose", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert err.count("\n") == 1 and err.startswith("gradkit diagnose:")
