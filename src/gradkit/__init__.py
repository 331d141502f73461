"""gradkit: everything that happens to a gradient between ``backward()`` and the update.

The public API is flat: ``gradkit.chain``, ``gradkit.scale_by_lr``, ``gradkit.optim.AdamW``, ...
"""

from gradkit import optim
from gradkit.core import (
    NONFINITE_POLICIES,
    Chain,
    ChainOptimizer,
    Context,
    GroupTransform,
    NonFiniteGradientError,
    Segment,
    SpikeGuard,
    StepGuard,
    Transform,
    add_decayed_weights,
    add_l2,
    chain,
    maximize,
    scale,
    scale_by_lr,
    trace,
    when,
)
from gradkit.optim import scale_by_adam
from gradkit.safe_step import SafeStep, binary_exact_radius, logit_range_radius, softmax_radius
from gradkit.transforms import (
    apply_if_finite,
    cautious,
    newton_schulz,
    orthogonalize,
    scale_by_trust_ratio,
)

__version__ = "0.1.0"

__all__ = [
    "NONFINITE_POLICIES",
    "Chain",
    "ChainOptimizer",
    "Context",
    "GroupTransform",
    "NonFiniteGradientError",
    "SafeStep",
    "Segment",
    "SpikeGuard",
    "StepGuard",
    "Transform",
    "__version__",
    "add_decayed_weights",
    "binary_exact_radius",
    "logit_range_radius",
    "apply_if_finite",
    "add_l2",
    "cautious",
    "chain",
    "maximize",
    "newton_schulz",
    "optim",
    "orthogonalize",
    "scale",
    "scale_by_adam",
    "scale_by_lr",
    "scale_by_trust_ratio",
    "softmax_radius",
    "trace",
    "when",
]
