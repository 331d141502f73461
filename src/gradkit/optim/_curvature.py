"""Diagonal-Hessian estimators and the optimizer plumbing that consumes their estimates.

Shared by :mod:`gradkit.optim.sophia` (SophiaH / SophiaG) and :mod:`gradkit.optim.oasis`.

The estimators return plain detached tensors and never write ``p.grad``: the second-order graph
built for a Hessian-vector product lives only inside the call and is freed on return. Calling
``loss.backward(create_graph=True)`` instead (what pytorch-optimizer's SophiaH requires) stores a
gradient that references its own graph on the parameter, a reference cycle autograd never frees:
memory grows with every refresh (pytorch-optimizer issue #278).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from gradkit.core.guards import NonFiniteGradientError, nonfinite_indices
from gradkit.core.optimizer import LOW_PRECISION, ChainOptimizer
from gradkit.core.transform import Segment, Transform

Estimates = Mapping[Tensor, Tensor | None] | Sequence[Tensor | None]


def _rademacher(p: Tensor, generator: torch.Generator | None) -> Tensor:
    signs = torch.randint(0, 2, p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return signs.mul_(2).sub_(1)


def hutchinson_diagonal(
    closure: Callable[[], Tensor],
    params: Iterable[Tensor],
    *,
    generator: torch.Generator | None = None,
    samples: int = 1,
) -> list[Tensor]:
    r"""Hutchinson's estimate :math:`u \odot (H u)` of the diagonal of the Hessian of ``closure()``.

    :math:`u` has independent Rademacher (:math:`\pm 1`) entries, so
    :math:`\mathbb E[u \odot Hu] = \operatorname{diag}(H)` (Bekas, Kokiopoulou & Saad, 2007); with
    ``samples > 1`` the estimates of independent :math:`u` are averaged. :math:`Hu` is a
    Hessian-vector product (double back-propagation through ``closure``'s graph).

    Args:
        closure: returns the scalar loss; it is called once, with gradients enabled. Put any
            regularizer whose curvature you want in the estimate inside it.
        params: the tensors to differentiate with respect to.
        generator: source of the random signs (on the parameters' device); ``None`` uses torch's
            global generator. Seed it (or use the optimizer's ``hessian_generator``) to make the
            estimate reproducible.
        samples: number of probe vectors averaged.

    Returns:
        One detached tensor per parameter (zeros for parameters the loss does not depend on).
        Nothing is written to ``p.grad`` and no graph outlives the call.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> [d] = hutchinson_diagonal(lambda: (x**3).sum(), [x])  # H = diag(6x), exact here
        >>> d.tolist()
        [6.0, 12.0]
    """
    params = list(params)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"Invalid samples: {samples!r} (must be an integer >= 1)")
    total = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        loss = closure()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # a gradient that does not depend on the parameters contributes a zero Hessian row
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        for sample in range(samples):
            probes = [_rademacher(p, generator) for p in params]
            if not live:
                continue
            hvps = torch.autograd.grad(
                [grads[i] for i in live],
                params,
                grad_outputs=[probes[i] for i in live],
                retain_graph=sample < samples - 1,
                allow_unused=True,
            )
            for acc, u, hv in zip(total, probes, hvps, strict=True):
                if hv is not None:
                    acc.addcmul_(u, hv.detach())
    del loss, grads
    if samples > 1:
        torch._foreach_div_(total, float(samples))
    return total


def gnb_diagonal(
    model: Callable[[Any], Tensor],
    inputs: Any,
    *,
    params: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    r"""The Gauss-Newton-Bartlett estimate :math:`B\,\hat g \odot \hat g` (Sophia, Algorithm 2).

    ``model(inputs)`` gives logits of shape ``(..., C)``; every leading position is one of the
    :math:`B` samples (tokens, for a language model). Labels :math:`\hat y_b` are drawn from the
    model's own ``softmax`` and :math:`\hat g = \nabla \frac1B \sum_b \ell_{ce}(f(\theta, x_b),
    \hat y_b)`. Because each sampled-label gradient has mean zero, the expectation over the labels
    is the diagonal of the Gauss-Newton matrix
    :math:`\frac1B\sum_b J_b^\top(\operatorname{diag}p_b - p_b p_b^\top)J_b` of the mean
    cross-entropy loss.

    Args:
        model: a callable returning logits; a ``torch.nn.Module`` also supplies ``params``.
        inputs: passed to ``model`` as it is.
        params: the tensors to differentiate with respect to (default: the module's parameters
            that require gradients).
        generator: source of the sampled labels (on the logits' device).

    Returns:
        One detached tensor per parameter; nothing is written to ``p.grad``.
    """
    if params is None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(
                f"Invalid params: None with a model of type {type(model).__name__}; pass "
                "params=... when model is not a torch.nn.Module"
            )
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    with torch.enable_grad():
        logits = model(inputs)
        if not isinstance(logits, Tensor) or logits.ndim < 1:
            raise ValueError(
                f"Invalid model output: {type(logits).__name__}; gnb_diagonal needs logits of "
                "shape (..., classes) (wrap the model, e.g. lambda x: model(x)[0])"
            )
        flat = logits.reshape(-1, logits.shape[-1])
        with torch.no_grad():
            probs = torch.softmax(flat.detach().float(), dim=-1)
            labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        loss = F.cross_entropy(flat, labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    count = float(flat.shape[0])
    return [
        torch.zeros_like(p) if g is None else g.detach().square().mul_(count)
        for p, g in zip(params, grads, strict=True)
    ]


class DiagonalHessianOptimizer:
    """Mixin for optimizers whose transform keeps an EMA of supplied diagonal-Hessian estimates.

    The transform (``self._hessian_owner``) owns state ``hessian`` (the EMA) and ``hessian_step``
    (the parameter's step count at its last refresh, -1 before the first). Subclasses say how a
    refresh blends into the EMA through :meth:`_hessian_beta` and :meth:`_warm_start`.
    """

    _hessian_owner: Transform
    _warned_hessian: bool = False

    # -- what subclasses decide -----------------------------------------------------------
    def _hessian_beta(self, group: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def _warm_start(self, group: Mapping[str, Any]) -> bool:
        """True: the first estimate replaces the zero-initialized EMA instead of blending in."""
        del group
        return False

    # -- public API -----------------------------------------------------------------------
    def _hessian_key(self, name: str) -> str:
        opt: ChainOptimizer = self  # type: ignore[assignment]
        index = next(i for i, t in enumerate(opt.transform.transforms) if t is self._hessian_owner)
        return f"{opt.transform.namespaces[index]}.{name}"

    def hessian_generator(self, seed: int = 0, device: torch.device | str | None = None):
        """A ``torch.Generator`` seeded from ``seed`` and the optimizer's current step count.

        Pass it to :func:`hutchinson_diagonal` / :func:`gnb_diagonal`: the random probes then
        depend only on ``(seed, step)``, which the checkpoint holds, so a run resumed from
        ``state_dict`` draws exactly the probes the uninterrupted run would have drawn.
        """
        gen = torch.Generator(device=device if device is not None else "cpu")
        gen.manual_seed((int(seed) * 1_000_003 + self._global_step()) % (2**63))
        return gen

    def _global_step(self) -> int:
        opt: ChainOptimizer = self  # type: ignore[assignment]
        steps = [int(s["step"].item()) for s in opt.state.values() if "step" in s]
        return max(steps, default=0)

    @torch.no_grad()
    def update_hessian(self, estimates: Estimates) -> None:
        """Blend per-parameter diagonal-Hessian estimates into the optimizer's EMA.

        Args:
            estimates: either a mapping ``parameter -> estimate``, or a sequence with one entry
                per parameter of ``param_groups`` in order (the order of ``model.parameters()``
                when the optimizer was built from it); ``None`` entries are left out. Estimates
                are detached and cast to the state's dtype.

        A parameter that has no state yet gets it (step count 0), so the estimate may come
        before the first ``step()``. Non-finite estimates follow the group's ``nonfinite``
        policy: ``"skip"`` leaves that group's EMA untouched (warning once), ``"raise"`` raises
        :class:`~gradkit.core.NonFiniteGradientError`, ``"apply"`` blends them in.
        """
        opt: ChainOptimizer = self  # type: ignore[assignment]
        lookup = self._as_mapping(estimates)
        for index, group in enumerate(opt.param_groups):
            params = [p for p in group["params"] if lookup.get(p) is not None]
            if not params:
                continue
            ests = [lookup[p].detach() for p in params]
            for p, e in zip(params, ests, strict=True):
                if e.shape != p.shape:
                    raise ValueError(
                        f"Invalid estimate: shape {tuple(e.shape)} for a parameter of shape "
                        f"{tuple(p.shape)} (param group {index})"
                    )
            if not self._estimates_usable(index, group, ests):
                continue
            work = [p.float() if p.dtype in LOW_PRECISION else p for p in params]
            opt._init_state(params, work, [Segment(0, len(params), group)])
            self._blend(params, ests, group)

    def _blend(self, params: list[Tensor], ests: list[Tensor], group: Mapping[str, Any]) -> None:
        opt: ChainOptimizer = self  # type: ignore[assignment]
        h_key, step_key = self._hessian_key("hessian"), self._hessian_key("hessian_step")
        beta = self._hessian_beta(group)
        for p, e in zip(params, ests, strict=True):
            state = opt.state[p]
            h = opt.read_state(p, h_key)  # fp32 (decoded) view under a compressed policy
            e = e.to(device=h.device, dtype=h.dtype)
            if self._warm_start(group) and state[step_key].item() < 0:
                h.copy_(e)
            else:
                h.lerp_(e, 1.0 - beta)
            opt.write_state(p, h_key, h)
            state[step_key].fill_(state["step"].item())

    def _as_mapping(self, estimates: Estimates) -> dict[Tensor, Tensor | None]:
        opt: ChainOptimizer = self  # type: ignore[assignment]
        if isinstance(estimates, Mapping):
            known = {id(p) for g in opt.param_groups for p in g["params"]}
            if any(id(p) not in known for p in estimates):
                raise ValueError("Invalid estimates: a key is not a parameter of this optimizer")
            return dict(estimates)
        params = [p for g in opt.param_groups for p in g["params"]]
        estimates = list(estimates)
        if len(estimates) != len(params):
            raise ValueError(
                f"Invalid estimates: {len(estimates)} tensors for {len(params)} parameters "
                "(pass one per parameter, in param_groups order, or a {param: estimate} dict)"
            )
        return dict(zip(params, estimates, strict=True))

    def _estimates_usable(self, index: int, group: Mapping[str, Any], ests: list[Tensor]) -> bool:
        if group["nonfinite"] == "apply":
            return True
        if not nonfinite_indices(ests):
            return True
        message = f"non-finite Hessian estimate in param group {index}"
        if group["nonfinite"] == "raise":
            raise NonFiniteGradientError(f"{message}; nothing was updated")
        if not self._warned_hessian:
            self._warned_hessian = True
            warnings.warn(
                f"{message}: that group's Hessian EMA was left untouched. "
                "This warning is shown once.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
