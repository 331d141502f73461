"""Optimizers from the literature, each a ``torch.optim.Optimizer`` built from a transform chain.

``available()`` lists them all with paper, year, defaults and state bytes per parameter.
"""

from gradkit.optim._base import GradkitOptimizer, OptimizerInfo, available
from gradkit.optim.adagrad import Adagrad, ScaleByAdagrad
from gradkit.optim.adam import Adam, AdamW, ScaleByAdam, scale_by_adam
from gradkit.optim.adamomentum import AdaMomentum, ScaleByAdaMomentum, scale_by_adamomentum
from gradkit.optim.adamp import (
    SGDP,
    AdamP,
    ProjectScaleInvariant,
    ScaleByAdamP,
    ScaleBySGDP,
    project_radial,
    project_scale_invariant,
)
from gradkit.optim.ademamix import AdEMAMix, ScaleByAdEMAMix, alpha_scheduler, beta3_scheduler
from gradkit.optim.diffgrad import DiffGrad, ScaleByDiffGrad, scale_by_diffgrad
from gradkit.optim.grams import Grams, ScaleByGrams, scale_by_grams
from gradkit.optim.lamb import LAMB, ScaleByLambMoments
from gradkit.optim.lars import LARS
from gradkit.optim.mars import MARS, ScaleByMARS, scale_by_mars
from gradkit.optim.nadam import NAdam, ScaleByNAdam
from gradkit.optim.novograd import NovoGrad, ScaleByNovoGrad
from gradkit.optim.radam import RAdam, ScaleByRAdam
from gradkit.optim.rmsprop import RMSprop, ScaleByRMS
from gradkit.optim.sgd import SGD

__all__ = [
    "LAMB",
    "LARS",
    "MARS",
    "SGD",
    "SGDP",
    "AdEMAMix",
    "AdaMomentum",
    "Adagrad",
    "Adam",
    "AdamP",
    "AdamW",
    "DiffGrad",
    "GradkitOptimizer",
    "Grams",
    "NAdam",
    "NovoGrad",
    "OptimizerInfo",
    "ProjectScaleInvariant",
    "RAdam",
    "RMSprop",
    "ScaleByAdEMAMix",
    "ScaleByAdaMomentum",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByAdamP",
    "ScaleByDiffGrad",
    "ScaleByGrams",
    "ScaleByLambMoments",
    "ScaleByMARS",
    "ScaleByNAdam",
    "ScaleByNovoGrad",
    "ScaleByRAdam",
    "ScaleByRMS",
    "ScaleBySGDP",
    "alpha_scheduler",
    "available",
    "beta3_scheduler",
    "project_radial",
    "project_scale_invariant",
    "scale_by_adam",
    "scale_by_adamomentum",
    "scale_by_diffgrad",
    "scale_by_grams",
    "scale_by_mars",
]
