"""Contract specs for diffGrad, AdamP/SGDP, Grams and AdaMomentum.

AdamP/SGDP use a large ``delta`` in some configurations: with the harness's random parameters and
gradients, ``delta=1.0`` makes the channel-view projection, the layer-view projection and no
projection all occur within the 6 reference steps (tests/optim/test_adamp.py asserts that), so the
reference comparison covers every branch.
"""

from gradkit.optim.adamomentum import AdaMomentum
from gradkit.optim.adamp import SGDP, AdamP
from gradkit.optim.diffgrad import DiffGrad
from gradkit.optim.grams import Grams
from reference import adam_variants as ref
from support.harness import BAD_BETAS_EPS, BAD_COMMON, Spec

BAD_EPS_PLACEMENT = [({"eps_placement": "paper"}, "eps_placement")]
BAD_PROJECTION = [
    ({"delta": -0.1}, "delta"),
    ({"wd_ratio": -1.0}, "wd_ratio"),
    ({"nesterov": 1}, "nesterov"),
]

DIFFGRAD_STATE = {
    "diffgrad.exp_avg": "m",
    "diffgrad.exp_avg_sq": "v",
    "diffgrad.previous_grad": "g_prev",
}
ADAMP_STATE = {"adamp.exp_avg": "m", "adamp.exp_avg_sq": "v"}
GRAMS_STATE = {"grams.exp_avg": "m", "grams.exp_avg_sq": "v"}
ADAMOMENTUM_STATE = {"adamomentum.exp_avg": "m", "adamomentum.exp_avg_var": "v"}

SPECS = [
    # diffGrad
    Spec(DiffGrad, dict(lr=0.01), ref.diffgrad, DIFFGRAD_STATE,
         [*BAD_COMMON, *BAD_BETAS_EPS, *BAD_EPS_PLACEMENT], converge=dict(lr=0.05, rosen_lr=0.02)),
    Spec(DiffGrad, dict(lr=0.01, weight_decay=0.1, eps=1e-3, eps_placement="uncorrected"),
         ref.diffgrad, DIFFGRAD_STATE, converge=dict(lr=0.05, weight_decay=0.0, rosen_lr=0.02)),
    Spec(DiffGrad, dict(lr=0.01, weight_decay=0.1, eps=1e-3, maximize=True), ref.diffgrad,
         DIFFGRAD_STATE),
    # AdamP
    Spec(AdamP, dict(lr=0.01), ref.adamp, ADAMP_STATE,
         [*BAD_COMMON, *BAD_BETAS_EPS, *BAD_PROJECTION], converge=dict(lr=0.05)),
    Spec(AdamP, dict(lr=0.01, weight_decay=0.1, delta=1.0), ref.adamp, ADAMP_STATE,
         converge=dict(lr=0.05, weight_decay=0.0, rosen_lr=0.02)),
    Spec(AdamP, dict(lr=0.01, weight_decay=0.1, delta=1.5, wd_ratio=0.3, nesterov=True,
                     betas=(0.8, 0.99), maximize=True), ref.adamp, ADAMP_STATE),
    # SGDP
    Spec(SGDP, dict(lr=0.1), ref.sgdp, {},
         [*BAD_COMMON, *BAD_PROJECTION, ({"eps": 0.0}, "eps"), ({"momentum": 1.0}, "momentum"),
          ({"momentum": -0.5}, "momentum"), ({"dampening": -1.0}, "dampening")],
         converge=dict(lr=0.05, rosen_lr=1e-3)),
    Spec(SGDP, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, delta=1.0),
         ref.sgdp, {"sgdp.momentum_buffer": "b"},
         converge=dict(lr=0.01, weight_decay=0.0, rosen_lr=2e-4)),
    Spec(SGDP, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, delta=1.5,
                    wd_ratio=0.5, maximize=True), ref.sgdp, {"sgdp.momentum_buffer": "b"}),
    Spec(SGDP, dict(lr=0.1, dampening=0.5, weight_decay=0.01, delta=1.0), ref.sgdp, {}),
    # Grams
    Spec(Grams, dict(lr=0.01), ref.grams, GRAMS_STATE,
         [*BAD_COMMON, *BAD_BETAS_EPS, *BAD_EPS_PLACEMENT], converge=dict(lr=0.05, rosen_lr=0.02)),
    Spec(Grams, dict(lr=0.01, weight_decay=0.1, eps=1e-3, eps_placement="uncorrected"),
         ref.grams, GRAMS_STATE, converge=dict(lr=0.05, weight_decay=0.0, rosen_lr=0.02)),
    Spec(Grams, dict(lr=0.01, weight_decay=0.1, eps=1e-3, maximize=True), ref.grams, GRAMS_STATE),
    # AdaMomentum
    Spec(AdaMomentum, dict(lr=0.01), ref.adamomentum, ADAMOMENTUM_STATE,
         [*BAD_COMMON, *BAD_BETAS_EPS, ({"amsgrad": 1}, "amsgrad"),
          ({"decoupled_weight_decay": "yes"}, "decoupled_weight_decay")],
         converge=dict(lr=0.05, rosen_lr=0.02)),
    Spec(AdaMomentum, dict(lr=0.01, weight_decay=0.1, amsgrad=True, eps=1e-4), ref.adamomentum,
         {**ADAMOMENTUM_STATE, "adamomentum.max_exp_avg_var": "vmax"}),
    Spec(AdaMomentum, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=False, eps=1e-4,
                           maximize=True), ref.adamomentum, ADAMOMENTUM_STATE),
]  # fmt: skip
