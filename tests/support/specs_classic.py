"""Contract specs for the torch.optim classics."""

import gradkit.optim as go
from reference import classic as ref
from support.harness import BAD_BETAS_EPS, BAD_COMMON, Spec

ADAM_STATE = {"adam.exp_avg": "m", "adam.exp_avg_sq": "v"}
BAD_ADAM = [*BAD_COMMON, *BAD_BETAS_EPS]

SPECS = [
    Spec(go.SGD, dict(lr=0.1), ref.sgd, bad_args=BAD_COMMON, converge=dict(lr=0.05, rosen_lr=1e-3)),
    Spec(
        go.SGD,
        dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        ref.sgd,
        {"trace.momentum_buffer": "b"},
        bad_args=[({"momentum": -0.5}, "momentum"), ({"dampening": -1.0}, "dampening")],
        converge=dict(lr=0.01, weight_decay=0.0, rosen_lr=2e-4),
    ),
    Spec(
        go.SGD,
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
        ref.sgd,
        {"trace.momentum_buffer": "b"},
        bad_args=[({"nesterov": True, "momentum": 0.0}, "nesterov")],
    ),
    Spec(go.Adam, dict(lr=0.01), ref.adam, ADAM_STATE, BAD_ADAM, converge=dict(lr=0.05)),
    Spec(go.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True), ref.adam,
         {**ADAM_STATE, "adam.max_exp_avg_sq": "vmax"}, bad_args=[({"amsgrad": 1}, "amsgrad")]),
    Spec(go.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), ref.adam, ADAM_STATE),
    Spec(go.AdamW, dict(lr=0.01, maximize=True), ref.adamw,
         ADAM_STATE, BAD_ADAM, converge=dict(lr=0.05, weight_decay=0.0, maximize=False)),
    Spec(go.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True), ref.adamw,
         {**ADAM_STATE, "adam.max_exp_avg_sq": "vmax"}),
    Spec(go.NAdam, dict(lr=0.01, weight_decay=0.1), ref.nadam,
         {"nadam.exp_avg": "m", "nadam.exp_avg_sq": "v", "nadam.mu_product": "mu_prod"},
         [*BAD_ADAM, ({"momentum_decay": -1.0}, "momentum_decay")], converge=dict(lr=0.05, weight_decay=0.0)),
    Spec(go.NAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), ref.nadam,
         {"nadam.exp_avg": "m", "nadam.exp_avg_sq": "v"}),
    Spec(go.RAdam, dict(lr=0.01, weight_decay=0.1), ref.radam,
         {"radam.exp_avg": "m", "radam.exp_avg_sq": "v"}, BAD_ADAM,
         converge=dict(lr=0.05, weight_decay=0.0, rosen_lr=1e-2)),
    Spec(go.RAdam, dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.1, decoupled_weight_decay=True),
         ref.radam, {"radam.exp_avg": "m", "radam.exp_avg_sq": "v"}),
    Spec(go.Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1),
         ref.adagrad, {"adagrad.sum": "s"},
         [*BAD_COMMON, ({"lr_decay": -1.0}, "lr_decay"), ({"eps": 0.0}, "eps"),
          ({"initial_accumulator_value": -1.0}, "initial_accumulator_value")],
         converge=dict(lr=0.5, weight_decay=0.0, lr_decay=0.0, rosen_lr=1.0)),
    Spec(go.RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01), ref.rmsprop,
         {"rms.square_avg": "v", "rms.grad_avg": "gbar", "trace.momentum_buffer": "b"},
         [*BAD_COMMON, ({"alpha": 1.5}, "alpha"), ({"eps": 0.0}, "eps"), ({"momentum": -1.0}, "momentum")],
         converge=dict(lr=0.01, weight_decay=0.0, rosen_lr=1e-3)),
    Spec(go.RMSprop, dict(lr=0.01), ref.rmsprop, {"rms.square_avg": "v"}, converge=dict(lr=0.01)),
    # not centered, with momentum: the native kernel's configuration with a momentum buffer
    Spec(go.RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.01, alpha=0.9), ref.rmsprop,
         {"rms.square_avg": "v", "trace.momentum_buffer": "b"}),
]  # fmt: skip
