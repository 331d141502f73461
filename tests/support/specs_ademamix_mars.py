"""Contract specs for AdEMAMix and MARS.

The AdEMAMix warm-ups are shorter than the 6 reference steps, so both the warm-up and the constant
phase of alpha(t) and beta3(t) are compared; one configuration has beta1 = 0 (no fast buffer,
beta3 warm-up from a half-life of 0). MARS's exact form needs a second gradient per step and is
checked against the reference in tests/optim/test_mars.py.
"""

from gradkit.optim.ademamix import AdEMAMix
from gradkit.optim.mars import MARS
from reference import ademamix_mars as ref
from support.harness import BAD_COMMON, Spec

BAD_EPS = [({"eps": 0.0}, "eps"), ({"eps": -1e-8}, "eps")]
BAD_ADEMAMIX = [
    *BAD_COMMON,
    *BAD_EPS,
    ({"betas": (1.0, 0.999, 0.9999)}, "index 0"),
    ({"betas": (0.9, -0.1, 0.9999)}, "index 1"),
    ({"betas": (0.9, 0.999, 1.0)}, "index 2"),
    ({"betas": (0.9, 0.999)}, "betas"),
    ({"alpha": -1.0}, "alpha"),
    ({"alpha": float("inf")}, "alpha"),
    ({"alpha_warmup": 0}, "alpha_warmup"),
    ({"alpha_warmup": -5}, "alpha_warmup"),
    ({"beta3_warmup": 0}, "beta3_warmup"),
    ({"beta3_warmup": float("nan")}, "beta3_warmup"),
]
BAD_MARS = [
    *BAD_COMMON,
    *BAD_EPS,
    ({"betas": (1.0, 0.99)}, "index 0"),
    ({"betas": (0.95, 1.5)}, "index 1"),
    ({"gamma": -0.1}, "gamma"),
    ({"exact": 1}, "exact"),
    ({"optimize_1d": "yes"}, "optimize_1d"),
    ({"lr_1d": -1e-3}, "lr_1d"),
    ({"betas_1d": (0.9, 1.0)}, "betas_1d"),
    ({"betas_1d": (0.9,)}, "betas_1d"),
    ({"weight_decay_1d": -0.1}, "weight_decay_1d"),
]

ADEMAMIX_STATE = {
    "ademamix.exp_avg_fast": "m1",
    "ademamix.exp_avg_slow": "m2",
    "ademamix.exp_avg_sq": "nu",
}
ADEMAMIX_NO_FAST = {k: v for k, v in ADEMAMIX_STATE.items() if v != "m1"}
MARS_STATE = {"mars.exp_avg": "m", "mars.exp_avg_sq": "v"}

SPECS = [
    Spec(AdEMAMix, dict(lr=0.01), ref.ademamix, ADEMAMIX_STATE, BAD_ADEMAMIX,
         converge=dict(lr=0.02, rosen_lr=0.01)),
    Spec(AdEMAMix, dict(lr=0.01, betas=(0.9, 0.999, 0.999), alpha=8.0, alpha_warmup=4,
                        beta3_warmup=4, weight_decay=0.1), ref.ademamix, ADEMAMIX_STATE,
         converge=dict(lr=0.02, weight_decay=0.0, alpha_warmup=500, beta3_warmup=500,
                       rosen_lr=0.01)),
    Spec(AdEMAMix, dict(lr=0.01, betas=(0.0, 0.999, 0.99), alpha_warmup=3, beta3_warmup=5,
                        maximize=True), ref.ademamix, ADEMAMIX_NO_FAST),
    Spec(MARS, dict(lr=0.01), ref.mars, MARS_STATE, BAD_MARS,
         converge=dict(lr=0.02, optimize_1d=True, rosen_lr=0.01)),
    Spec(MARS, dict(lr=0.01, optimize_1d=True, gamma=0.5, weight_decay=0.1, maximize=True),
         ref.mars, {**MARS_STATE, "mars.last_grad": "g_prev"},
         converge=dict(lr=0.02, weight_decay=0.0, maximize=False, rosen_lr=0.01)),
    Spec(MARS, dict(lr=0.01, gamma=1.0, weight_decay=0.1, lr_1d=0.02, betas_1d=(0.8, 0.9),
                    weight_decay_1d=0.05), ref.mars, MARS_STATE,
         converge=dict(lr=0.02, weight_decay=0.0, lr_1d=0.02, weight_decay_1d=0.0, rosen_lr=0.01)),
]  # fmt: skip
