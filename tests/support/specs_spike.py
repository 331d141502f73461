"""Contract specs for SPAM and Stable-SPAM (resets, clips and warm-ups fall inside the 6 steps)."""

from gradkit.optim.spam import SPAM, StableSPAM
from reference import spike as ref
from support.harness import BAD_BETAS_EPS, BAD_COMMON, Spec

SPAM_STATE = {"spam.exp_avg": "m", "spam.exp_avg_sq": "v"}
STABLE_STATE = {
    "adam.exp_avg": "m",
    "adam.exp_avg_sq": "v",
    "ada_clip.max_avg": "mmax",
    "ada_gn.norm_avg": "mu",
    "ada_gn.norm_sq_avg": "nu",
}
BAD_RESET = [
    ({"reset_interval": -1}, "reset_interval"),
    ({"reset_interval": 2.5}, "reset_interval"),
]
BAD_SPAM = [
    *BAD_COMMON,
    *BAD_BETAS_EPS,
    *BAD_RESET,
    ({"spam_threshold": -1.0}, "spam_threshold"),
    ({"spam_threshold": float("nan")}, "spam_threshold"),
    ({"spam_clip_delay": -1}, "spam_clip_delay"),
    ({"spam_clip_delay": True}, "spam_clip_delay"),
    ({"reset_warmup_steps": 1.5}, "reset_warmup_steps"),
]
BAD_STABLE = [
    *BAD_COMMON,
    *BAD_BETAS_EPS,
    *BAD_RESET,
    ({"ada_gn_gamma1": 1.0}, "ada_gn_gamma1"),
    ({"ada_gn_gamma2": -0.1}, "ada_gn_gamma2"),
    ({"ada_clip_gamma3": 1.5}, "ada_clip_gamma3"),
]

SPECS = [
    # clipping from step 2 (beta2=0.99, theta=50 clips often), reset at 4, warm-up over 3 steps
    Spec(SPAM, dict(lr=0.01, betas=(0.9, 0.99), spam_threshold=50.0, reset_interval=4,
                    reset_warmup_steps=3, spam_clip_delay=2), ref.spam, SPAM_STATE, BAD_SPAM),
    Spec(SPAM, dict(lr=0.01, weight_decay=0.1, maximize=True, spam_threshold=5.0,
                    reset_interval=3, reset_warmup_steps=10, spam_clip_delay=1), ref.spam,
         SPAM_STATE),
    Spec(SPAM, dict(lr=0.01, spam_threshold=0.0, reset_interval=0), ref.spam, SPAM_STATE),
    Spec(SPAM, dict(lr=0.01), ref.spam, SPAM_STATE, converge=dict(lr=0.05)),
    Spec(StableSPAM, dict(lr=0.01, reset_interval=3), ref.stable_spam, STABLE_STATE, BAD_STABLE),
    Spec(StableSPAM, dict(lr=0.01, weight_decay=0.1, maximize=True, ada_gn_gamma1=0.5,
                          ada_gn_gamma2=0.99, ada_clip_gamma3=0.9, reset_interval=4),
         ref.stable_spam, STABLE_STATE),
    Spec(StableSPAM, dict(lr=0.01, eps=1e-6, reset_interval=0), ref.stable_spam, STABLE_STATE),
    # AdaGN hands Adam unit-norm gradients, so v does not shrink near the optimum: smaller lr
    Spec(StableSPAM, dict(lr=0.01), ref.stable_spam, STABLE_STATE, converge=dict(lr=0.01)),
]  # fmt: skip
