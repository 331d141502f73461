"""GradNorm: learned task weights that balance the tasks' gradient norms.

Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee & Andrew Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018,
arXiv:1711.02257. No official code was released; compared against the unofficial
https://github.com/LucasBoTang/GradNorm (``gradnorm.py``) and LibMTL (``LibMTL/weighting/GradNorm.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.multitask._base import check_number
from gradkit.multitask.loss_weighting import LossWeighting, _stack_losses


class GradNorm(LossWeighting):
    r"""Task weights :math:`w_i` trained so that each task's gradient norm tracks its training rate.

    On the chosen shared layer :math:`W` (usually the last shared layer), with
    :math:`G_i = \|\nabla_W\, w_i L_i\|_2`, :math:`\bar G = \frac1m\sum_i G_i`,
    :math:`\tilde L_i = L_i(t) / L_i(0)` and :math:`r_i = \tilde L_i / \frac1m \sum_j \tilde L_j`:

    .. math::
        L_{grad} = \sum_i \big|\, G_i - [\bar G\, r_i^{\alpha}]_{\text{const}} \big|,\qquad
        w \leftarrow \mathrm{opt}(w, \nabla_w L_{grad}),\qquad
        w \leftarrow m\, w / \textstyle\sum_j w_j .

    The model is trained on :math:`\sum_i w_i L_i` (weights as constants). :meth:`backward` does
    both in one call: it writes the model gradients and updates the weights (Algorithm 1).

    :param num_tasks: number of losses :math:`m` (weights start at 1 and sum to :math:`m`).
    :param alpha: restoring force :math:`\alpha \ge 0` (default ``1.5``, the paper's NYUv2 value
        and LibMTL's; 0.12 on the paper's synthetic regression).
    :param lr: learning rate of the weights' own Adam optimizer (default ``0.025``).
    :param min_weight: floor applied before renormalisation so a weight never reaches zero or
        changes sign (default ``1e-4``).

    :math:`L_i(0)` is the first call's losses (Algorithm 1 and LucasBoTang); call
    :meth:`set_initial_losses` to use e.g. an epoch-0 mean (LibMTL). Because
    :math:`G_i = w_i \|\nabla_W L_i\|` exactly, :math:`\partial L_{grad}/\partial w_i =
    \mathrm{sign}(G_i - \text{target}_i)\,\|\nabla_W L_i\|`: no second-order graph is needed.

    Where implementations differ: LucasBoTang builds :math:`G_i` with ``create_graph=True`` and
    back-propagates :math:`L_{grad}` into the *network* too (the paper differentiates w.r.t.
    :math:`w` only — we do), recreates the weights' Adam at every step (resetting its moments —
    ours persists and is saved), and uses the first weight matrix of the layer only (we use all the
    tensors passed as ``layer_params``). LibMTL parametrises :math:`w = m\,\mathrm{softmax}(s)`.
    lucidrains/gradnorm-pytorch once used :math:`r_i^{-\alpha}` (its issue #10).

    State (``state_dict``): ``weights``, ``initial_losses``, the weights optimizer.
    """

    def __init__(
        self, num_tasks: int, alpha: float = 1.5, lr: float = 0.025, min_weight: float = 1e-4
    ):
        super().__init__(num_tasks)
        check_number("alpha", alpha, low=0.0)
        check_number("lr", lr, low=0.0, low_open=True)
        check_number("min_weight", min_weight, low=0.0, high=1.0, low_open=True)
        self.alpha, self.lr, self.min_weight = alpha, lr, min_weight
        self.weights = nn.Parameter(torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer(
            "initial_losses", torch.full((num_tasks,), float("nan"), dtype=torch.float64)
        )
        self.optimizer = torch.optim.Adam([self.weights], lr=lr)
        self.last_grad_norms: Tensor | None = None

    def _arguments(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "alpha": self.alpha,
            "lr": self.lr,
            "min_weight": self.min_weight,
        }

    def set_initial_losses(self, losses: Sequence[float] | Tensor) -> None:
        """Set :math:`L_i(0)` explicitly (all positive)."""
        value = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
        if value.shape != (self.num_tasks,) or not bool((value > 0).all()):
            raise ValueError(
                f"Invalid initial losses: {value.tolist()} ({self.num_tasks} positive)"
            )
        self.initial_losses.copy_(value)

    def forward(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        """The weighted total :math:`\\sum_i w_i L_i` with the current weights as constants."""
        stacked = _stack_losses(losses, self.num_tasks)
        w = self.weights.detach().to(stacked.dtype)
        self.last_weights = w
        return (w * stacked).sum()

    def backward(
        self,
        losses: Sequence[Tensor],
        layer_params: Iterable[Tensor],
        *,
        retain_graph: bool = False,
    ) -> Tensor:
        """Back-propagate :math:`\\sum_i w_i L_i` into the model and take one step on the weights.

        ``layer_params``: the shared layer :math:`W` whose gradient norms are balanced. Returns
        the weights used for this step (before their update)."""
        losses = list(losses)
        stacked = _stack_losses(losses, self.num_tasks)
        layer = list(layer_params)
        if not layer:
            raise ValueError("layer_params is empty")
        raw = torch.stack(
            [
                torch.cat([g.reshape(-1) for g in grads]).norm()
                for grads in (
                    torch.autograd.grad(
                        loss, layer, retain_graph=True, allow_unused=True, materialize_grads=True
                    )
                    for loss in losses
                )
            ]
        ).to(torch.float64)
        used = self.weights.detach().clone()
        self.forward(stacked).backward(retain_graph=retain_graph)
        current = stacked.detach().to(torch.float64)
        if torch.isnan(self.initial_losses).any():
            self.set_initial_losses(current)
        self._update_weights(raw, current)
        self.last_grad_norms = used * raw
        return used.to(stacked.dtype)

    def _update_weights(self, raw_norms: Tensor, losses: Tensor) -> None:
        with torch.no_grad():
            norms = self.weights * raw_norms
            ratio = losses / self.initial_losses
            rate = ratio / ratio.mean()
            target = norms.mean() * rate**self.alpha
            self.weights.grad = torch.sign(norms - target) * raw_norms
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.weights.clamp_(min=self.min_weight)
            self.weights.mul_(self.num_tasks / self.weights.sum())

    def get_extra_state(self) -> Any:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        # torch's Optimizer.load_state_dict keeps same-dtype tensors as they are: copy, so that a
        # state loaded from a live GradNorm never shares its moment buffers
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
