"""gradkit.multitask.backward on a small two-head model vs a manual computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.multitask import MGDA, Mean, PCGrad, Sum, UPGrad, backward, jacobian


def _model_and_losses(seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh()).double()
    heads = [nn.Linear(5, 1).double(), nn.Linear(5, 2).double()]
    x = torch.randn(8, 4, dtype=torch.float64)
    y1, y2 = torch.randn(8, 1, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    feats = trunk(x)
    losses = [((heads[0](feats) - y1) ** 2).mean(), ((heads[1](feats) - y2) ** 2).mean()]
    return trunk, heads, losses


def _manual(trunk, heads, losses, aggregator):
    shared = list(trunk.parameters())
    rows, own = [], []
    for loss, head in zip(losses, heads, strict=False):
        grads = torch.autograd.grad(loss, shared + list(head.parameters()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        own.append(grads[len(shared) :])
    d = aggregator(torch.stack(rows))
    out, offset = [], 0
    for p in shared:
        out.append(d[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out, own, torch.stack(rows)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("aggregator", [Mean(), UPGrad(), MGDA(), PCGrad(generator=0)], ids=repr)
def test_backward_matches_manual(aggregator, batched):
    trunk, heads, losses = _model_and_losses()
    expected_shared, expected_own, expected_jac = _manual(trunk, heads, losses, aggregator)
    jac = backward(
        losses,
        trunk.parameters(),
        aggregator,
        task_params=[h.parameters() for h in heads],
        batched=batched,
    )
    torch.testing.assert_close(jac, expected_jac)
    for p, g in zip(trunk.parameters(), expected_shared, strict=False):
        torch.testing.assert_close(p.grad, g)
    for head, grads in zip(heads, expected_own, strict=False):
        for p, g in zip(head.parameters(), grads, strict=False):
            torch.testing.assert_close(p.grad, g)


def test_sum_equals_plain_backward_and_accumulates():
    trunk, heads, losses = _model_and_losses(1)
    sum(losses).backward(retain_graph=True)
    reference = [
        p.grad.clone()
        for p in [*trunk.parameters(), *heads[0].parameters(), *heads[1].parameters()]
    ]
    for p in [*trunk.parameters(), *heads[0].parameters(), *heads[1].parameters()]:
        p.grad = None
    backward(
        losses,
        trunk.parameters(),
        Sum(),
        task_params=[h.parameters() for h in heads],
        retain_graph=True,
    )
    params = [*trunk.parameters(), *heads[0].parameters(), *heads[1].parameters()]
    for p, g in zip(params, reference, strict=False):
        torch.testing.assert_close(p.grad, g)
    # a second call adds to .grad like Tensor.backward
    backward(losses, trunk.parameters(), Sum(), task_params=[h.parameters() for h in heads])
    for p, g in zip(params, reference, strict=False):
        torch.testing.assert_close(p.grad, 2 * g)


def test_task_params_get_only_their_task_gradient():
    trunk, heads, losses = _model_and_losses(2)
    backward(losses, trunk.parameters(), Mean(), task_params=[h.parameters() for h in heads])
    _trunk2, heads2, losses2 = _model_and_losses(2)
    g0 = torch.autograd.grad(losses2[0], list(heads2[0].parameters()))
    for p, g in zip(heads[0].parameters(), g0, strict=False):
        torch.testing.assert_close(p.grad, g)  # not the mean-weighted 0.5 * g


def test_batched_jacobian_equals_loop():
    trunk, _heads, losses = _model_and_losses(3)
    params = list(trunk.parameters())
    loop = jacobian(losses, params, retain_graph=True)
    torch.testing.assert_close(jacobian(losses, params, batched=True), loop)
    assert loop.shape == (2, sum(p.numel() for p in params))


def test_unused_shared_parameter_gets_zero_row_entries():
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float64, requires_grad=True)
    jac = backward([(w**2).sum(), w.sum()], [w, unused], Sum())
    torch.testing.assert_close(jac[:, 3:], torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(unused.grad, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(w.grad, 2 * w.detach() + 1)


def test_bad_inputs():
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="losses is empty"):
        backward([], [w], Mean())
    with pytest.raises(ValueError, match="task_params has 1 lists"):
        backward([w.sum(), w.prod()], [w], Mean(), task_params=[[]])
    with pytest.raises(ValueError, match="appears twice"):
        backward([w.sum()], [w], Mean(), task_params=[[w]])
    with pytest.raises(ValueError, match="scalar"):
        backward([w * 2], [w], Mean())
