"""Multi-task learning: per-task gradients and gradient-conflict aggregators.

``backward(losses, shared_params, aggregator, task_params=...)`` writes aggregated gradients;
any aggregator also works on a ready Jacobian: ``d = UPGrad()(J)`` with ``J`` of shape [m, n].
"""

from gradkit.multitask._base import Aggregator, WeightedAggregator
from gradkit.multitask.aligned_mtl import AlignedMTL
from gradkit.multitask.basic import Mean, Sum
from gradkit.multitask.bloop import Bloop
from gradkit.multitask.cagrad import CAGrad
from gradkit.multitask.gcond import GCond
from gradkit.multitask.gradnorm import GradNorm
from gradkit.multitask.gradvac import GradVac
from gradkit.multitask.imtlg import IMTLG
from gradkit.multitask.jacobian import TaskGradientAccumulator, backward, jacobian, write_direction
from gradkit.multitask.loss_weighting import DWA, IGB, RLW, LossWeighting, UncertaintyWeighting
from gradkit.multitask.metrics import (
    conflict_fraction,
    conflict_metrics,
    cosine_matrix,
    delta_m,
    magnitude_similarity_matrix,
)
from gradkit.multitask.mgda import MGDA
from gradkit.multitask.nash_mtl import NashMTL
from gradkit.multitask.pcgrad import PCGrad
from gradkit.multitask.sam_gs import SAMGS
from gradkit.multitask.upgrad import UPGrad

__all__ = [
    "Aggregator",
    "AlignedMTL",
    "Bloop",
    "CAGrad",
    "DWA",
    "GCond",
    "GradNorm",
    "GradVac",
    "IGB",
    "IMTLG",
    "LossWeighting",
    "MGDA",
    "Mean",
    "NashMTL",
    "PCGrad",
    "RLW",
    "SAMGS",
    "Sum",
    "TaskGradientAccumulator",
    "UPGrad",
    "UncertaintyWeighting",
    "WeightedAggregator",
    "backward",
    "conflict_fraction",
    "conflict_metrics",
    "cosine_matrix",
    "delta_m",
    "jacobian",
    "magnitude_similarity_matrix",
    "write_direction",
]
