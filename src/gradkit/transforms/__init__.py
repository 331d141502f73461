"""Generic gradient transforms, composable with ``gradkit.chain`` and any gradkit optimizer."""

from gradkit.transforms.basic import (
    add_decayed_weights,
    add_l2,
    maximize,
    scale,
    scale_by_lr,
    trace,
)
from gradkit.transforms.cautious import Cautious, cautious, cautious_if_flagged
from gradkit.transforms.finite import ApplyIfFinite, apply_if_finite
from gradkit.transforms.orthogonalize import (
    NS_PRESETS,
    Orthogonalize,
    as_matrix,
    newton_schulz,
    orthogonalize,
)
from gradkit.transforms.trust_ratio import ScaleByTrustRatio, scale_by_trust_ratio, trust_ratios

__all__ = [
    "ApplyIfFinite",
    "apply_if_finite",
    "NS_PRESETS",
    "Cautious",
    "Orthogonalize",
    "as_matrix",
    "cautious",
    "cautious_if_flagged",
    "newton_schulz",
    "orthogonalize",
    "ScaleByTrustRatio",
    "add_decayed_weights",
    "add_l2",
    "maximize",
    "scale",
    "scale_by_lr",
    "scale_by_trust_ratio",
    "trace",
    "trust_ratios",
]
