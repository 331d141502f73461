"""gradkit's classics take torch.optim's arguments and produce its numbers.

float32, 100 steps of a small MLP, parameters and state compared at 1e-6. The learning rates are
the methods' usual ones: at much larger rates this tiny problem turns chaotic and even torch's
own foreach and for-loop implementations drift apart by 1e-3.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import gradkit.optim as go

CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
    ("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(weight_decay=1e-2, amsgrad=True)),
    ("Adam", dict(weight_decay=1e-1, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=3e-3, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(weight_decay=1e-2)),
    ("NAdam", dict(weight_decay=1e-1, decoupled_weight_decay=True, momentum_decay=8e-3)),
    ("RAdam", dict()),
    ("RAdam", dict(weight_decay=1e-2)),
    ("RAdam", dict(weight_decay=1e-1, decoupled_weight_decay=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2, alpha=0.9)),
]

# gradkit state key -> torch state key
STATE_KEYS = {
    "trace.momentum_buffer": "momentum_buffer",
    "adam.exp_avg": "exp_avg",
    "adam.exp_avg_sq": "exp_avg_sq",
    "adam.max_exp_avg_sq": "max_exp_avg_sq",
    "nadam.exp_avg": "exp_avg",
    "nadam.exp_avg_sq": "exp_avg_sq",
    "nadam.mu_product": "mu_product",
    "radam.exp_avg": "exp_avg",
    "radam.exp_avg_sq": "exp_avg_sq",
    "adagrad.sum": "sum",
    "rms.square_avg": "square_avg",
    "rms.grad_avg": "grad_avg",
    "step": "step",
}


def _train(cls, kwargs, steps=100):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 3, generator=g)
    opt = cls(model.parameters(), **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}{k}" for n, k in CASES])
def test_matches_torch_optim_float32_100_steps(name, kwargs):
    ours, o_ours = _train(getattr(go, name), kwargs)
    theirs, o_theirs = _train(getattr(torch.optim, name), kwargs)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        for key, value in o_ours.state[p].items():
            if key == "step" and "step" not in o_theirs.state[q]:
                continue  # torch's SGD keeps no step count
            torch.testing.assert_close(
                value.float(), o_theirs.state[q][STATE_KEYS[key]].float(), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adagrad", "RMSprop"])
def test_same_arguments_and_defaults_as_torch(name):
    ours = inspect.signature(getattr(go, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for arg, param in theirs.items():
        assert arg in ours, f"{name} lacks torch argument {arg!r}"
        if param.default is not inspect.Parameter.empty and arg not in ("foreach", "fused"):
            assert ours[arg].default == param.default, arg
    extra = set(ours) - set(theirs)
    assert extra <= {"transforms", "nonfinite", "state_dtype"}, extra
