from __future__ import annotations

import math

import pytest
import torch

from gradkit.multitask import (
    conflict_fraction,
    conflict_metrics,
    cosine_matrix,
    magnitude_similarity_matrix,
)


def test_cosine_and_conflicts_on_golden_matrix():
    matrix = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    cos = cosine_matrix(matrix)
    expected = -22 / math.sqrt(18 * 38)
    torch.testing.assert_close(cos[0, 1], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(cos[:2, :2].diagonal(), torch.ones(2, dtype=torch.float64))
    assert cos[2].abs().sum() == 0  # zero gradient: cosine defined as 0
    assert conflict_fraction(matrix) == 1 / 3


def test_magnitude_similarity():
    matrix = torch.tensor([[3.0, 4.0], [0.0, 10.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    sim = magnitude_similarity_matrix(matrix)
    torch.testing.assert_close(
        sim[0, 1], torch.tensor(2 * 5 * 10 / (25 + 100), dtype=torch.float64)
    )
    assert sim[0, 2] == 0 and sim[2, 3] == 1 and sim[1, 1] == 1
    torch.testing.assert_close(sim, sim.T)


def test_conflict_metrics_single_task_and_values():
    assert conflict_metrics(torch.ones(1, 3))["conflict_fraction"] == 0.0
    metrics = conflict_metrics(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]))
    assert metrics["conflict_fraction"] == 1 / 3
    assert metrics["cosine_min"] == -1.0
    assert math.isclose(metrics["magnitude_similarity_min"], 0.8, rel_tol=1e-6)


def test_delta_m_both_conventions_by_hand():
    from gradkit.multitask import delta_m

    results = {"seg": {"miou": 0.40, "pix": 0.60}, "depth": {"abs": 0.70}}
    base = {"seg": {"miou": 0.50, "pix": 0.60}, "depth": {"abs": 0.50}}
    hib = {"seg": {"miou": True, "pix": True}, "depth": {"abs": False}}
    # per metric: miou +20% worse, pix 0, abs +40% worse -> mean over metrics 20%
    assert abs(delta_m(results, base, hib) - 20.0) < 1e-9
    # per task: seg mean 10%, depth 40% -> mean over tasks 25%
    assert abs(delta_m(results, base, hib, average="task") - 25.0) < 1e-9
    with pytest.raises(ValueError, match="average"):
        delta_m(results, base, hib, average="median")
    with pytest.raises(ValueError, match="layout"):
        delta_m(results, {"seg": {"miou": 0.5}}, hib)
