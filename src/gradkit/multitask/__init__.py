"""Multi-task learning: per-task gradients and gradient-conflict aggregators.

``backward(losses, shared_params, aggregator, task_params=...)`` writes aggregated gradients;
any aggregator also works on a ready Jacobian: ``d = UPGrad()(J)`` with ``J`` of shape [m, n].
"""

from gradkit.multitask._base import Aggregator, WeightedAggregator
from gradkit.multitask.basic import Mean, Sum
from gradkit.multitask.cagrad import CAGrad
from gradkit.multitask.imtlg import IMTLG
from gradkit.multitask.jacobian import backward, jacobian
from gradkit.multitask.metrics import (
    conflict_fraction,
    conflict_metrics,
    cosine_matrix,
    magnitude_similarity_matrix,
)
from gradkit.multitask.mgda import MGDA
from gradkit.multitask.pcgrad import PCGrad
from gradkit.multitask.upgrad import UPGrad

__all__ = [
    "IMTLG",
    "MGDA",
    "Aggregator",
    "CAGrad",
    "Mean",
    "PCGrad",
    "Sum",
    "UPGrad",
    "WeightedAggregator",
    "backward",
    "conflict_fraction",
    "conflict_metrics",
    "cosine_matrix",
    "jacobian",
    "magnitude_similarity_matrix",
]
