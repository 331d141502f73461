"""AdamP/SGDP: the projection removes the radial component on scale-invariant weights, 1-D
parameters are never projected, and every branch (channel view, layer view, none) matches the
float64 reference."""

from __future__ import annotations

import collections

import pytest
import torch

import gradkit
from gradkit.optim.adamp import SGDP, AdamP, project_radial
from reference import adam_variants as ref
from support.harness import grad_sequence, make_params
from support.specs_adam_variants import SPECS

OPTIMIZERS = {
    "AdamP": (AdamP, dict(lr=0.05)),
    "SGDP": (SGDP, dict(lr=0.5, momentum=0.9, nesterov=True)),
}


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True)


def _scale_invariant_problem(seed: int = 0):
    """A weight used only through its row-normalized version (like a conv before BatchNorm):
    its gradient is orthogonal to every output channel."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(5, 32, generator=g, dtype=torch.float64)
    y = torch.randn(6, 32, generator=g, dtype=torch.float64)

    def loss():
        return ((_unit_rows(w) @ x - y) ** 2).mean()

    return w, loss


def _radial_cosines(w_before: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per output channel |cos(step, w)|."""
    return torch.nn.functional.cosine_similarity(delta, w_before, dim=1).abs()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_projected_update_is_orthogonal_to_each_channel(name: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    for delta, expect_projection in ((0.1, True), (0.0, False)):
        w, loss = _scale_invariant_problem()
        opt = cls([w], delta=delta, **kwargs)
        worst = 0.0
        for _ in range(8):
            opt.zero_grad()
            loss().backward()
            grad_cos = _radial_cosines(w.detach(), w.grad)
            assert grad_cos.max() < 1e-12  # the setup really is scale-invariant
            before = w.detach().clone()
            opt.step()
            worst = max(worst, _radial_cosines(before, w.detach() - before).max().item())
        if expect_projection:
            # what is left is the eps in w / (|w| + eps): relative 2 eps / |w|
            assert worst < 1e-7, worst
        else:
            # without projection the momentum / preconditioner step has a radial part
            assert worst > 1e-3, worst


def test_project_radial_helper_per_channel_and_layer() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    u = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    rows = w.reshape(4, -1)
    tangent = torch.randn(4, 6, generator=g, dtype=torch.float64)
    tangent -= (tangent * _unit_rows(rows)).sum(1, keepdim=True) * _unit_rows(rows)
    out, hit = project_radial(w, tangent.reshape(w.shape), u, delta=0.1, eps=1e-12)
    assert bool(hit)
    assert _radial_cosines(rows, out.reshape(4, -1)).max() < 1e-10
    # rows parallel to w but cancelling in the layer dot product: the layer view is used, so
    # the update is orthogonal to w as a whole, not channel by channel
    cancelling = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    grad = (cancelling * rows / (rows**2).sum(1, keepdim=True)).reshape(w.shape)
    out, hit = project_radial(w, grad, u, delta=0.1, eps=1e-12)
    assert bool(hit)
    assert abs(float((out * w).sum())) < 1e-10 * float(out.norm() * w.norm())
    assert _radial_cosines(rows, out.reshape(4, -1)).max() > 1e-2
    # gradient parallel to w: no projection, the update comes back unchanged
    out, hit = project_radial(w, w.clone(), u, delta=0.1, eps=1e-12)
    assert not bool(hit) and torch.equal(out, u)
    # a 1-D parameter is never projected, whatever its gradient
    v = torch.randn(5, generator=g, dtype=torch.float64)
    out, hit = project_radial(v, torch.zeros(5, dtype=torch.float64), v.clone(), 0.1, 1e-8)
    assert hit is None and torch.equal(out, v)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_one_dimensional_parameters_are_never_projected(name: str) -> None:
    cls, kwargs = OPTIMIZERS[name]
    wd = 0.1
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(7, generator=g, dtype=torch.float64).requires_grad_()
    plain = bias.detach().clone().requires_grad_()
    opt = cls([bias], weight_decay=wd, delta=10.0, **kwargs)  # delta so large every cos passes
    if cls is AdamP:
        twin = gradkit.optim.AdamW([plain], lr=kwargs["lr"], weight_decay=wd)
    buffer = torch.zeros(7, dtype=torch.float64)
    for _ in range(6):
        r = torch.randn(7, generator=g, dtype=torch.float64)
        unit = bias.detach() / bias.detach().norm()
        bias.grad = r - (r @ unit) * unit  # orthogonal to the bias: |cos| = 0
        plain.grad = bias.grad.clone()
        opt.step()
        if cls is AdamP:  # unprojected AdamP with wd_ratio 1 is AdamW
            twin.step()
        else:  # zero-initialized buffer, decay / (1 - momentum), no projection
            mu, lr = kwargs["momentum"], kwargs["lr"]
            buffer = mu * buffer + plain.grad
            with torch.no_grad():
                plain -= lr * (plain.grad + mu * buffer) + lr * wd / (1 - mu) * plain
        torch.testing.assert_close(bias, plain, rtol=1e-13, atol=1e-13)


def _crafted_grads(params: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
    """Gradients that send param 0 to the channel view, param 1 to the layer view and param 2
    to no projection."""
    channel_w, layer_w, none_w = (p.detach().reshape(p.shape[0], -1) for p in params)
    r = torch.randn(channel_w.shape, generator=g, dtype=torch.float64)
    channel = r - (r * _unit_rows(channel_w)).sum(1, keepdim=True) * _unit_rows(channel_w)
    # rows parallel to w with signs that cancel in the layer dot product: each channel has
    # |cos| ~ 1, the whole tensor has cos 0
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    layer = signs * layer_w / (layer_w**2).sum(1, keepdim=True)
    none = none_w + 0.1 * torch.randn(none_w.shape, generator=g, dtype=torch.float64)
    return [t.reshape(p.shape) for t, p in zip((channel, layer, none), params, strict=True)]


CRAFTED = [
    (AdamP, dict(lr=0.01, weight_decay=0.1, wd_ratio=0.2), ref.adamp),
    (AdamP, dict(lr=0.01, weight_decay=0.1, nesterov=True, maximize=True), ref.adamp),
    (SGDP, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1), ref.sgdp),
    (SGDP, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1), ref.sgdp),
]


@pytest.mark.parametrize(("cls", "kwargs", "reference"), CRAFTED)
def test_every_branch_matches_reference(cls, kwargs, reference) -> None:
    g = torch.Generator().manual_seed(11)
    shapes = [(4, 3, 2), (4, 5), (3, 4)]
    params = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    ref_params = [p.detach().clone() for p in params]
    ref_states: list[dict] = [{} for _ in params]
    opt = cls(params, **kwargs)
    hp = dict(opt.defaults)
    for t in range(1, 7):
        grads = _crafted_grads(params, g)
        for p, rp, grad, st in zip(params, ref_params, grads, ref_states, strict=True):
            p.grad = grad.clone()
            reference(rp, grad.clone(), st, t, hp)
        opt.step()
        for p, rp in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p.detach(), rp, rtol=1e-12, atol=1e-12)
    assert [set(st["views"]) for st in ref_states] == [{"channel"}, {"layer"}, {"none"}]


def test_contract_specs_exercise_every_branch() -> None:
    """The random-data contract specs with delta=1.0 hit all three branches (so the reference
    comparison in test_contract.py covers them)."""
    for spec in SPECS:
        if spec.cls not in (AdamP, SGDP) or spec.kwargs.get("delta") != 1.0:
            continue
        params = [p.detach() for p in make_params()]
        hp = dict(spec.make([p.clone().requires_grad_() for p in params]).defaults)
        states: list[dict] = [{} for _ in params]
        for t, grads in enumerate(grad_sequence(6), start=1):
            for p, grad, st in zip(params, grads, states, strict=True):
                spec.reference(p, grad, st, t, hp)
        views = collections.Counter(v for st in states for v in st["views"])
        assert set(views) == {"channel", "layer", "none"}, (spec.id, views)


def test_registry_entries() -> None:
    info = {i.name: i for i in gradkit.optim.available()}
    for name, floats in (("AdamP", 2), ("SGDP", 0)):
        assert info[name].year == 2021 and "2006.08217" in info[name].url
        assert info[name].state_bytes_per_param == 4.0 * floats
    assert "lr" not in info["SGDP"].defaults  # required, as in the official code
