"""Leakage audit: undefended gradients give the image back; heavy defences do not."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn", reason="the audit uses scikit-learn's digits")

from gradkit.cli import main
from gradkit.privacy import leakage
from gradkit.privacy.defenses import (
    TopKWithErrorFeedback,
    audit_leakage,
    parse_defense,
    parse_defenses,
    prune,
    quantize,
)


@pytest.fixture(scope="module")
def digits():
    images, labels = leakage.load_digit_images()
    unrelated = leakage.psnr_of_unrelated(images, labels, torch.Generator().manual_seed(0))
    return images, labels, unrelated


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig"])
def test_undefended_gradient_reveals_the_image(name, digits):
    images, labels, unrelated = digits
    model = leakage.make_victim(0)
    x, y = images[3:4], labels[3:4]
    grads = leakage.batch_gradient(model, x, y)
    guess = leakage.attack(
        name, model, grads, tuple(x.shape), generator=torch.Generator().manual_seed(1)
    )
    result, _ = leakage.score(x, y, guess)
    assert result.psnr > unrelated + 20, (result.psnr, unrelated)
    assert result.label_accuracy == 1.0


@pytest.mark.parametrize("spec", ["prune:0.99", "noise:0.1"])
def test_heavy_pruning_or_dp_noise_defeats_inverting_gradients(spec, digits):
    images, labels, unrelated = digits
    model = leakage.make_victim(0)
    x, y = images[3:4], labels[3:4]
    generator = torch.Generator().manual_seed(1)
    grads = parse_defense(spec).gradient(model, x, y, generator)
    result, _ = leakage.score(
        x, y, leakage.attack("ig", model, grads, tuple(x.shape), generator=generator)
    )
    assert result.psnr < unrelated, (result.psnr, unrelated)


def test_idlg_labels_are_exact_for_single_images(digits):
    images, labels, _ = digits
    model = leakage.make_victim(0)
    guessed = [
        leakage.idlg_labels(
            model, leakage.batch_gradient(model, images[i : i + 1], labels[i : i + 1])
        ).item()
        for i in range(30)
    ]
    assert guessed == labels[:30].tolist()


def test_psnr_and_mse_definitions():
    a, b = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.1)
    torch.testing.assert_close(leakage.mse(a, b), torch.full((2,), 0.01))
    torch.testing.assert_close(leakage.psnr(a, b), torch.full((2,), 20.0))


def test_prune_zeroes_the_smallest_fraction():
    g = torch.arange(1.0, 11.0).mul(torch.tensor([1, -1] * 5))
    (pruned,) = prune([g], 0.3)
    assert pruned.tolist() == [0, 0, 0, *g[3:].tolist()]


def test_topk_error_feedback_sends_the_residual_later():
    compressor = TopKWithErrorFeedback(0.25)
    g = torch.tensor([4.0, -3.0, 2.0, 1.0])
    assert compressor([g])[0].tolist() == [4.0, 0, 0, 0]
    assert compressor.residual[0].tolist() == [0, -3.0, 2.0, 1.0]
    second = compressor([torch.zeros(4)])[0]
    assert second.tolist() == [0, -3.0, 0, 0]  # error feedback: the largest unsent entry goes now


def test_quantize_uses_at_most_two_to_the_bits_levels():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    (q,) = quantize([g], 3)
    assert q.unique().numel() <= 2**3 - 1
    assert (q - g).abs().max() <= g.abs().max() / 3 / 2 + 1e-6


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("prune:1.5", "P must be in [0, 1)"),
        ("prun:0.9", "unknown kind 'prun'"),
        ("noise:x", "'x' is not a number"),
        ("quant:2.5", "BITS must be an integer"),
        ("none:1", "takes 0 value"),
    ],
)
def test_bad_defense_specs_are_named(spec, needle):
    with pytest.raises(
        ValueError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        parse_defense(spec)


def test_audit_runs_and_orders_the_defenses():
    result = audit_leakage(parse_defenses("none,prune:0.99"), attacks=("idlg",), images=2, seed=0)
    none, pruned = result.rows
    assert none.psnr > result.unrelated_psnr + 20 > pruned.psnr + 20
    assert result.reconstructions[("none", "idlg")].shape == (2, 1, 8, 8)


def test_cli_writes_table_and_grid(tmp_path, capsys):
    code = main(
        [
            "audit",
            "leakage",
            "--defense",
            "none,batch:2",
            "--attacks",
            "idlg",
            "--images",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "batch:2" in out and "PSNR" in out
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--defense", "prune:2"], "P must be in [0, 1)"),
        (["--defense", ","], "give at least one"),
        (["--attacks", "dlgg"], "unknown attack(s) dlgg"),
        (["--images", "0"], "--images must be >= 1 (got 0)"),
        (["--images", "two"], "--images must be an integer"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    assert main(["audit", "leakage", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
