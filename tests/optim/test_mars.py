"""MARS: the exact form against the reference fed with gradients at the previous parameters, the
approximate form's stored gradient being a copy, gamma = 0 being AdamW on the clipped gradient,
and the per-group AdamW fallback for parameters that are not 2-D."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from gradkit.core import NonFiniteGradientError
from gradkit.optim.mars import MARS
from reference import ademamix_mars as ref

F64 = torch.float64


def _batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, 2, generator=g, dtype=F64))
            for _ in range(n)]  # fmt: skip


def _init_params(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)]


def _loss(params, batch):
    (w, b), (x, y) = params, batch
    return 0.5 * ((x @ w.T + b - y) ** 2).sum()


def _grads_at(params, batch):
    leaves = [p.detach().clone().requires_grad_() for p in params]
    return list(torch.autograd.grad(_loss(leaves, batch), leaves))


def _backward(params, batch):
    _loss(params, batch).backward()


def _run_exact(batches, **kwargs):
    params = [p.requires_grad_() for p in _init_params()]
    opt = MARS(params, exact=True, **kwargs)
    history = []
    for t, batch in enumerate(batches):
        if t + 1 < len(batches):
            opt.zero_grad()
            _backward(params, batches[t + 1])  # next batch at the current parameters
            opt.record_next_grad()
        opt.zero_grad()
        _backward(params, batch)
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history, opt, params


def _reference_run(batches, hp, exact):
    params = _init_params()
    states: list[dict] = [{} for _ in params]
    previous = [p.clone() for p in params]
    history = []
    for t, batch in enumerate(batches, start=1):
        grads = _grads_at(params, batch)
        prev_grads = _grads_at(previous, batch)  # this batch at the previous parameters
        previous = [p.clone() for p in params]
        for p, g, st, pg in zip(params, grads, states, prev_grads, strict=True):
            st["prev_param_grad"] = pg
            ref.mars(p, g, st, t, {**hp, "exact": exact})
        history.append([p.clone() for p in params])
    return history


HP = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, gamma=0.5, lr_1d=0.02,
          betas_1d=(0.8, 0.9), weight_decay_1d=0.05, maximize=False)  # fmt: skip


@pytest.mark.parametrize("optimize_1d", [False, True])
def test_exact_form_matches_reference_with_previous_parameter_gradients(optimize_1d) -> None:
    batches = _batches(8)
    ours, _, _ = _run_exact(batches, optimize_1d=optimize_1d, **HP)
    expected = _reference_run(batches, {**HP, "optimize_1d": optimize_1d}, exact=True)
    approx = _reference_run(batches, {**HP, "optimize_1d": optimize_1d}, exact=False)
    for step, (a, b) in enumerate(zip(ours, expected, strict=True)):
        for p, q in zip(a, b, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10, msg=f"step {step + 1}")
    # the exact form really differs from the approximate one after the first step
    assert not torch.allclose(ours[-1][0], approx[-1][0], rtol=1e-6, atol=1e-8)
    assert torch.equal(expected[0][0], approx[0][0])


def test_exact_form_without_a_recording_raises_and_the_last_step_needs_none() -> None:
    params = [p.requires_grad_() for p in _init_params()]
    batches = _batches(3)
    opt = MARS(params, exact=True)
    _backward(params, batches[0])
    opt.step()  # step 1 needs no previous-parameter gradient
    opt.zero_grad()
    _backward(params, batches[1])
    with pytest.raises(RuntimeError, match="record_next_grad"):
        opt.step()
    assert opt.state[params[0]]["step"].item() == 1  # nothing happened
    # the documented loop: its final step (no next batch) is fine
    history, opt, _ = _run_exact(_batches(3))
    assert len(history) == 3 and opt.state[opt.param_groups[0]["params"][0]]["step"].item() == 3


def test_exact_form_resumes_bit_exactly_from_a_checkpoint() -> None:
    batches = _batches(6)
    full, _, _ = _run_exact(batches, **HP)

    params = [p.requires_grad_() for p in _init_params()]
    opt = MARS(params, exact=True, **HP)
    for t in range(3):
        opt.zero_grad()
        _backward(params, batches[t + 1])
        opt.record_next_grad()
        opt.zero_grad()
        _backward(params, batches[t])
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.detach().clone().requires_grad_() for p in params]
    fresh = MARS(resumed, exact=True, **HP)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for t in range(3, 6):
        if t + 1 < len(batches):
            fresh.zero_grad()
            _backward(resumed, batches[t + 1])
            fresh.record_next_grad()
        fresh.zero_grad()
        _backward(resumed, batches[t])
        fresh.step()
    for p, q in zip(resumed, full[-1], strict=True):
        assert torch.equal(p.detach(), q)


def test_exact_form_nonfinite_recording() -> None:
    params = [p.requires_grad_() for p in _init_params()]
    batches = _batches(3)
    opt = MARS(params, exact=True, nonfinite="raise", gamma=0.5)
    params[0].grad = torch.full((2, 3), float("nan"), dtype=F64)
    with pytest.raises(NonFiniteGradientError, match="record_next_grad"):
        opt.record_next_grad()
    assert not opt.state[params[0]]  # nothing recorded, no state created

    # under "skip" the recording is kept, and the step using it applies no correction there
    skip = MARS(params, exact=True, gamma=0.5, lr=0.05)
    plain = [p.detach().clone().requires_grad_() for p in params]
    no_correction = MARS(plain, gamma=0.0, lr=0.05)
    for t in range(2):
        params[0].grad = torch.full((2, 3), float("inf") if t == 0 else 1.0, dtype=F64)
        params[1].grad = torch.ones(2, dtype=F64)
        if t == 0:
            with pytest.warns(RuntimeWarning, match="no MARS correction"):
                skip.record_next_grad()  # used by step 2
        else:
            skip.record_next_grad()
        for opt_, ps in ((skip, params), (no_correction, plain)):
            opt_.zero_grad()
            _backward(ps, batches[t])
            opt_.step()
    for p, q in zip(params, plain, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(skip.state[params[0]]["mars.exp_avg"]).all()


def test_approximate_form_stores_a_copy_of_the_previous_gradient() -> None:
    """With in-place zeroing (set_to_none=False) an aliased previous gradient would be zeroed,
    then equal the current gradient: MARS would collapse to AdamW. Ours matches the reference."""
    batches = _batches(6)
    params = [p.requires_grad_() for p in _init_params()]
    opt = MARS(params, optimize_1d=True, **HP)
    for batch in batches:
        opt.zero_grad(set_to_none=False)  # p.grad kept and zeroed in place
        _backward(params, batch)
        opt.step()
    last = opt.state[params[0]]["mars.last_grad"]
    assert last.data_ptr() != params[0].grad.data_ptr()
    kept = last.clone()
    params[0].grad.zero_()
    assert torch.equal(last, kept) and last.abs().sum() > 0

    expected = _reference_run(batches, {**HP, "optimize_1d": True}, exact=False)
    for p, q in zip(params, expected[-1], strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-10)


def _clip(g: torch.Tensor) -> torch.Tensor:
    return g / max(1.0, torch.linalg.vector_norm(g).item())


@pytest.mark.parametrize("scale", [0.05, 5.0], ids=["unclipped", "clipped"])
def test_gamma_zero_is_adamw_on_the_clipped_gradient(scale) -> None:
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,)]
    ours = [torch.randn(s, generator=gen, dtype=F64, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = MARS(ours, lr=0.01, betas=(0.9, 0.95), weight_decay=0.1, gamma=0.0, optimize_1d=True)
    adamw = torch.optim.AdamW(theirs, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(10):
        grads = [scale * torch.randn(s, generator=gen, dtype=F64) for s in shapes]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), _clip(g)
        opt.step()
        adamw.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)


def test_first_step_applies_no_correction() -> None:
    a = torch.ones(3, 3, dtype=F64, requires_grad=True)
    b = torch.ones(3, 3, dtype=F64, requires_grad=True)
    opt_a, opt_b = MARS([a], gamma=1.0), MARS([b], gamma=0.0)
    a.grad = b.grad = torch.full((3, 3), 0.1, dtype=F64)
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)
    a.grad, b.grad = torch.full((3, 3), 0.2, dtype=F64), torch.full((3, 3), 0.2, dtype=F64)
    opt_a.step()
    opt_b.step()
    assert not torch.equal(a, b)


def test_fallback_reads_its_hyperparameters_per_group() -> None:
    gen = torch.Generator().manual_seed(4)
    biases = [torch.randn(6, generator=gen, dtype=F64, requires_grad=True) for _ in range(2)]
    settings = [dict(lr_1d=0.02, betas_1d=(0.8, 0.9), weight_decay_1d=0.0),
                dict(lr_1d=0.005, betas_1d=(0.5, 0.99), weight_decay_1d=0.3)]  # fmt: skip
    opt = MARS([{"params": [b], **s} for b, s in zip(biases, settings, strict=True)], lr=0.1)
    copies = [b.detach().clone().requires_grad_() for b in biases]
    adamws = [torch.optim.AdamW([c], lr=s["lr_1d"], betas=s["betas_1d"], eps=1e-8,
                                weight_decay=s["weight_decay_1d"])
              for c, s in zip(copies, settings, strict=True)]  # fmt: skip
    for _ in range(5):
        for b, c in zip(biases, copies, strict=True):
            g = torch.randn(6, generator=gen, dtype=F64)
            b.grad, c.grad = g.clone(), g.clone()
        opt.step()
        for adamw in adamws:
            adamw.step()
    for b, c in zip(biases, copies, strict=True):
        torch.testing.assert_close(b.detach(), c.detach(), rtol=1e-12, atol=1e-12)
    assert opt.state[biases[0]]["mars.last_grad"].numel() == 0  # no correction buffer


def test_lr_1d_follows_the_learning_rate_schedule() -> None:
    bias = torch.ones(4, dtype=F64, requires_grad=True)
    copy = bias.detach().clone().requires_grad_()
    opt = MARS([bias], lr=0.1, lr_1d=0.02, weight_decay_1d=0.0)
    adamw = torch.optim.AdamW([copy], lr=0.02, betas=(0.9, 0.95), weight_decay=0.0)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.5**k) for o in (opt, adamw)]
    gen = torch.Generator().manual_seed(5)
    for _ in range(4):
        g = torch.randn(4, generator=gen, dtype=F64)
        bias.grad, copy.grad = g.clone(), g.clone()
        opt.step()
        adamw.step()
        for s in schedules:
            s.step()
    torch.testing.assert_close(bias.detach(), copy.detach(), rtol=1e-12, atol=1e-12)


def test_structural_options_cannot_be_switched_on_later() -> None:
    w = torch.ones(3, dtype=F64, requires_grad=True)
    opt = MARS([w])
    w.grad = torch.ones(3, dtype=F64)
    opt.step()
    opt.param_groups[0]["optimize_1d"] = True
    with pytest.raises(ValueError, match="optimize_1d"):
        opt.step()
    m = torch.ones(2, 2, dtype=F64, requires_grad=True)
    opt = MARS([m])
    m.grad = torch.ones(2, 2, dtype=F64)
    opt.step()
    opt.param_groups[0]["exact"] = True
    with warnings.catch_warnings(), pytest.raises(ValueError, match="exact"):
        opt.record_next_grad()
