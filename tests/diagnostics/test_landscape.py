"""Loss slices against direct evaluation; filter normalisation; plots are written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.diagnostics import landscape as ls


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    return model, x, y, (lambda m: nn.functional.cross_entropy(m(x), y))


def test_filter_normalisation_matches_filter_norms():
    model, *_ = _problem()
    d = ls.filter_normalized_direction(model, seed=1)
    for p, di in zip(model.parameters(), d, strict=True):
        if p.ndim == 1:
            assert not di.any()  # biases ignored, as ignore='biasbn'
        else:
            torch.testing.assert_close(di.norm(dim=1), p.detach().norm(dim=1))
    kept = ls.filter_normalized_direction(model, seed=1, ignore_1d=False)
    assert float(kept[1].norm()) == pytest.approx(float(model[0].bias.detach().norm()))


def test_slices_equal_direct_evaluation_and_restore_parameters():
    model, _, _, loss_of = _problem()
    origin = [p.detach().clone() for p in model.parameters()]
    d1 = ls.filter_normalized_direction(model, seed=1)
    d2 = ls.filter_normalized_direction(model, seed=2)
    alphas, betas = [-0.5, 0.0, 0.7], [-0.2, 0.3]
    line = ls.loss_slice_1d(model, loss_of, d1, alphas, train=False)
    grid = ls.loss_surface_2d(model, loss_of, (d1, d2), alphas, betas, train=False)

    def direct(a, b):
        moved = _problem()[0]
        with torch.no_grad():
            for p, o, u, v in zip(moved.parameters(), origin, d1, d2, strict=True):
                p.copy_(o + a * u + b * v)
        return float(loss_of(moved).detach())

    for i, a in enumerate(alphas):
        assert float(line[i]) == pytest.approx(direct(a, 0.0), rel=1e-12)
        for j, b in enumerate(betas):
            assert float(grid[i, j]) == pytest.approx(direct(a, b), rel=1e-12)
    for p, o in zip(model.parameters(), origin, strict=True):
        assert torch.equal(p, o)
    with pytest.raises(ValueError, match="Invalid direction"):
        ls.loss_slice_1d(model, loss_of, d1[:2], alphas, train=False)


def test_update_slice_passes_through_the_actual_step(tmp_path):
    model, x, _, loss_of = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    loss = loss_of(model)
    loss.backward()
    origin_loss = float(loss)
    sl = ls.update_direction_slice(model, loss_of, opt, train=False, num_points=5, inputs=x)
    assert sl.rho_a is not None and sl.rho_a > 0
    # the loss at distance tau along the unit update is the loss after the real step
    at_tau = ls.loss_slice_1d(
        model,
        loss_of,
        [p.grad * (-0.3 / sl.step_length) for p in model.parameters()],
        [sl.step_length],
        train=False,
    )
    opt.step()
    assert float(at_tau[0]) == pytest.approx(float(loss_of(model).detach()), rel=1e-10)
    assert float(sl.taus[2]) == 0.0 and float(sl.losses[2]) == pytest.approx(origin_loss)
    out1 = ls.plot_slice_1d(
        sl.taus, sl.losses, tmp_path / "u.png", markers={"tau": sl.step_length, "rho_a": sl.rho_a}
    )
    grid = torch.rand(3, 4, dtype=torch.float64) + 0.1
    out2 = ls.plot_surface_2d([0, 1, 2], [0, 1, 2, 3], grid, tmp_path / "s.png")
    for out in (out1, out2):
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
