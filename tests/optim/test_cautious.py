"""Cautious masking: no coordinate moves against the current gradient; the rest are rescaled."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.lion import Lion
from gradkit.optim.signum import Signum
from gradkit.transforms.cautious import cautious


def test_hand_computed_example() -> None:
    """Momentum b2 = 0.9 * [1, 1, 1, 1] + g2 = [2.9, 0.4, -1.1, 0.9], g2 = [2, -0.5, -2, 0]:
    u * g = [5.8, -0.2, 2.2, 0] keeps coordinates 0 and 2 (a zero product is dropped);
    scale = dim / (nnz + 1) = 4 / 3."""
    chain = gradkit.chain(gradkit.trace(0.9), cautious(), gradkit.scale_by_lr(1.0))
    params = [torch.zeros(4, dtype=torch.float64)]
    state = chain.init(params)
    chain.update([torch.ones(4, dtype=torch.float64)], state, params)
    out = chain.update([torch.tensor([2.0, -0.5, -2.0, 0.0], dtype=torch.float64)], state, params)
    expected = -torch.tensor([2.9, 0.0, -1.1, 0.0], dtype=torch.float64) * 4 / 3
    torch.testing.assert_close(out[0], expected, rtol=1e-15, atol=0)


def _against_gradient(opt_factory, maximize: bool = False) -> tuple[int, int]:
    """(coordinates that moved against the descent gradient, coordinates that moved)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(40, 5, generator=gen, dtype=torch.float64).requires_grad_()
    opt = opt_factory([w])
    against = moved = 0
    for t in range(12):
        before = w.detach().clone()
        # a drifting mean so the momentum and the gradient often disagree
        w.grad = torch.randn(40, 5, generator=gen, dtype=torch.float64) + (1.0 if t < 4 else -0.7)
        opt.step()
        descent = -w.grad if maximize else w.grad
        delta = w.detach() - before
        against += int((delta * descent > 0).sum())
        moved += int((delta != 0).sum())
    return against, moved


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: Lion(p, lr=0.01, cautious=True),
        lambda p: Signum(p, lr=0.01, cautious=True),
        lambda p: gradkit.optim.Adam(p, lr=0.01, transforms=None),  # control, see below
    ],
    ids=["Lion", "Signum", "Adam-control"],
)
def test_no_coordinate_moves_against_the_gradient(factory) -> None:
    against, moved = _against_gradient(factory)
    is_control = isinstance(factory([torch.zeros(1, requires_grad=True)]), gradkit.optim.Adam)
    if is_control:
        assert against > 50  # the uncautious method does move against the gradient here
    else:
        assert against == 0 and moved > 100


def test_in_any_chain_with_maximize() -> None:
    """Adam + cautious as a custom chain; under maximize the mask uses the ascent direction."""

    def factory(params):
        chain = gradkit.chain(
            gradkit.maximize(True), gradkit.scale_by_adam(), cautious(), gradkit.scale_by_lr(0.01)
        )
        return gradkit.ChainOptimizer(params, chain, maximize=True)

    against, moved = _against_gradient(factory, maximize=True)
    assert against == 0 and moved > 100
    plain_against, _ = _against_gradient(lambda p: Lion(p, lr=0.01))
    assert plain_against > 50


def test_flag_is_per_group_and_validated() -> None:
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = Lion([{"params": [a], "cautious": True}, {"params": [b]}], lr=0.1)
    for g in ([1.0, 1.0, 1.0], [-1.0, 0.5, -0.05]):
        a.grad, b.grad = torch.tensor(g), torch.tensor(g)
        opt.step()
    # step 1: all kept, scale 3 / (3 + 1): a = 1 - 0.1 * 0.75 = 0.925; b = 0.9
    # step 2: c = 0.9 * 0.01 + 0.1 * g2 = [-0.091, 0.059, 0.004]; the last disagrees with g2 and
    # is dropped (b moves it), the others are kept with scale 3 / (2 + 1) = 1
    torch.testing.assert_close(b.detach(), torch.tensor([1.0, 0.8, 0.8]))
    torch.testing.assert_close(a.detach(), torch.tensor([1.025, 0.825, 0.925]))
    with pytest.raises(ValueError, match="cautious"):
        Lion([a], cautious="yes")
