"""Step safety: the proposed update is the real one, and rho_a bounds the true Taylor radius."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradkit.diagnostics import monitor as mon
from gradkit.diagnostics import step_safety as ss


def _nearest_zero(z: np.ndarray, a: np.ndarray, search: float) -> float:
    """|tau| of the zero of F(tau) = sum_k exp(z_k + a_k tau) nearest to 0 (Newton from a polar
    grid of starting points in the disc of radius ``search``): where log F, hence the loss along
    the line, stops being analytic -- the true Taylor radius of that sample's loss."""
    radii = np.linspace(0.05, 1.0, 12) * search
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    t = (radii[:, None] * np.exp(1j * angles)[None]).ravel()  # all starting points at once
    with np.errstate(all="ignore"):  # starts that diverge overflow; the check below drops them
        for _ in range(60):
            terms = np.exp(z[None] + a[None] * t[:, None])
            f, df = terms.sum(1), (a[None] * terms).sum(1)
            t = t - f / np.where(df == 0, 1, df)
        terms = np.exp(z[None] + a[None] * t[:, None])
        converged = np.abs(terms.sum(1)) < 1e-9 * np.abs(terms).sum(1)
    return float(np.abs(t[converged]).min()) if converged.any() else math.inf


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_rho_a_bounds_the_true_taylor_radius(classes):
    torch.manual_seed(classes)
    model = nn.Linear(4, classes).double()  # logits exactly linear in the parameters
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, classes, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.7, momentum=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    report = ss.measure_step_safety(model, x, opt, train=False)
    delta = ss.proposed_update(opt)
    tau = math.sqrt(sum(float(d.square().sum()) for d in delta))
    assert report.step_length == pytest.approx(tau)
    u = [d / tau for d in delta]
    with torch.no_grad():
        z = model(x).numpy()
        a = (x @ u[0].T + u[1]).numpy()  # directional derivatives of the logits, by hand
    spread = (a.max(1) - a.min(1)).max()
    assert report.rho_a == pytest.approx(math.pi / spread, rel=1e-10)
    radii = [_nearest_zero(z[i], a[i], 6 * math.pi / (a[i].max() - a[i].min())) for i in range(6)]
    assert all(np.isfinite(radii))
    assert report.rho_a <= min(radii) * (1 + 1e-9)
    if classes == 2:  # two classes: the exact radius sqrt(delta^2 + pi^2) / Delta_a
        from gradkit.safe_step import binary_exact_radius

        for i in range(6):
            exact = binary_exact_radius(z[i, 0] - z[i, 1], abs(a[i, 0] - a[i, 1]))
            assert radii[i] == pytest.approx(exact, rel=1e-6)
    assert report.threshold == pytest.approx((2 + 1.0) / 0.7)
    assert report.r == pytest.approx(tau / report.rho_a)


def test_proposed_update_restores_adam_exactly():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    delta = ss.proposed_update(opt)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert opt.state_dict()["state"][0]["step"] == 2
    opt.step()
    for p, b, d in zip(model.parameters(), before, delta, strict=True):
        torch.testing.assert_close(p.detach() - b, d)
    report = ss.measure_step_safety(
        model, x, opt, train=False, sharpness=3.0, batch_size=5, b_simple=10
    )
    assert report.threshold is None and report.sharpness_ratio is None  # Adam: not defined
    assert report.noise_ratio == pytest.approx(0.5)
    assert "rho_a" in report.summary() and set(report.as_dict()) >= {"r", "rho_a", "noise_ratio"}


def test_step_safety_probe_inside_monitor_measures_the_real_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    probe = ss.step_safety_probe(model, x, opt, train=False)
    with mon.GradientMonitor(model, opt, probes={"safety": probe}, probe_every=1) as m:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            m.observe_loss(loss)
            opt.step()
            assert m.last["probe/safety/step_length"] == pytest.approx(
                m.last["update_norm"], rel=1e-5
            )
    assert m.step == 3  # the probe's own optimizer.step() calls were not counted


def test_bad_train_and_foreign_optimizer():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Invalid train"):
        ss.measure_step_safety(model, torch.ones(1, 2), opt, train="eval")
    with pytest.raises(ValueError, match="owns none"):
        ss.measure_step_safety(model, torch.ones(1, 2), opt, train=False)
