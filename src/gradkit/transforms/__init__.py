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
from gradkit.transforms.clipping import (
    adaptive_grad_clip,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_pixel_norm,
    clip_by_value,
    global_norm,
    limit_norm_growth,
    unitwise_norm,
)
from gradkit.transforms.finite import ApplyIfFinite, apply_if_finite
from gradkit.transforms.masking import OutputMagnitudes, drop_top_fraction, keep_top_fraction, migu
from gradkit.transforms.normalization import centralize, normalize
from gradkit.transforms.orthogonalize import (
    NS_PRESETS,
    Orthogonalize,
    as_matrix,
    newton_schulz,
    orthogonalize,
)
from gradkit.transforms.selection import labels_by_name, masked, partition
from gradkit.transforms.spike import (
    ada_clip,
    ada_gn,
    momentum_reset,
    post_reset_warmup,
    spam_clip,
)
from gradkit.transforms.trust_ratio import ScaleByTrustRatio, scale_by_trust_ratio, trust_ratios

__all__ = [
    "ApplyIfFinite",
    "Cautious",
    "NS_PRESETS",
    "Orthogonalize",
    "OutputMagnitudes",
    "ScaleByTrustRatio",
    "ada_clip",
    "ada_gn",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_l2",
    "apply_if_finite",
    "as_matrix",
    "cautious",
    "cautious_if_flagged",
    "centralize",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_pixel_norm",
    "clip_by_value",
    "drop_top_fraction",
    "global_norm",
    "keep_top_fraction",
    "labels_by_name",
    "limit_norm_growth",
    "masked",
    "maximize",
    "migu",
    "momentum_reset",
    "newton_schulz",
    "normalize",
    "orthogonalize",
    "partition",
    "post_reset_warmup",
    "scale",
    "scale_by_lr",
    "scale_by_trust_ratio",
    "spam_clip",
    "trace",
    "trust_ratios",
    "unitwise_norm",
]
