"""gradkit's core: the Transform protocol, ``chain``, and the torch.optim adapter."""

from gradkit.core.guards import (
    GroupGrads,
    NonFiniteGradientError,
    NonFiniteGuard,
    SpikeGuard,
    StepGuard,
    nonfinite_indices,
)
from gradkit.core.optimizer import NONFINITE_POLICIES, ChainOptimizer
from gradkit.core.transform import (
    Chain,
    Context,
    GroupTransform,
    Segment,
    State,
    StatelessTransform,
    Transform,
    When,
    chain,
    when,
)
from gradkit.transforms.basic import (
    add_decayed_weights,
    add_l2,
    maximize,
    scale,
    scale_by_lr,
    trace,
)

__all__ = [
    "NONFINITE_POLICIES",
    "Chain",
    "ChainOptimizer",
    "Context",
    "GroupGrads",
    "GroupTransform",
    "NonFiniteGuard",
    "SpikeGuard",
    "StepGuard",
    "nonfinite_indices",
    "NonFiniteGradientError",
    "Segment",
    "State",
    "StatelessTransform",
    "Transform",
    "When",
    "add_decayed_weights",
    "add_l2",
    "chain",
    "maximize",
    "scale",
    "scale_by_lr",
    "trace",
    "when",
]
