"""Drop-Muon: Muon that updates only a random subset of layers at each step.

Kaja Gruntkowska, Yassine Maziane, Zheng Qu & Peter Richtárik, "Drop-Muon: Update Less, Converge
Faster", arXiv:2510.02239 (2025). No official code was released; the method is implemented
from the paper (Algorithm 1 with the Randomized Progressive Training sampling of section 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import Transform
from gradkit.optim._base import Params, register
from gradkit.optim.muon import Muon
from gradkit.transforms.orthogonalize import ORIGINAL

SAMPLINGS = ("progressive", "independent")
_RNG_KEY = "drop_muon_generator"


def _check_probabilities(start_probs: Any) -> tuple[float, ...] | None:
    if start_probs is None:
        return None
    try:
        probs = tuple(float(p) for p in start_probs)
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid start_probs: {start_probs!r} (expected a sequence of probabilities)"
        ) from None
    if not probs or any(not math.isfinite(p) or p < 0 for p in probs):
        raise ValueError(f"Invalid start_probs: {start_probs!r} (need finite values >= 0)")
    if abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"Invalid start_probs: {start_probs!r} (must sum to 1, got {sum(probs)})")
    return probs


def sample_active_layers(
    num_layers: int,
    generator: torch.Generator,
    sampling: str = "progressive",
    start_probs: Sequence[float] | None = None,
    update_prob: float = 0.5,
) -> list[bool]:
    """One draw of the active set :math:`S^k` over layers ``0 .. num_layers - 1``
    (input to output).

    * ``"progressive"`` (Randomized Progressive Training, the paper's scheme): draw the smallest
      active index :math:`s^k` with :math:`P(s^k = i) = p_i` (``start_probs``; ``None`` is the
      uniform :math:`p_i = 1/b` of the paper's experiments) and activate :math:`\\{s^k, ..., b\\}`:
      the last layer is always updated, the first with probability :math:`p_1`.
    * ``"independent"``: each layer is active independently with probability ``update_prob``
      (an instance of the paper's general distribution :math:`\\mathcal{D}`).

    The draw consumes ``generator`` only (one ``multinomial`` or one ``rand`` call).
    """
    if sampling == "independent":
        return (torch.rand(num_layers, generator=generator) < update_prob).tolist()
    if start_probs is None:
        weights = torch.ones(num_layers, dtype=torch.float64)
    else:
        if len(start_probs) != num_layers:
            raise ValueError(
                f"Invalid start_probs: {len(start_probs)} probabilities for {num_layers} layers"
            )
        weights = torch.tensor(start_probs, dtype=torch.float64)
    start = int(torch.multinomial(weights, 1, generator=generator))
    return [i >= start for i in range(num_layers)]


@register(
    paper="Drop-Muon: Update Less, Converge Faster",
    year=2025,
    url="https://arxiv.org/abs/2510.02239",
    state_floats=1,
)
class DropMuon(Muon):
    r"""Drop-Muon (Gruntkowska et al., 2025): Muon on a random subset of layers per step.

    At step :math:`k` a set of active layers :math:`S^k \sim \mathcal{D}` is drawn; then, as in
    the paper's Algorithm 1,

    .. math::
        i \in S^k:\ \ B_i \leftarrow \mu B_i + (1-\mu) G_i,\ \
        W_i \leftarrow (1-\eta\lambda) W_i - \eta\, r_i\, \mathrm{NS}(\tilde B_i)
        \qquad\qquad i \notin S^k:\ \ B_i,\ W_i \text{ unchanged}

    i.e. an active layer takes exactly :class:`~gradkit.optim.muon.Muon`'s step (or the AdamW
    fallback's, for non-matrix parameters) and a frozen layer keeps its weights **and its
    momentum** (the paper freezes both: the gradient of a dropped layer is not accumulated), and
    its step count, so its Adam bias correction counts its own updates. Weight decay is part of
    the update, so frozen layers are not decayed either.

    Sampling (``sampling``):

    * ``"progressive"`` (default; the paper's Randomized Progressive Training): draw the first
      active layer :math:`s^k` with probabilities ``start_probs`` (``None``: uniform over the
      :math:`b` layers, the paper's experiments) and update layers :math:`s^k, \dots, b`; the
      output side is trained most, and in a real network the backward pass could stop at layer
      :math:`s^k`. ``start_probs=(1, 0, ..., 0)`` is full-network Muon.
    * ``"independent"``: each layer is active with probability ``update_prob`` (a random subset
      of the expected fraction ``update_prob``; ``update_prob=1`` is Muon).

    A *layer* is one parameter, in the optimizer's parameter order (``model.parameters()``
    order, input to output for sequential models). To drop several parameters together (a weight
    and its bias), give every param group an integer ``"layer"`` key: groups with the same value
    form one layer, and layers are ordered by that value (either every group sets it or none).

    Randomness: a CPU ``torch.Generator`` seeded with ``seed`` draws :math:`S^k` once per
    ``step()``; its state is saved in ``state_dict()`` (key ``"drop_muon_generator"``) so a
    resumed run draws the same subsets bit-exactly. A non-finite gradient on a frozen parameter
    still triggers ``nonfinite`` for its group. ``last_active`` holds the last draw (one bool per
    layer). Arguments and defaults are otherwise :class:`~gradkit.optim.muon.Muon`'s.

    Choices: the paper analyses per-layer step sizes :math:`\gamma_i` and momenta
    :math:`\beta_i`; use one param group per layer for those. Its :math:`\beta_i` weighs the
    gradient (:math:`M = (1-\beta)M + \beta\nabla`): our ``momentum`` is :math:`1-\beta_i`,
    matching Muon.

    Example:
        >>> import torch
        >>> from gradkit.optim.dropmuon import DropMuon
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False),
        ...                             torch.nn.Linear(8, 1, bias=False))
        >>> opt = DropMuon(model.parameters(), lr=0.02, seed=0)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> _ = opt.step()
        >>> opt.last_active[-1]  # the last layer is always updated under "progressive"
        True
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Any = ORIGINAL,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        sampling: str = "progressive",
        start_probs: Sequence[float] | None = None,
        update_prob: float = 0.5,
        seed: int = 0,
        ns_dtype: str | None = "auto",
        adam_betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-10,
        use_muon: bool | None = None,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(
                f"Invalid sampling: {sampling!r} (choose one of {', '.join(map(repr, SAMPLINGS))})"
            )
        self.start_probs = _check_probabilities(start_probs)
        if isinstance(update_prob, bool) or not isinstance(update_prob, (int, float)):
            raise ValueError(f"Invalid update_prob: {update_prob!r} (expected a number)")
        if not 0.0 <= update_prob <= 1.0:
            raise ValueError(f"Invalid update_prob: {update_prob!r} (must be in [0, 1])")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Invalid seed: {seed!r} (expected an integer)")
        self.sampling = sampling
        self.update_prob = float(update_prob)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_active: list[bool] = []
        super().__init__(
            params, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
            adjust_lr_fn, ns_dtype=ns_dtype, adam_betas=adam_betas, adam_eps=adam_eps,
            use_muon=use_muon, maximize=maximize, transforms=transforms, nonfinite=nonfinite,
            state_dtype=state_dtype,
        )  # fmt: skip

    # -- layers -----------------------------------------------------------------------------
    def layer_of_params(self) -> list[tuple[Tensor, int, int]]:
        """``(param, group index, layer index)`` for every parameter, layers numbered 0..b-1."""
        keyed = [g.get("layer") is not None for g in self.param_groups]
        if any(keyed) and not all(keyed):
            raise ValueError(
                "Invalid layer: set the 'layer' key in every param group or in none "
                f"(set in groups {[i for i, k in enumerate(keyed) if k]} only)"
            )
        entries = [
            (p, gi, g["layer"] if all(keyed) else None)
            for gi, g in enumerate(self.param_groups)
            for p in g["params"]
        ]
        if all(keyed):
            order = {key: i for i, key in enumerate(sorted({k for _, _, k in entries}))}
            return [(p, gi, order[k]) for p, gi, k in entries]
        return [(p, gi, i) for i, (p, gi, _) in enumerate(entries)]

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        layers = self.layer_of_params()
        num_layers = 1 + max((k for _, _, k in layers), default=-1)
        saved_rng = self.generator.get_state()
        active = sample_active_layers(
            num_layers, self.generator, self.sampling, self.start_probs, self.update_prob
        )
        hidden: list[tuple[Tensor, Tensor]] = []
        try:
            exposed = self._groups_with_nonfinite_frozen(layers, active)
            for p, gi, k in layers:
                if not active[k] and p.grad is not None and gi not in exposed:
                    hidden.append((p, p.grad))
                    p.grad = None
            super().step()
        except BaseException:
            self.generator.set_state(saved_rng)
            raise
        finally:
            for p, grad in hidden:
                p.grad = grad
        self.last_active = active
        return loss

    def _groups_with_nonfinite_frozen(
        self, layers: list[tuple[Tensor, int, int]], active: list[bool]
    ) -> set[int]:
        """Groups where a frozen parameter's gradient is non-finite: their gradients stay
        visible so the adapter's ``nonfinite`` policy (skip / raise) applies to the group."""
        exposed = set()
        for p, gi, k in layers:
            group = self.param_groups[gi]
            if active[k] or p.grad is None or group["nonfinite"] == "apply" or gi in exposed:
                continue
            if p.grad.numel() and not bool(p.grad.isfinite().all()):
                exposed.add(gi)
        return exposed

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[_RNG_KEY] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop(_RNG_KEY, None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self.generator.set_state(rng.to(device="cpu", dtype=torch.uint8))
