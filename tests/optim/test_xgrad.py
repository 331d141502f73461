"""XGrad: gradients at the predicted weights, steps from the current ones (Guan et al.)."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.xgrad import XGrad
from reference import sign_misc as ref
from support.harness import checkpoint_roundtrip, quadratic_problem

A, B, _ = quadratic_problem(dim=6, seed=3)


def _grad(w: torch.Tensor) -> torch.Tensor:
    return A @ w - B


def _loss(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * w @ A @ w - B @ w


def _train(opt: XGrad, w: torch.Tensor, n: int, api: str) -> list[torch.Tensor]:
    out = []
    for _ in range(n):
        if api == "context":
            opt.zero_grad()
            with opt.predicted_weights():
                _loss(w).backward()
            opt.step()
        else:

            def closure():
                opt.zero_grad()
                loss = _loss(w)
                loss.backward()
                return loss

            opt.step(closure)
        out.append(w.detach().clone())
    return out


def _start() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)


@pytest.mark.parametrize("api", ["context", "closure"])
@pytest.mark.parametrize("s", [1, 2])
def test_sgd_momentum_matches_the_papers_equations(api: str, s: int) -> None:
    w = _start().requires_grad_()
    opt = XGrad([w], lr=0.05, base="SGD", momentum=0.9, dampening=0.1, steps_ahead=s)
    ours = _train(opt, w, 10, api)
    theirs = ref.xgrad_sgdm(_start(), _grad, 10, lr=0.05, momentum=0.9, dampening=0.1, s=s)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("base", "kwargs", "decoupled"),
    [
        ("Adam", {}, False),
        ("Adam", {"weight_decay": 0.1}, False),
        ("Adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}, True),
        ("AdamW", {"weight_decay": 0.1}, True),
    ],
)
def test_adam_family_matches_the_papers_equations(base, kwargs, decoupled) -> None:
    w = _start().requires_grad_()
    opt = XGrad([w], lr=0.02, base=base, steps_ahead=1, **kwargs)
    ours = _train(opt, w, 10, "closure")
    theirs = ref.xgrad_adam(_start(), _grad, 10, lr=0.02, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=kwargs.get("weight_decay", 0.0), decoupled=decoupled)  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_prediction_really_changes_the_run_and_zero_steps_ahead_is_the_base() -> None:
    w1, w2, w3 = (_start().requires_grad_() for _ in range(3))
    with_prediction = _train(XGrad([w1], lr=0.02), w1, 5, "closure")
    no_prediction = _train(XGrad([w2], lr=0.02, steps_ahead=0), w2, 5, "closure")
    base = gradkit.optim.AdamW([w3], lr=0.02)
    for _ in range(5):
        base.zero_grad()
        _loss(w3).backward()
        base.step()
    assert torch.equal(no_prediction[-1], w3.detach())
    assert not torch.allclose(with_prediction[-1], no_prediction[-1])


def test_weights_are_restored_exactly_and_misuse_is_refused() -> None:
    w = _start().requires_grad_()
    opt = XGrad([w], lr=0.1)
    _train(opt, w, 2, "closure")
    before = w.detach().clone()
    with opt.predicted_weights():
        assert not torch.equal(w.detach(), before)  # moved to the prediction
        with pytest.raises(RuntimeError, match="nested"), opt.predicted_weights():
            pass
        with pytest.raises(RuntimeError, match="inside predicted_weights"):
            opt.step()
    assert torch.equal(w.detach(), before)


def test_wrap_schedulers_and_resume_are_bit_exact() -> None:
    def make(w):
        inner = gradkit.optim.SGD([w], lr=0.05, momentum=0.9)
        opt = XGrad.wrap(inner, steps_ahead=2)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    w = _start().requires_grad_()
    opt, sched = make(w)
    full = []
    for _ in range(6):
        full += _train(opt, w, 1, "context")
        sched.step()

    w2 = _start().requires_grad_()
    opt2, sched2 = make(w2)
    for _ in range(3):
        _train(opt2, w2, 1, "context")
        sched2.step()
    saved_opt = checkpoint_roundtrip(opt2.state_dict())
    saved_sched = sched2.state_dict()
    assert saved_opt["param_groups"][0]["steps_ahead"] == 2
    w3 = w2.detach().clone().requires_grad_()
    opt3, sched3 = make(w3)
    opt3.param_groups[0]["steps_ahead"] = 7  # overwritten by the checkpoint
    opt3.load_state_dict(saved_opt)
    sched3.load_state_dict(saved_sched)
    for _ in range(3):
        last = _train(opt3, w3, 1, "context")[-1]
        sched3.step()
    assert torch.equal(last, full[-1])


def test_rejects_what_it_cannot_predict() -> None:
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="base"):
        XGrad([w], base="Lion")
    with pytest.raises(ValueError, match="nesterov"):
        XGrad([w], base="SGD", momentum=0.9, nesterov=True)
    with pytest.raises(TypeError, match="SGD, Adam or AdamW"):
        XGrad.wrap(torch.optim.SGD([w], lr=0.1))


def test_registry_entry() -> None:
    info = {i.name: i for i in gradkit.optim.available()}["XGrad"]
    assert info.year == 2024 and "2305.18240" in info.url
    assert info.defaults["base"] == "AdamW" and info.defaults["steps_ahead"] == 1
