r"""DP-SGD for any optimizer: per-sample clipping, Gaussian noise, Poisson sampling, accounting.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang, "Deep Learning with Differential
Privacy", CCS 2016, arXiv:1607.00133 (Algorithm 1). Compared against Opacus
(https://github.com/meta-pytorch/opacus, ``opacus/optimizers/optimizer.py``,
``opacus/data_loader.py``). One logical step on a Poisson batch :math:`B` (each of the
:math:`N` examples included independently with probability :math:`q`):

.. math::
    \bar g_b = g_b \min\Bigl(1, \frac{C}{\lVert g_b\rVert_2}\Bigr), \qquad
    \tilde g = \frac{1}{qN}\Bigl(\sum_{b\in B} \bar g_b + \mathcal N(0, \sigma^2 C^2 I)\Bigr)

then any optimizer steps with :math:`\tilde g` as the gradient. Choices, and where we differ:

* The noise is added once per logical step to the *sum*, std ``noise_multiplier * max_grad_norm``.
* Division by the **expected** batch size :math:`qN`, never the realised :math:`|B|` (dividing by
  :math:`|B|` would leak :math:`|B|`); Opacus does the same for ``loss_reduction="mean"``.
* Clip factor :math:`\min(1, C/\lVert g\rVert)` exactly (Opacus uses :math:`C/(\lVert g\rVert +
  10^{-6})`), so a clipped per-sample gradient has norm :math:`\min(\lVert g\rVert, C)` to rounding.
* ``clipping="per_layer"``: each parameter tensor :math:`l` is clipped to its own :math:`C_l`; a
  single ``max_grad_norm`` :math:`C` is split as :math:`C_l = C/\sqrt{L}`, and the noise uses
  :math:`C = \sqrt{\sum_l C_l^2}` — the sensitivity of the concatenated clipped gradient.
* Gradient accumulation: one logical (Poisson) batch may be fed in several physical parts by
  calling :meth:`DPOptimizer.accumulate` several times before :meth:`DPOptimizer.step`; clipped
  sums accumulate, noise and division happen once, and the accountant records one step. (Opacus
  instead divides by ``expected_batch_size x accumulated_iterations`` and records one step per
  optimizer step — the same thing only when each call receives a whole Poisson batch.)
* ``max_grad_norm=inf`` and ``noise_multiplier=0`` turn DP off (plain training, for testing).
* Noise generator: a seeded ``torch.Generator`` for reproducibility. **Not secure**: real
  deployments need a cryptographically secure RNG and floating-point-attack-resistant sampling
  (Mironov 2012; Opacus' ``secure_mode``); gradkit provides neither.
* Optimizers that re-evaluate the loss in a closure (XGrad) or estimate curvature from data
  (Sophia, OASIS Hessian updates) would see non-private gradients: ``step(closure)`` is refused.
* BatchNorm mixes examples and is refused (use GroupNorm/LayerNorm), as in Opacus'
  ``ModuleValidator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from gradkit.privacy.accounting import PrivacyAccountant
from gradkit.privacy.per_sample import Inputs, LossFn, iter_per_sample_grads, trainable_parameters

CLIPPINGS = ("flat", "per_layer")


def validate_module(model: nn.Module) -> None:
    """Refuse layers that mix examples within a batch (DP needs per-example independence)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"Invalid module {name or type(model).__name__!r}: {type(module).__name__} mixes "
                "examples in a batch and breaks per-example privacy (use GroupNorm or LayerNorm)"
            )


# -- Poisson sampling -------------------------------------------------------------------------
class PoissonSampler(Sampler[list[int]]):
    """A batch sampler: every step includes each of ``dataset_size`` indices independently with
    probability ``sample_rate``. Batches have random size (possibly 0). ``steps`` defaults to
    ``floor(1 / sample_rate)`` (one expected epoch; Opacus' convention, and never more steps per
    epoch than ``noise_multiplier_for(..., epochs=...)`` accounts for)."""

    def __init__(
        self,
        dataset_size: int,
        sample_rate: float,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if isinstance(dataset_size, bool) or dataset_size < 1:
            raise ValueError(f"Invalid dataset_size: {dataset_size!r} (must be >= 1)")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"Invalid sample_rate: {sample_rate!r} (must be in (0, 1])")
        if steps is not None and (isinstance(steps, bool) or steps < 1):
            raise ValueError(f"Invalid steps: {steps!r} (must be a positive integer)")
        self.dataset_size = dataset_size
        self.sample_rate = sample_rate
        self.steps = steps if steps is not None else max(1, int(1 / sample_rate))
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.dataset_size, generator=self.generator) < self.sample_rate
            yield mask.nonzero().flatten().tolist()


def _collate_allowing_empty(dataset: Dataset) -> Any:
    from torch.utils.data import default_collate

    def collate(items: list[Any]) -> Any:
        if items:
            return default_collate(items)
        # an empty Poisson batch: zero-length tensors with the shapes of one example
        example = default_collate([dataset[0]])
        return torch.utils._pytree.tree_map(lambda t: t[:0], example)

    return collate


def poisson_data_loader(
    dataset: Dataset,
    sample_rate: float,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    **loader_kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with :class:`PoissonSampler` batches (empty ones come as
    zero-length tensors). ``sample_rate`` is relative to ``len(dataset)``."""
    sampler = PoissonSampler(len(dataset), sample_rate, steps=steps, generator=generator)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_collate_allowing_empty(dataset), **loader_kwargs
    )


# -- the optimizer wrapper --------------------------------------------------------------------
def _per_layer_norms(max_grad_norm: float | Sequence[float], count: int) -> list[float]:
    if isinstance(max_grad_norm, (int, float)):
        return [float(max_grad_norm) / math.sqrt(count)] * count
    norms = [float(c) for c in max_grad_norm]
    if len(norms) != count:
        raise ValueError(
            f"Invalid max_grad_norm: {len(norms)} per-layer norms for {count} trainable parameters"
        )
    return norms


def _clip_bounds(
    clipping: str, max_grad_norm: float | Sequence[float], count: int, noise_multiplier: float
) -> tuple[list[float] | None, float]:
    """(per-layer bounds or None for flat clipping, the total bound C used for the noise)."""
    if clipping == "flat":
        if not isinstance(max_grad_norm, (int, float)):
            raise ValueError(
                f"Invalid max_grad_norm: {max_grad_norm!r} (flat clipping takes one number)"
            )
        layer_norms, total = None, float(max_grad_norm)
    else:
        layer_norms = _per_layer_norms(max_grad_norm, count)
        total = math.sqrt(sum(c * c for c in layer_norms))
    if any(not c > 0 for c in layer_norms or [total]):
        raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (must be > 0)")
    if math.isinf(total) and noise_multiplier > 0:
        raise ValueError(
            "Invalid max_grad_norm: inf (unbounded sensitivity) needs noise_multiplier=0"
        )
    return layer_norms, total


class DPOptimizer:
    """Wrap any ``torch.optim.Optimizer`` (gradkit's or torch's) to take DP-SGD steps.

    Use :meth:`accumulate` (instead of ``loss.backward()``) on each physical batch, then
    :meth:`step`. ``expected_batch_size`` is :math:`qN` of the logical batch; ``sample_rate`` is
    :math:`q` (for the accountant). See the module docstring for the rule and the choices.

    :param optimizer: the optimizer over ``model``'s trainable parameters.
    :param model: the module (no BatchNorm).
    :param loss_fn: ``loss_fn(output, target)`` for a batch of one example.
    :param noise_multiplier: :math:`\\sigma >= 0`.
    :param max_grad_norm: :math:`C > 0` (``inf``: no clipping, only with ``noise_multiplier=0``);
        with ``clipping="per_layer"`` also a sequence, one norm per trainable parameter.
    :param chunk_size: examples per vectorised per-sample-gradient call (memory bound).
    :param generator: noise generator (seeded for reproducibility; not cryptographically secure).
    :param accountant: a :class:`PrivacyAccountant` (a fresh RDP one by default).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        noise_multiplier: float,
        max_grad_norm: float | Sequence[float],
        expected_batch_size: float,
        sample_rate: float | None = None,
        clipping: str = "flat",
        chunk_size: int | None = None,
        method: str = "auto",
        generator: torch.Generator | None = None,
        accountant: PrivacyAccountant | None = None,
    ):
        validate_module(model)
        if clipping not in CLIPPINGS:
            raise ValueError(f"Invalid clipping: {clipping!r} (expected one of {CLIPPINGS})")
        if not noise_multiplier >= 0 or isinstance(noise_multiplier, bool):
            raise ValueError(f"Invalid noise_multiplier: {noise_multiplier!r} (must be >= 0)")
        if not expected_batch_size > 0:
            raise ValueError(f"Invalid expected_batch_size: {expected_batch_size!r} (must be > 0)")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise ValueError(f"Invalid sample_rate: {sample_rate!r} (must be in (0, 1])")
        self.params = trainable_parameters(model)
        self._check_optimizer_covers(optimizer)
        self.layer_norms, total = _clip_bounds(
            clipping, max_grad_norm, len(self.params), noise_multiplier
        )
        self.optimizer, self.model, self.loss_fn = optimizer, model, loss_fn
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = total
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = sample_rate
        self.clipping, self.chunk_size, self.method = clipping, chunk_size, method
        self.generator = generator
        self.accountant = accountant if accountant is not None else PrivacyAccountant()
        self._summed: dict[str, Tensor] = {}
        self.examples_seen = 0  # in the current logical batch

    def _check_optimizer_covers(self, optimizer: torch.optim.Optimizer) -> None:
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.params.items() if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"Invalid optimizer: trainable parameters {missing} are not in it")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def _clip_factors(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        def factor(norm: Tensor, bound: float) -> Tensor:
            # min(1, C/||g||); a zero gradient keeps factor 1 (no 0/0)
            return (bound / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)

        if self.layer_norms is None:
            flat_sq = sum(g.flatten(1).pow(2).sum(1) for g in grads.values())
            f = factor(flat_sq.sqrt(), self.max_grad_norm)  # type: ignore[union-attr]
            return dict.fromkeys(grads, f)
        return {
            n: factor(g.flatten(1).norm(dim=1), c)
            for (n, g), c in zip(grads.items(), self.layer_norms, strict=True)
        }

    def accumulate(self, inputs: Inputs, targets: Tensor) -> Tensor:
        """Add the clipped per-sample gradients of this (physical) batch to the running sums.
        Returns the per-example losses (detached). An empty batch adds nothing."""
        losses = []
        for grads, loss in iter_per_sample_grads(
            self.model,
            self.loss_fn,
            inputs,
            targets,
            chunk_size=self.chunk_size,
            method=self.method,
        ):
            factors = self._clip_factors(grads)
            for n, g in grads.items():
                clipped = torch.einsum("b,b...->...", factors[n].to(g.dtype), g)
                self._summed[n] = self._summed[n] + clipped if n in self._summed else clipped
            losses.append(loss)
            self.examples_seen += loss.shape[0]
        return torch.cat(losses) if losses else torch.zeros(0)

    def _noise_like(self, p: Tensor) -> Tensor:
        if self.noise_multiplier == 0:  # also covers max_grad_norm=inf (0 * inf is nan)
            return torch.zeros_like(p)
        std = self.noise_multiplier * self.max_grad_norm
        noise = torch.normal(0.0, std, size=p.shape, generator=self.generator, dtype=p.dtype)
        return noise.to(p.device)

    def privatize_gradients(self) -> None:
        """Write :math:`\\tilde g` (noised clipped sum / expected batch size) into ``.grad`` and
        reset the sums. :meth:`step` calls it; call it yourself to inspect the private gradient."""
        for n, p in self.params.items():
            summed = self._summed.get(n)
            total = (summed if summed is not None else torch.zeros_like(p)) + self._noise_like(p)
            p.grad = (total / self.expected_batch_size).to(p.dtype)
        self._summed = {}
        self.examples_seen = 0

    def step(self, closure: None = None) -> None:
        """Privatize the accumulated gradients, step the wrapped optimizer, record the step."""
        if closure is not None:
            raise ValueError(
                "Invalid closure: a closure would recompute non-private gradients; "
                "DPOptimizer.step takes none"
            )
        self.privatize_gradients()
        self.optimizer.step()
        if self.sample_rate is not None:
            self.accountant.step(self.noise_multiplier, self.sample_rate)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._summed = {}
        self.examples_seen = 0

    def get_epsilon(self, delta: float) -> float:
        return self.accountant.get_epsilon(delta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "accountant": self.accountant.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.accountant.load_state_dict(state["accountant"])
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"])


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    loss_fn: LossFn,
    noise_multiplier: float,
    max_grad_norm: float | Sequence[float],
    clipping: str = "flat",
    chunk_size: int | None = None,
    seed: int | None = None,
    accountant: str = "rdp",
) -> tuple[DPOptimizer, DataLoader]:
    """Turn (model, optimizer, data_loader) into a DP-SGD setup: returns ``(dp_optimizer,
    poisson_loader)``.

    The sample rate is ``data_loader.batch_size / len(data_loader.dataset)`` — from the *dataset*
    size, never the sampler's length (a ``WeightedRandomSampler`` would otherwise make the
    accounted rate wrong silently, opacus#813); the loader's own sampler is replaced by Poisson
    sampling over the dataset (one expected epoch per pass). ``seed`` seeds both the sampler and
    the noise (reproducible, not secure).

    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from gradkit.privacy import make_private
    >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> net = torch.nn.Linear(4, 2)
    >>> opt, loader = make_private(net, torch.optim.SGD(net.parameters(), lr=0.1),
    ...     DataLoader(data, batch_size=16), loss_fn=F.cross_entropy,
    ...     noise_multiplier=1.0, max_grad_norm=1.0, seed=0)
    >>> for x, y in loader:
    ...     opt.zero_grad(); _ = opt.accumulate(x, y); opt.step()
    >>> opt.accountant.steps, opt.sample_rate
    (4, 0.25)
    """
    batch_size = data_loader.batch_size
    if batch_size is None:
        raise ValueError(
            "Invalid data_loader: it has no batch_size (give one, not a batch_sampler)"
        )
    size = len(data_loader.dataset)  # type: ignore[arg-type]
    sample_rate = batch_size / size
    generators = (
        [None, None] if seed is None else [torch.Generator().manual_seed(seed + i) for i in (0, 1)]
    )
    loader = poisson_data_loader(data_loader.dataset, sample_rate, generator=generators[0])
    dp_optimizer = DPOptimizer(
        optimizer,
        model,
        loss_fn,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=sample_rate * size,
        sample_rate=sample_rate,
        clipping=clipping,
        chunk_size=chunk_size,
        generator=generators[1],
        accountant=PrivacyAccountant(accountant),
    )
    return dp_optimizer, loader
