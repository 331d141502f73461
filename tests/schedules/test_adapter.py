"""ScheduleLR drives group["lr"] exactly like the callable, resumes mid-run, composes with torch."""

from __future__ import annotations

import io

import pytest
import torch

import gradkit
from gradkit.schedules import (
    CosineDecay,
    LinearDecay,
    LinearWarmup,
    RefinedSchedule,
    ScheduleLR,
    WarmupStableDecay,
)

SCHEDULES = [
    LinearWarmup(warmup_steps=5),
    LinearDecay(total_steps=20, warmup_steps=3, final=0.1),
    CosineDecay(total_steps=20, warmup_steps=4, final=0.05),
    WarmupStableDecay(total_steps=20, warmup_steps=2, decay_fraction=0.3, shape="1-sqrt"),
    RefinedSchedule.from_grad_norms([3.0, 2.0, 1.0, 1.0, 2.0, 4.0] * 3, smoothing=0.2),
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def _loss(model, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=g)
    return model(x).square().mean()


def _run(opt, sched, model, steps, start=0):
    lrs = []
    for step in range(start, start + steps):
        lrs.append([group["lr"] for group in opt.param_groups])
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9),
        lambda p: gradkit.optim.AdamW(p, lr=0.3),
    ],
    ids=["torch.SGD", "gradkit.AdamW"],
)
def test_drives_lr_like_the_callable(schedule, make_opt):
    model = _model()
    opt = make_opt(model.parameters())
    sched = ScheduleLR(opt, schedule)
    lrs = _run(opt, sched, model, 25)
    assert [lr[0] for lr in lrs] == [0.3 * schedule(t) for t in range(25)]
    assert sched.get_last_lr() == [0.3 * schedule(25)]


def test_per_group_schedules_and_absolute_values():
    model = _model()
    groups = [
        {"params": model[0].parameters(), "lr": 1.0},
        {"params": model[2].parameters(), "lr": 1.0},
    ]
    opt = gradkit.optim.AdamW(groups, lr=1.0)
    first = CosineDecay(total_steps=10, peak=1e-2)
    second = LinearWarmup(warmup_steps=4, peak=5e-3, init=1e-3)
    sched = ScheduleLR(opt, [first, second], multiply=False)
    lrs = _run(opt, sched, model, 12)
    assert lrs == [[first(t), second(t)] for t in range(12)]


def test_state_dict_round_trip_mid_run():
    schedule = WarmupStableDecay(total_steps=30, warmup_steps=5, decay_fraction=0.4, shape="cosine")

    model = _model()
    opt = gradkit.optim.AdamW(model.parameters(), lr=0.01)
    sched = ScheduleLR(opt, schedule)
    full = _run(opt, sched, model, 30)
    final_params = [p.detach().clone() for p in model.parameters()]

    model = _model()
    opt = gradkit.optim.AdamW(model.parameters(), lr=0.01)
    sched = ScheduleLR(opt, schedule)
    first = _run(opt, sched, model, 17)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # plain numbers only

    model2 = _model()
    opt2 = gradkit.optim.AdamW(model2.parameters(), lr=0.01)
    sched2 = ScheduleLR(opt2, schedule)  # scheduler before optimizer load (torch's advice)
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    assert sched2.last_epoch == 17
    second = _run(opt2, sched2, model2, 13, start=17)

    assert first + second == full
    for p, q in zip(model2.parameters(), final_params, strict=True):
        assert torch.equal(p, q)


def test_state_dict_has_no_schedules():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    state = ScheduleLR(opt, LinearDecay(total_steps=5)).state_dict()
    assert "schedules" not in state and "optimizer" not in state
    assert state["last_epoch"] == 0 and state["base_lrs"] == [1.0]


def test_composes_with_sequential_lr():
    # our warm-up for 5 steps, then torch's ExponentialLR
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    warm = ScheduleLR(opt, LinearWarmup(warmup_steps=5, init=0.2))
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[5])
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        seq.step()
    expected = [0.1 * (0.2 + 0.8 * t / 5) for t in range(5)] + [0.1, 0.05, 0.025]
    assert lrs == pytest.approx(expected)


def test_as_second_stage_of_sequential_lr_restarts_at_zero():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    const = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=3)
    cosine = CosineDecay(total_steps=4)
    ours = ScheduleLR(opt, cosine)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [const, ours], milestones=[3])
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        seq.step()
    assert lrs == pytest.approx([0.5, 0.5, 0.5] + [cosine(t) for t in range(5)])


def test_bad_arguments():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    with pytest.raises(ValueError, match="schedules"):
        ScheduleLR(opt, [LinearDecay(total_steps=3)] * 2)
    with pytest.raises(ValueError, match="schedules"):
        ScheduleLR(opt, [0.5])
    with pytest.raises(ValueError, match="multiply"):
        ScheduleLR(opt, LinearDecay(total_steps=3), multiply=1)


def test_gradkit_optimizer_steps_with_the_scheduled_lr():
    # loss = <c, w>: plain SGD moves w by -lr_t * c, so the steps reveal the lr actually used
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = gradkit.optim.SGD([w], lr=0.2)
    schedule = CosineDecay(total_steps=6, warmup_steps=2, final=0.1)
    sched = ScheduleLR(opt, schedule)
    for t in range(7):
        before = w.detach().clone()
        opt.zero_grad()
        (c * w).sum().backward()
        opt.step()
        sched.step()
        torch.testing.assert_close(w.detach() - before, -0.2 * schedule(t) * c)


def test_tensor_learning_rate():
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01))
    sched = ScheduleLR(opt, LinearDecay(total_steps=4))
    for _ in range(2):
        opt.step()
        sched.step()
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(0.005)
