"""Contract specs for the orthogonalized family: Muon, AuON and Drop-Muon.

The harness's shapes are (5, 4) and (3, 2, 2) (matrices: the 3-D tensor is flattened to 3 x 4,
as conv weights are) and (7,), (1,) (the AdamW fallback), so every configuration runs both paths.
The reference runs Newton-Schulz in float64, so the configurations compared at 1e-10 use
``ns_dtype=None`` (the default ``"auto"`` is float64 for these float64 parameters on CPU);
torch's bfloat16 iteration is compared at a bfloat16 tolerance.
The convergence problems are vectors, so they exercise the AdamW fallback; the matrix path's
convergence is tested in tests/optim/test_muon.py.
"""

from gradkit.optim.auon import AuON
from gradkit.optim.dropmuon import DropMuon
from gradkit.optim.muon import Muon
from reference import muon as ref
from support.harness import BAD_COMMON, Spec

STATE = {"momentum_buffer": "B", "exp_avg": "m", "exp_avg_sq": "v"}
MUON_STATE = {f"muon.{k}": v for k, v in STATE.items()}
AUON_STATE = {f"auon.{k}": v for k, v in STATE.items()}

BAD_FAMILY = [
    *BAD_COMMON,
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"nesterov": 1}, "nesterov"),
    ({"eps": 0.0}, "eps"),
    ({"adjust_lr_fn": "rms_to_rms"}, "adjust_lr_fn"),
    ({"adam_betas": (1.0, 0.9)}, "adam_betas"),
    ({"adam_betas": (0.9,)}, "adam_betas"),
    ({"adam_eps": 0.0}, "adam_eps"),
]
BAD_MUON = [
    *BAD_FAMILY,
    ({"ns_coefficients": "quintic"}, "ns_coefficients"),
    ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
    ({"ns_coefficients": (1.0, float("nan"), 2.0)}, "ns_coefficients"),
    ({"ns_steps": 0}, "ns_steps"),
    ({"ns_steps": 2.5}, "ns_steps"),
    ({"ns_dtype": "float16"}, "ns_dtype"),
    ({"use_muon": "yes"}, "use_muon"),
]
BAD_AUON = [
    *BAD_FAMILY,
    ({"gamma": 0.0}, "gamma"),
    ({"hybrid": 1}, "hybrid"),
    ({"ns_steps": 0}, "ns_steps"),
    ({"use_auon": 0}, "use_auon"),
]
CONVERGE = dict(lr=0.05, weight_decay=0.0, rosen_lr=0.02)

SPECS = [
    Spec(Muon, dict(lr=0.02, ns_dtype=None), ref.muon, MUON_STATE, BAD_MUON, converge=CONVERGE),
    Spec(Muon, dict(lr=0.01, weight_decay=0.05, nesterov=False, adjust_lr_fn="match_rms_adamw",
                    ns_coefficients="polar_express", ns_dtype="float64", maximize=True,
                    adam_betas=(0.8, 0.9), adam_eps=1e-8), ref.muon, MUON_STATE),
    Spec(Muon, dict(lr=0.01, ns_coefficients=[(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)], ns_steps=3,
                    ns_dtype=None), ref.muon, MUON_STATE),
    Spec(Muon, dict(lr=0.01, use_muon=False), ref.muon, MUON_STATE),
    # torch's bfloat16 Newton-Schulz against the float64 reference (bfloat16 tolerance)
    Spec(Muon, dict(lr=0.01, ns_dtype="bfloat16"), ref.muon, MUON_STATE, ref_tolerance=2e-3,
         id="Muon(bf16)"),
    Spec(AuON, dict(lr=0.05, weight_decay=0.1), ref.auon, AUON_STATE, BAD_AUON,
         converge=CONVERGE),
    Spec(AuON, dict(lr=0.05, hybrid=True, ns_steps=2, gamma=1.5, nesterov=False,
                    adjust_lr_fn="match_rms_adamw", maximize=True), ref.auon, AUON_STATE),
    Spec(AuON, dict(lr=0.05, hybrid=True), ref.auon, AUON_STATE),
    # every layer drawn at every step: exactly Muon
    Spec(DropMuon, dict(lr=0.02, ns_dtype=None, sampling="independent", update_prob=1.0),
         ref.muon, MUON_STATE, BAD_MUON),
    # real dropping; the reference with the replayed draws is in tests/optim/test_dropmuon.py
    Spec(DropMuon, dict(lr=0.02, seed=3), None, converge=CONVERGE),
    Spec(DropMuon, dict(lr=0.02, sampling="independent", update_prob=0.5, weight_decay=0.01,
                        maximize=True, seed=1), None),
]  # fmt: skip
