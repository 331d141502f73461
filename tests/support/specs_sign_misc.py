"""Contract specs for Lion, signSGD/Signum (with cautious masking), Gravity, the induced-metric
optimiser and XGrad.

signSGD (no momentum, so it rattles across Rosenbrock's valley) and Gravity (whose step vanishes
for gradients much larger than 1, as Rosenbrock's are) have their convergence tests in their own
test files, on problems they can solve.

Gravity's random initial velocity is compared with the reference in tests/optim/test_gravity.py
(here alpha = 0 starts from rest, or no reference). The induced-metric norm spans all parameters,
so its reference runs on the whole list in tests/optim/test_induced_metric.py. XGrad's contract
configurations run plain steps (the base optimizer's rule); its prediction is checked against the
paper's equations in tests/optim/test_xgrad.py.
"""

from gradkit.optim.gravity import Gravity
from gradkit.optim.induced_metric import InducedMetric
from gradkit.optim.lion import Lion
from gradkit.optim.signum import SignSGD, Signum
from gradkit.optim.xgrad import XGrad
from reference import classic
from reference import sign_misc as ref
from support.harness import BAD_COMMON, Spec

BAD_BETAS = [({"betas": (1.0, 0.99)}, "index 0"), ({"betas": (0.9, -0.1)}, "index 1"),
             ({"betas": (0.9,)}, "betas")]  # fmt: skip
BAD_CAUTIOUS = [({"cautious": 1}, "cautious")]
LION_STATE = {"lion.exp_avg": "m"}
SIGNUM_STATE = {"signum.exp_avg": "m"}
BAD_GRAVITY = [*BAD_COMMON[:2], *BAD_COMMON[3:], ({"alpha": -0.1}, "alpha"),
               ({"beta": 1.0}, "beta"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed")]  # fmt: skip
BAD_INDUCED = [*BAD_COMMON, ({"momentum": 1.0}, "momentum"), ({"xi": -1.0}, "xi"),
               ({"beta": 1.0}, "beta"), ({"rms": 1}, "rms"), ({"beta_rms": -0.5}, "beta_rms"),
               ({"eps": 0.0}, "eps")]  # fmt: skip
BAD_XGRAD = [*BAD_COMMON, ({"steps_ahead": -1}, "steps_ahead"),
             ({"steps_ahead": float("nan")}, "steps_ahead")]  # fmt: skip
ADAM_STATE = {"adam.exp_avg": "m", "adam.exp_avg_sq": "v"}

SPECS = [
    Spec(Lion, dict(lr=0.01), ref.lion, LION_STATE, [*BAD_COMMON, *BAD_BETAS, *BAD_CAUTIOUS],
         converge=dict(lr=3e-3, rosen_lr=2e-3)),
    Spec(Lion, dict(lr=0.01, betas=(0.95, 0.98), weight_decay=0.5, maximize=True), ref.lion,
         LION_STATE),
    Spec(Lion, dict(lr=0.01, weight_decay=0.3, cautious=True), ref.lion, LION_STATE,
         converge=dict(lr=3e-3, weight_decay=0.0, rosen_lr=2e-3)),
    Spec(SignSGD, dict(lr=0.01, weight_decay=0.2), ref.signsgd, {}, BAD_COMMON),
    Spec(Signum, dict(lr=0.01), ref.signum, SIGNUM_STATE,
         [*BAD_COMMON, ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
          *BAD_CAUTIOUS], converge=dict(lr=3e-3, rosen_lr=2e-3)),
    Spec(Signum, dict(lr=0.01, momentum=0.5, weight_decay=0.2, cautious=True, maximize=True),
         ref.signum, SIGNUM_STATE, converge=dict(lr=3e-3, momentum=0.9, weight_decay=0.0,
                                                 maximize=False, rosen_lr=2e-3)),
    Spec(Gravity, dict(lr=0.1, alpha=0.0), ref.gravity, {"gravity.velocity": "v"}, BAD_GRAVITY),
    Spec(Gravity, dict(lr=0.05, alpha=0.0, beta=0.5, maximize=True), ref.gravity,
         {"gravity.velocity": "v"}),
    Spec(Gravity, dict(lr=0.1, seed=3), None),
    Spec(InducedMetric, dict(lr=0.1), None, bad_args=BAD_INDUCED,
         converge=dict(lr=0.1, rosen_lr=1e-2)),
    Spec(InducedMetric, dict(lr=0.05, rms=True, weight_decay=0.1, maximize=True), None,
         converge=dict(lr=0.05, weight_decay=0.0, maximize=False, rosen_lr=1e-2)),
    Spec(XGrad, dict(lr=0.01, weight_decay=0.1), classic.adamw, ADAM_STATE, BAD_XGRAD,
         converge=dict(lr=0.05, weight_decay=0.0)),
    Spec(XGrad, dict(lr=0.05, base="SGD", momentum=0.9, weight_decay=0.01), classic.sgd,
         {"trace.momentum_buffer": "b"}, [({"momentum": 0.0}, "momentum")],
         converge=dict(lr=0.01, weight_decay=0.0, rosen_lr=2e-4)),
]  # fmt: skip
