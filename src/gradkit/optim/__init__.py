"""Optimizers from the literature, each a ``torch.optim.Optimizer`` built from a transform chain.

``available()`` lists them all with paper, year, defaults and state bytes per parameter.
"""

from gradkit.optim._base import GradkitOptimizer, OptimizerInfo, available
from gradkit.optim.adagrad import Adagrad, ScaleByAdagrad
from gradkit.optim.adam import Adam, AdamW, ScaleByAdam, scale_by_adam
from gradkit.optim.nadam import NAdam, ScaleByNAdam
from gradkit.optim.radam import RAdam, ScaleByRAdam
from gradkit.optim.rmsprop import RMSprop, ScaleByRMS
from gradkit.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "GradkitOptimizer",
    "NAdam",
    "OptimizerInfo",
    "RAdam",
    "RMSprop",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByNAdam",
    "ScaleByRAdam",
    "ScaleByRMS",
    "available",
    "scale_by_adam",
]
