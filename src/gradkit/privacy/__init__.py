"""Gradient privacy: per-sample gradients, DP-SGD with accounting, and gradient-leakage audits.

``make_private(model, optimizer, loader, loss_fn=..., noise_multiplier=..., max_grad_norm=...)``
turns any optimizer into DP-SGD (Abadi et al. 2016) with Poisson sampling and an RDP/PLD
accountant (Google's dp-accounting, imported lazily). ``gradkit.privacy.leakage`` reconstructs
training images from gradients (DLG, iDLG, Inverting Gradients) to audit defences
(``gradkit.privacy.defenses``); ``gradkit audit leakage`` runs that audit from the command line.
"""

from gradkit.privacy.accounting import PrivacyAccountant, epsilon, noise_multiplier_for
from gradkit.privacy.defenses import audit_leakage, parse_defenses
from gradkit.privacy.dpsgd import (
    DPOptimizer,
    PoissonSampler,
    make_private,
    poisson_data_loader,
    validate_module,
)
from gradkit.privacy.leakage import dlg, idlg_labels, inverting_gradients
from gradkit.privacy.per_sample import iter_per_sample_grads, per_sample_grads

__all__ = [
    "DPOptimizer",
    "PoissonSampler",
    "PrivacyAccountant",
    "audit_leakage",
    "dlg",
    "epsilon",
    "idlg_labels",
    "inverting_gradients",
    "iter_per_sample_grads",
    "make_private",
    "noise_multiplier_for",
    "parse_defenses",
    "per_sample_grads",
    "poisson_data_loader",
    "validate_module",
]
