"""Aligned-MTL: independent component alignment of the task gradients.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023 (Algorithm 1). Official code: https://github.com/SamsungLabs/MTL
(``code/optim/aligned``); compared with LibMTL (``LibMTL/weighting/Aligned_MTL.py``) and TorchJD
(``src/torchjd/aggregation/_aligned_mtl.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.multitask._base import WeightedAggregator

_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(WeightedAggregator):
    r"""Make the task gradients' principal components equally strong (condition number 1).

    Eigendecompose the Gramian :math:`G = J J^\top = V \Lambda V^\top`, keep the :math:`r`
    eigenvalues above ``max(lambda) * m * eps_float32`` (the official/LibMTL/TorchJD rank
    tolerance), and form the balance transformation
    :math:`B = \sqrt{\lambda_s}\, V_r \Lambda_r^{-1/2} V_r^\top` with :math:`\lambda_s` the
    smallest kept eigenvalue (``scale_mode="min"``, the paper's Algorithm 1). The weights are
    :math:`\alpha = B w` for the preference vector :math:`w`, and :math:`d = \alpha^\top J`: the
    aligned Jacobian :math:`\hat J = B J` has :math:`\hat J \hat J^\top = \lambda_s P_r`
    (orthogonal rows of equal norm :math:`\sqrt{\lambda_s}` on the kept subspace).

    :param pref_vector: task preferences ``w`` (1-D, shape ``[m]``); default ``1/m`` (TorchJD).
        The official code and LibMTL use ones (``B.sum(0)``), i.e. ``m`` times our default.
    :param scale_mode: ``"min"`` (paper, default), ``"median"`` (median kept eigenvalue) or
        ``"rmse"`` (mean kept eigenvalue), the options of the official code.

    Choices: computed in float64 (the rank tolerance uses float32's epsilon as the reference
    code with torch's default dtype). A zero Gramian (rank 0) gives ``B = I`` (TorchJD), hence a
    zero direction.
    """

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: str = "min"):
        if pref_vector is not None:
            pref_vector = torch.as_tensor(pref_vector)
            if pref_vector.dim() != 1:
                raise ValueError(f"Invalid pref_vector: {pref_vector!r} (expected a 1-D tensor)")
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"Invalid scale_mode: {scale_mode!r} (expected one of {_SCALE_MODES})")
        self.pref_vector = pref_vector
        self.scale_mode = scale_mode

    def _arguments(self) -> dict[str, Any]:
        return {"pref_vector": self.pref_vector, "scale_mode": self.scale_mode}

    def balance_transformation(self, gram: Tensor) -> Tensor:
        """The matrix ``B`` (float64, ``[m, m]``) for a Gramian ``gram``."""
        m = gram.shape[0]
        gram = gram.to(torch.float64)
        lam, vecs = torch.linalg.eigh(gram)
        tol = lam.max() * m * torch.finfo(torch.float32).eps
        keep = lam > tol
        if not bool(keep.any()):
            return torch.eye(m, dtype=torch.float64, device=gram.device)
        lam, vecs = lam[keep], vecs[:, keep]
        if self.scale_mode == "min":
            scale = lam.min()
        elif self.scale_mode == "median":
            scale = lam.median()
        else:
            scale = lam.mean()
        return scale.sqrt() * (vecs / lam.sqrt()) @ vecs.T

    def compute_weights(self, matrix: Tensor) -> Tensor:
        m = matrix.shape[0]
        if self.pref_vector is None:
            pref = torch.full((m,), 1.0 / m, dtype=torch.float64, device=matrix.device)
        else:
            if self.pref_vector.shape != (m,):
                raise ValueError(
                    f"pref_vector has shape {tuple(self.pref_vector.shape)}, expected ({m},)"
                )
            pref = self.pref_vector.to(dtype=torch.float64, device=matrix.device)
        b = self.balance_transformation(matrix @ matrix.T)
        return (b @ pref).to(matrix.dtype)
