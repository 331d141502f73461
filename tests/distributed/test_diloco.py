"""DiLoCo family on a one-process group against float64 references from the papers' equations."""

from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist

from gradkit.distributed import (
    ChunkTopK,
    DiLoCo,
    QuadraticSyncRule,
    SparseLoCo,
    StreamingDiLoCo,
    strided_fragments,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25], dtype=torch.float64)


@pytest.fixture
def group(tmp_path):
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(str(tmp_path / "store"), 1),
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=30),
    )
    yield
    dist.destroy_process_group()


def _model():
    model = torch.nn.Linear(6, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64).view(1, 6))
    return model


def _grad_of(w):
    return 2 * (w - TARGET) * torch.linspace(0.5, 2.0, 6, dtype=torch.float64)


def _inner_steps(outer, model, steps):
    for _ in range(steps):
        outer.zero_grad()
        model.weight.grad = _grad_of(model.weight.detach().view(-1)).view(1, 6).clone()
        outer.step()


def _reference_diloco(rounds, h, inner_lr, outer_lr, beta, nesterov=True):
    theta = [float(x) for x in torch.linspace(-1, 1, 6, dtype=torch.float64)]
    momentum = None
    for _ in range(rounds):
        local = theta[:]
        for _ in range(h):
            g = _grad_of(torch.tensor(local, dtype=torch.float64)).tolist()
            local = [w - inner_lr * gi for w, gi in zip(local, g, strict=True)]
        delta = [a - b for a, b in zip(theta, local, strict=True)]  # start - end
        momentum = (
            delta
            if momentum is None
            else [beta * m + d for m, d in zip(momentum, delta, strict=True)]
        )
        step = (
            [d + beta * m for d, m in zip(delta, momentum, strict=True)] if nesterov else momentum
        )
        theta = [t - outer_lr * s for t, s in zip(theta, step, strict=True)]
    return torch.tensor(theta, dtype=torch.float64)


@pytest.mark.parametrize("nesterov", [True, False])
def test_diloco_outer_nesterov_matches_reference(group, nesterov):
    model = _model()
    outer = DiLoCo(
        model, torch.optim.SGD(model.parameters(), lr=0.05), sync_every=3, nesterov=nesterov
    )
    _inner_steps(outer, model, 3 * 4)
    expected = _reference_diloco(4, 3, 0.05, 0.7, 0.9, nesterov)
    torch.testing.assert_close(model.weight.view(-1), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outer.globals["weight"].view(-1), expected, rtol=1e-12, atol=1e-12)
    assert outer.counters.dense_bytes_total == 12 * 6 * 8
    assert outer.counters.bytes_sent_total == 4 * 6 * 8


def test_sparseloco_error_feedback_replaces_momentum(group):
    model = _model()
    outer = SparseLoCo(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        sync_every=2,
        chunk_size=4,
        k=1,
        value_bits=None,
        decay=0.9,
        outer_lr=0.8,
    )
    _inner_steps(outer, model, 2 * 3)
    theta = torch.linspace(-1, 1, 6, dtype=torch.float64)
    error = torch.zeros(6, dtype=torch.float64)
    for _ in range(3):
        local = theta.clone()
        for _ in range(2):
            local = local - 0.05 * _grad_of(local)
        error = 0.9 * error + (theta - local)
        sent = torch.zeros(6, dtype=torch.float64)
        for start in (0, 4):  # chunks of 4 (the last one padded), top-1 by magnitude each
            chunk = error[start : start + 4]
            i = start + int(chunk.abs().argmax())
            sent[i] = error[i]
        error = error - sent
        theta = theta - 0.8 * sent
    torch.testing.assert_close(model.weight.view(-1), theta, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outer.codec.residuals["weight"].view(-1), error)


def test_streaming_mixes_local_and_global_with_alpha(group):
    model = _model()
    outer = StreamingDiLoCo(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        sync_every=2,
        fragments=1,
        overlap=0,
        alpha=0.25,
        codec=ChunkTopK(6, 6),
        outer_momentum=0.0,
    )
    _inner_steps(outer, model, 2)
    start = torch.linspace(-1, 1, 6, dtype=torch.float64)
    local = start - 0.05 * _grad_of(start)
    local = local - 0.05 * _grad_of(local)
    global_ = start - 0.7 * (start - local)
    torch.testing.assert_close(model.weight.view(-1), 0.25 * local + 0.75 * global_)


def test_quadratic_sync_rule_sets_the_period_from_the_lr(group):
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.5)
    rule = QuadraticSyncRule(inner, growth=1.0, base=2)  # H = max(2, (1/lr)^2)
    outer = DiLoCo(model, inner, sync_every=rule)
    syncs = []
    for step in range(1, 15):
        if step == 5:
            inner.param_groups[0]["lr"] = 1 / 3  # H becomes 9 from the next round on
        sent_before = outer.counters.bytes_sent_total
        _inner_steps(outer, model, 1)
        if outer.counters.bytes_sent_total > sent_before:
            syncs.append(step)
    # H = 4 while lr = 0.5 (syncs at 4 and 8); at the sync at step 8 the lr is 1/3, so H = 9
    assert syncs == [4, 8]
    assert outer.next_sync == 17 and rule() == 9


def test_strided_fragments_cover_every_parameter_once():
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "5.weight"]
    fragments = strided_fragments(names, 2)
    assert fragments == [["0.weight", "0.bias", "4.weight"], ["2.weight", "2.bias", "5.weight"]]
    with pytest.raises(ValueError, match="Invalid fragments: 9"):
        strided_fragments(names, 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sync_every": 0}, "Invalid sync_every: 0"),
        ({"outer_lr": 0.0}, "Invalid outer_lr"),
        ({"outer_momentum": 1.0}, "Invalid outer_momentum"),
        ({"alpha": 2.0}, "Invalid alpha"),
        ({"sync_every": 3, "fragments": [["weight"], []]}, "multiple of the 2 fragments"),
        ({"sync_every": 4, "overlap": 4}, "Invalid overlap: 4"),
        ({"fragments": [["weight", "weight"]]}, "Invalid fragments"),
        ({"timeout": -1.0}, "Invalid timeout"),
    ],
)
def test_bad_arguments(group, kwargs, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_counters_before_any_sync(group):
    model = _model()
    outer = DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.1), sync_every=5)
    _inner_steps(outer, model, 2)
    assert math.isinf(outer.counters.compression_ratio)
    assert outer.counters.dense_bytes_total == 2 * 6 * 8 and outer.counters.steps == 2
