"""The induced-metric optimiser: natural gradient under I + xi grad grad^T, global norm."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.induced_metric import InducedMetric
from reference import sign_misc as ref
from support.harness import grad_sequence, make_params

GROUP_HP = [
    {"momentum": 0.9, "xi": 0.1, "beta": 0.8, "weight_decay": 0.0},
    {"momentum": 0.5, "xi": 0.3, "beta": 0.0, "weight_decay": 0.2},
]


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_reference_over_two_groups_with_state(rms: bool, maximize: bool) -> None:
    params = make_params()
    ref_params = [p.detach().clone() for p in params]
    groups = [{"params": params[:2], **GROUP_HP[0]}, {"params": params[2:], **GROUP_HP[1]}]
    opt = InducedMetric(groups, lr=0.05, rms=rms, maximize=maximize)
    base = {"lr": 0.05, "rms": rms, "beta_rms": 0.99, "eps": 1e-8, "maximize": maximize}
    hps = [{**base, **GROUP_HP[0]}] * 2 + [{**base, **GROUP_HP[1]}] * 2
    states: list[dict] = [{} for _ in params]
    for t, grads in enumerate(grad_sequence(6), start=1):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        ref.induced_metric(ref_params, [g.clone() for g in grads], states, t, hps)
        for p, rp, st in zip(params, ref_params, states, strict=True):
            torch.testing.assert_close(p.detach(), rp, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(opt.state[p]["induced_metric.exp_avg"], st["m"])
            assert opt.state[p]["induced_metric.metric_ema"].item() == pytest.approx(st["s"])


def test_plain_natural_gradient_step_uses_the_global_norm() -> None:
    """momentum = 0, beta = 0, xi = 1: theta <- theta - lr g / (1 + |g|^2), |g| over all tensors."""
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = InducedMetric([{"params": [a]}, {"params": [b]}], lr=1.0, momentum=0.0, beta=0.0, xi=1.0)
    a.grad = torch.tensor([1.0, 2.0], dtype=torch.float64)
    b.grad = torch.tensor([3.0], dtype=torch.float64)  # |g|^2 = 1 + 4 + 9 = 14
    opt.step()
    torch.testing.assert_close(a.detach(), -a.grad / 15)
    torch.testing.assert_close(b.detach(), -b.grad / 15)


def test_a_steep_tensor_slows_every_other_tensor() -> None:
    """The metric is the whole landscape's: a larger gradient elsewhere shrinks this step."""

    def step_of_a(b_grad: float) -> torch.Tensor:
        a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = InducedMetric([a, b], lr=1.0)
        a.grad = torch.tensor([0.1, -0.2], dtype=torch.float64)
        b.grad = torch.tensor([b_grad], dtype=torch.float64)
        opt.step()
        return a.detach().clone()

    calm, steep = step_of_a(0.1), step_of_a(10.0)
    assert torch.all(steep.abs() < 0.2 * calm.abs())
    assert torch.equal(torch.sign(steep), torch.sign(calm))


def test_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["InducedMetric"]
    assert info.year == 2025 and "2509.03594" in info.url
    assert info.state_bytes_per_param == 4.0
    assert (info.defaults["lr"], info.defaults["xi"], info.defaults["beta"]) == (0.1, 0.1, 0.8)
