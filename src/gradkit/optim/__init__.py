"""Optimizers from the literature, each a ``torch.optim.Optimizer`` built from a transform chain.

``available()`` lists them all with paper, year, defaults and state bytes per parameter.
"""

from gradkit.optim._base import GradkitOptimizer, OptimizerInfo, available
from gradkit.optim._curvature import gnb_diagonal, hutchinson_diagonal
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
from gradkit.optim.auon import AuON, ScaleByAuON, scale_by_auon
from gradkit.optim.diffgrad import DiffGrad, ScaleByDiffGrad, scale_by_diffgrad
from gradkit.optim.dropmuon import DropMuon, sample_active_layers
from gradkit.optim.grams import Grams, ScaleByGrams, scale_by_grams
from gradkit.optim.gravity import Gravity, ScaleByGravity, scale_by_gravity
from gradkit.optim.induced_metric import (
    InducedMetric,
    ScaleByInducedMetric,
    scale_by_induced_metric,
)
from gradkit.optim.lamb import LAMB, ScaleByLambMoments
from gradkit.optim.lars import LARS
from gradkit.optim.lion import Lion, ScaleByLionInterpolation, scale_by_lion_interpolation
from gradkit.optim.mars import MARS, ScaleByMARS, scale_by_mars
from gradkit.optim.muon import Muon, ScaleByMuon, scale_by_muon
from gradkit.optim.nadam import NAdam, ScaleByNAdam
from gradkit.optim.novograd import NovoGrad, ScaleByNovoGrad
from gradkit.optim.oasis import OASIS, ScaleByOASIS, scale_by_oasis
from gradkit.optim.radam import RAdam, ScaleByRAdam
from gradkit.optim.rmsprop import RMSprop, ScaleByRMS
from gradkit.optim.sgd import SGD
from gradkit.optim.signum import (
    ScaleByEMA,
    ScaleBySign,
    SignSGD,
    Signum,
    scale_by_ema,
    scale_by_sign,
)
from gradkit.optim.sophia import ScaleBySophia, Sophia, scale_by_sophia
from gradkit.optim.spam import SPAM, ScaleBySpamAdam, StableSPAM, scale_by_spam
from gradkit.optim.xgrad import XGrad

__all__ = [
    "AdEMAMix",
    "AdaMomentum",
    "Adagrad",
    "Adam",
    "AdamP",
    "AdamW",
    "AuON",
    "DiffGrad",
    "DropMuon",
    "GradkitOptimizer",
    "Grams",
    "Gravity",
    "InducedMetric",
    "LAMB",
    "LARS",
    "Lion",
    "MARS",
    "Muon",
    "NAdam",
    "NovoGrad",
    "OASIS",
    "OptimizerInfo",
    "ProjectScaleInvariant",
    "RAdam",
    "RMSprop",
    "SGD",
    "SGDP",
    "SPAM",
    "ScaleByAdEMAMix",
    "ScaleByAdaMomentum",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByAdamP",
    "ScaleByAuON",
    "ScaleByDiffGrad",
    "ScaleByEMA",
    "ScaleByGrams",
    "ScaleByGravity",
    "ScaleByInducedMetric",
    "ScaleByLambMoments",
    "ScaleByLionInterpolation",
    "ScaleByMARS",
    "ScaleByMuon",
    "ScaleByNAdam",
    "ScaleByNovoGrad",
    "ScaleByOASIS",
    "ScaleByRAdam",
    "ScaleByRMS",
    "ScaleBySGDP",
    "ScaleBySign",
    "ScaleBySophia",
    "ScaleBySpamAdam",
    "SignSGD",
    "Signum",
    "Sophia",
    "StableSPAM",
    "XGrad",
    "alpha_scheduler",
    "available",
    "beta3_scheduler",
    "gnb_diagonal",
    "hutchinson_diagonal",
    "project_radial",
    "project_scale_invariant",
    "sample_active_layers",
    "scale_by_adam",
    "scale_by_adamomentum",
    "scale_by_auon",
    "scale_by_diffgrad",
    "scale_by_ema",
    "scale_by_grams",
    "scale_by_gravity",
    "scale_by_induced_metric",
    "scale_by_lion_interpolation",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_oasis",
    "scale_by_sign",
    "scale_by_sophia",
    "scale_by_spam",
]

# The low-rank projection optimizers live in gradkit.memory; they are registered optimizers, so
# they are exported here too (imported last: they build on gradkit.optim's Adam helpers).
from gradkit.memory.fira import Fira
from gradkit.memory.frugal import FRUGAL
from gradkit.memory.galore import GaLore, QGaLore

__all__ += ["FRUGAL", "Fira", "GaLore", "QGaLore"]
