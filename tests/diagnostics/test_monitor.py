"""GradientMonitor sinks (TensorBoard read back, CSV), schedule, spike detector, not-training."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from gradkit.diagnostics import monitor as mon


def _train(model, opt, monitor, steps, loss_scale=None):
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        opt.zero_grad()
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).pow(2).mean() * (1.0 if loss_scale is None else loss_scale(step))
        loss.backward()
        monitor.observe_loss(loss)
        opt.step()


def test_tensorboard_and_csv_sinks_hold_expected_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = (torch.randn(16, 4),)
    probe = mon.sharpness_probe(
        model, lambda m, b: m(b[0]).pow(2).mean(), [batch], train=False, optimizer=opt
    )
    sinks = [mon.TensorBoardSink(tmp_path / "tb"), mon.CSVSink(tmp_path / "log.csv")]
    with mon.GradientMonitor(model, opt, sinks=sinks, probes={"hess": probe}, probe_every=3) as m:
        _train(model, opt, m, steps=7)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "loss",
        "grad_norm",
        "update_norm",
        "lr",
        "grad_norm/0.weight",
        "update_ratio/2.bias",
        "probe/hess/sharpness",
        "probe/hess/ratio",
        "spike",
    }
    assert expected <= tags, expected - tags
    assert [e.step for e in acc.Scalars("loss")] == list(range(7))
    assert [e.step for e in acc.Scalars("probe/hess/sharpness")] == [0, 3, 6]
    assert acc.Scalars("lr")[0].value == pytest.approx(0.05)
    ratio = acc.Scalars("probe/hess/ratio")[0].value
    sharp = acc.Scalars("probe/hess/sharpness")[0].value
    assert ratio == pytest.approx(sharp / 76.0, rel=1e-5)  # (2 + 2*0.9) / 0.05
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["tag"] for r in rows} == tags
    losses = [float(r["value"]) for r in rows if r["tag"] == "loss"]
    assert losses == pytest.approx([e.value for e in acc.Scalars("loss")], rel=1e-6)


def test_update_ratio_is_lr_times_grad_over_param():
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with mon.GradientMonitor(model, opt, sinks=[lambda s, x: seen.append(x)]) as m:
        model(torch.ones(2, 3)).sum().backward()
        grad, before = model.weight.grad.clone(), model.weight.detach().clone()
        m.observe_loss(1.0)
        opt.step()
    stats = seen[0]
    assert stats["grad_norm/weight"] == pytest.approx(float(grad.norm()), rel=1e-6)
    assert stats["update_ratio/weight"] == pytest.approx(
        0.1 * float(grad.norm()) / float(before.norm()), rel=1e-5
    )


def test_every_and_manual_hooks_without_torch_optimizer():
    model = nn.Linear(2, 1)
    seen = []
    m = mon.GradientMonitor(model, optimizer=None, sinks=[lambda s, x: seen.append(s)], every=2)
    for _ in range(5):
        model.zero_grad()
        model(torch.randn(3, 2)).sum().backward()
        m.before_step()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        m.after_step()
    assert seen == [0, 2, 4]
    assert m.last["update_norm"] > 0


def test_spike_detector_fires_on_injected_spike_only():
    det = mon.SpikeDetector(window=50, z_threshold=6.0, min_history=20)
    smooth = [2.0 * math.exp(-0.01 * t) + 0.01 * math.sin(t) for t in range(300)]
    for step, value in enumerate(smooth):
        assert det.update(step, loss=value, grad_norm=1.0 + 0.1 * math.cos(step)) == []
    fired = det.update(300, loss=smooth[-1] * 3, grad_norm=1.0)
    assert [e.signal for e in fired] == ["loss"]
    assert fired[0].z > 6 and "loss z-score" in fired[0].reason and "step 300" in fired[0].reason
    fired = det.update(301, loss=smooth[-1], grad_norm=math.inf)
    assert fired[0].signal == "grad_norm" and "non-finite" in fired[0].reason


def test_monitor_records_spike_with_context():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    det = mon.SpikeDetector(window=30, min_history=10)
    with mon.GradientMonitor(model, opt, spike_detector=det) as m:
        _train(model, opt, m, steps=25, loss_scale=lambda s: 50.0 if s == 20 else 1.0)
    steps = {e.step for e in m.spike_events}
    assert 20 in steps and steps <= {20, 21}  # the spiked step (and maybe its aftermath)
    event = next(e for e in m.spike_events if e.step == 20)
    assert event.context["loss"] == pytest.approx(
        event.value if event.signal == "loss" else event.context["loss"]
    )
    assert event.context["grad_norm"] > 0


def test_monitor_fires_not_training_on_frozen_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    model[1].requires_grad_(False)  # everything frozen: nothing gets a gradient
    seen = []
    monitor = mon.GradientMonitor(model, opt, sinks=[lambda s, x: seen.append(x)])
    with monitor as m, pytest.warns(RuntimeWarning, match="not training"):
        opt.step()
    assert seen[0]["not_training"] == 1.0 and "frozen" in m.not_training_reason


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"every": 0}, "Invalid every: 0"),
        ({"probe_every": -2}, "Invalid probe_every: -2"),
        ({"sinks": [3]}, "Invalid sink"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        mon.GradientMonitor(nn.Linear(1, 1), **kwargs)
    with pytest.raises(ValueError, match="Invalid window"):
        mon.SpikeDetector(window=1)


def test_noise_scale_probe_matches_direct_estimate():
    from gradkit.diagnostics.gradstats import noise_scale_per_sample, per_sample_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    ce = nn.functional.cross_entropy
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = mon.noise_scale_probe(model, ce, x, y, train=False)
    with mon.GradientMonitor(model, opt, probes={"noise": probe}, probe_every=2) as m:
        opt.zero_grad()
        ce(model(x), y).backward()
        expected = noise_scale_per_sample(per_sample_gradients(model, ce, x, y, train=False))
        opt.step()
    assert m.last["probe/noise/b_simple"] == pytest.approx(expected.b_simple, rel=1e-5)
