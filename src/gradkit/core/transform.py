"""The Transform protocol and ``chain``.

A transform is a pair of functions over *lists* of tensors (so foreach kernels apply):

* ``init(params, hp) -> state``: the per-parameter state the transform needs, as a mapping from a
  short state name (``"exp_avg"``) to one tensor per parameter;
* ``update(updates, state, params, ctx) -> updates``: turn incoming updates into outgoing ones,
  mutating its state tensors in place.

Hyperparameters are *not* baked into the transform: each transform declares the names it reads
and their defaults (``transform.defaults``), and reads the values from the hyperparameter mapping
of the parameter's group at every step (``ctx.segments[i].hp``). That is what lets torch's
param groups and LR schedulers drive a chain unchanged. A transform used on its own, outside an
optimizer, reads its construction-time defaults.

Updates follow Optax's convention: the last transform produces the *additive* change, so an
optimizer ends with ``scale_by_lr()`` (multiplication by ``-lr``) and the parameters are updated
with ``p += u``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

State = dict[str, list[Tensor]]
"""Per-parameter state of one transform: state name -> one tensor per parameter."""


def zeros_state(params: Sequence[Tensor], *names: str) -> State:
    """``{name: [zeros_like(p) for p in params]}`` for each name: the usual fresh state."""
    return {name: [torch.zeros_like(p) for p in params] for name in names}


@dataclass(frozen=True)
class Segment:
    """A contiguous run of parameters that share one hyperparameter mapping (a param group)."""

    start: int
    stop: int
    hp: Mapping[str, Any]


@dataclass
class Context:
    """What a transform may know about the step besides its own updates and state.

    Attributes:
        segments: contiguous runs of parameters sharing hyperparameters (one per param group).
        steps: per-parameter step count, 1 at the first update of that parameter.
        grads: the incoming gradients (read-only; after the adapter's dtype handling).
        names: per-parameter names when the optimizer was given ``named_parameters()`` (else
            ``None`` entries), for transforms that select parameters by name.
    """

    segments: list[Segment]
    steps: list[int]
    grads: list[Tensor]
    extras: dict[str, Any] = field(default_factory=dict)
    names: list[str | None] = field(default_factory=list)

    def name(self, index: int) -> str | None:
        return self.names[index] if index < len(self.names) else None

    def iter_segments(self) -> Iterator[tuple[slice, Mapping[str, Any]]]:
        for seg in self.segments:
            yield slice(seg.start, seg.stop), seg.hp


class Transform:
    """Base class of every transform.

    Subclasses set ``name`` (the namespace of their state keys, e.g. ``"adam"`` gives
    ``"adam.exp_avg"`` in ``optimizer.state[p]``), pass their hyperparameter defaults to
    ``__init__``, and implement ``init`` / ``update``. ``validate`` checks a hyperparameter
    mapping and raises ``ValueError`` naming the argument and the value.
    """

    name: str = "transform"
    nonnegative_state: frozenset[str] = frozenset()
    """State names whose values are never negative (second moments): a compressed state policy
    stores them with the unsigned 8-bit map (finer steps). Others use the signed map."""
    exact_state: frozenset[str] = frozenset()
    """State names that a compressed policy must keep in fp32 (values whose differences matter,
    such as a previous parameter); integer and scalar state is never compressed anyway."""
    per_parameter: bool = False
    """True when parameter i's output reads only parameter i's update, state and value, so the
    optimizer may run the chain on a subset of parameters at a time (a compressed state policy
    does that to bound its fp32 temporaries). False (the safe default) for anything that reduces
    across parameters, such as a global-norm clip. :class:`GroupTransform` defaults to True."""
    stage: str = "gradient"
    """Where a transform passed through an optimizer's ``transforms=`` goes: ``"gradient"``
    (before the update rule, e.g. clipping), ``"update"`` (after the update rule, before the
    trailing ``[decay ->] scale_by_lr``, e.g. cautious masking) or ``"wrap"`` (wraps each
    transform of the update rule through its ``wrap(inner)`` method, e.g. momentum reset)."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults: dict[str, Any] = dict(defaults)
        self.validate(self.defaults)

    # -- protocol -------------------------------------------------------------------------
    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        del params, hp
        return {}

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        raise NotImplementedError

    def validate(self, hp: Mapping[str, Any]) -> None:
        del hp

    # -- helpers --------------------------------------------------------------------------
    def leaves(self) -> list[Transform]:
        return [self]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{self.name}({args})"


def adopt_state_of(wrapper: Transform, inner: Transform) -> None:
    """Give a transform that keeps ``inner``'s state under ``inner``'s name (``when``, momentum
    reset) the same name and the same state declarations, so a compressed storage policy treats
    that state exactly as ``inner`` asked."""
    wrapper.name = inner.name
    wrapper.nonnegative_state = inner.nonnegative_state
    wrapper.exact_state = inner.exact_state
    wrapper.per_parameter = inner.per_parameter


class GroupTransform(Transform):
    """A transform that works one param group at a time.

    Subclasses implement ``update_group(updates, state, params, hp, steps, grads)`` over the
    parameters of one segment; this base class slices the lists and concatenates the results.
    Group transforms are assumed to treat each parameter on its own (``per_parameter = True``);
    one that reduces across the parameters of a group, or draws one random value per call, sets
    ``per_parameter = False``.
    """

    per_parameter = True

    def update_group(
        self,
        updates: list[Tensor],
        state: State,
        params: list[Tensor],
        hp: Mapping[str, Any],
        steps: list[int],
        grads: list[Tensor],
    ) -> list[Tensor]:
        raise NotImplementedError

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        if len(ctx.segments) == 1:
            hp = ctx.segments[0].hp
            return self.update_group(updates, state, params, hp, ctx.steps, ctx.grads)
        out: list[Tensor] = []
        for sl, hp in ctx.iter_segments():
            sub_state = {k: v[sl] for k, v in state.items()}
            out += self.update_group(
                updates[sl], sub_state, params[sl], hp, ctx.steps[sl], ctx.grads[sl]
            )
        return out


class StatelessTransform(GroupTransform):
    """A group transform defined by a function ``fn(updates, params, hp) -> updates``."""

    def __init__(self, name: str, fn: Callable[..., list[Tensor]], **defaults: Any) -> None:
        self.name = name
        self._fn = fn
        super().__init__(**defaults)

    def update_group(self, updates, state, params, hp, steps, grads):
        return self._fn(updates, params, hp)


class Chain(Transform):
    """Transforms applied left to right; see :func:`chain`."""

    name = "chain"

    def __init__(self, *transforms: Transform) -> None:
        leaves: list[Transform] = []
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"chain() takes Transform objects, got {type(t).__name__}: {t!r}")
            leaves += t.leaves()
        self.transforms = leaves
        self.namespaces = _unique_namespaces(leaves)
        self.per_parameter = all(t.per_parameter for t in leaves)
        self._owners = dict(zip(self.namespaces, leaves, strict=True))
        super().__init__(**merge_defaults(leaves, self.namespaces))

    def state_kind(self, key: str) -> str:
        """How a compressed storage policy treats state ``key`` (``"<namespace>.<name>"``):
        ``"unsigned"`` (declared non-negative), ``"exact"`` (kept fp32) or ``"signed"``."""
        namespace, _, name = key.partition(".")
        owner = self._owners.get(namespace)
        if owner is None:
            return "signed"
        if name in owner.exact_state:
            return "exact"
        return "unsigned" if name in owner.nonnegative_state else "signed"

    def leaves(self) -> list[Transform]:
        return list(self.transforms)

    def validate(self, hp: Mapping[str, Any]) -> None:
        for t in getattr(self, "transforms", ()):
            t.validate(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any] | None = None) -> State:
        """Flat state of the whole chain, keys namespaced as ``"<namespace>.<name>"``.

        Used standalone (outside an optimizer) the state also carries ``"step"``.
        """
        state: State = {}
        if hp is None:  # standalone: the chain counts its own steps
            hp = self.defaults
            state["step"] = [torch.zeros((), dtype=torch.float32) for _ in params]
        for ns, t in zip(self.namespaces, self.transforms, strict=True):
            for key, tensors in t.init(params, hp).items():
                state[f"{ns}.{key}"] = tensors
        return state

    def update(
        self,
        updates: list[Tensor],
        state: State,
        params: list[Tensor],
        ctx: Context | None = None,
    ) -> list[Tensor]:
        """Thread ``updates`` through every transform.

        With ``ctx=None`` (standalone use) the chain keeps its own per-parameter step count in
        ``state["step"]`` and reads its construction-time hyperparameters.
        """
        if ctx is None:
            ctx = self._standalone_context(updates, state)
        return self.run(updates, state, params, ctx, len(self.transforms))

    def run(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context, count: int
    ) -> list[Tensor]:
        """Thread ``updates`` through the first ``count`` transforms only."""
        for ns, t in zip(self.namespaces[:count], self.transforms[:count], strict=True):
            prefix = ns + "."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            updates = t.update(updates, sub, params, ctx)
        return updates

    def _standalone_context(self, updates: list[Tensor], state: State) -> Context:
        steps_t = state.setdefault("step", [torch.zeros((), dtype=torch.float32) for _ in updates])
        for s in steps_t:
            s.add_(1)
        steps = [int(s.item()) for s in steps_t]
        return Context([Segment(0, len(updates), self.defaults)], steps, list(updates))

    def __repr__(self) -> str:
        return "chain(" + ", ".join(repr(t) for t in self.transforms) + ")"


def chain(*transforms: Transform) -> Chain:
    """Compose transforms left to right, Optax-style.

    Example:
        >>> import torch, gradkit
        >>> adamw = gradkit.chain(
        ...     gradkit.scale_by_adam(), gradkit.add_decayed_weights(1e-2), gradkit.scale_by_lr(1e-3)
        ... )
        >>> params = [torch.ones(3)]
        >>> state = adamw.init(params)
        >>> updates = adamw.update([torch.ones(3)], state, params)
        >>> [round(x, 5) for x in updates[0].tolist()]
        [-0.00101, -0.00101, -0.00101]
    """
    return Chain(*transforms)


class When(GroupTransform):
    """Apply ``inner`` only in groups whose hyperparameter ``flag`` equals ``value``."""

    def __init__(self, flag: str, inner: Transform, value: Any = True, default: Any = False):
        if len(inner.leaves()) != 1:
            raise TypeError("when() wraps a single transform, not a chain")
        self.inner = inner
        self.flag = flag
        self.value = value
        adopt_state_of(self, inner)
        super().__init__(**{**inner.defaults, flag: default})

    def validate(self, hp: Mapping[str, Any]) -> None:
        self.inner.validate(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        return self.inner.init(params, hp)

    def update_group(self, updates, state, params, hp, steps, grads):
        if hp[self.flag] != self.value:
            return updates
        ctx = Context([Segment(0, len(updates), hp)], steps, grads)
        return self.inner.update(updates, state, params, ctx)

    def __repr__(self) -> str:
        return f"when({self.flag!r}=={self.value!r}, {self.inner!r})"


def when(flag: str, inner: Transform, value: Any = True, *, default: Any = False) -> When:
    """Apply ``inner`` only where the group hyperparameter ``flag`` equals ``value``.

    This is how one class offers a structural option per param group, e.g. torch's
    ``Adam(decoupled_weight_decay=...)`` puts weight decay before or after the moments.
    """
    return When(flag, inner, value, default)


def _unique_namespaces(leaves: list[Transform]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for t in leaves:
        n = seen.get(t.name, 0)
        seen[t.name] = n + 1
        names.append(t.name if n == 0 else f"{t.name}_{n}")
    return names


def merge_defaults(leaves: list[Transform], namespaces: list[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for ns, t in zip(namespaces, leaves, strict=True):
        for key, value in t.defaults.items():
            if key in merged and not _same(merged[key], value):
                raise ValueError(
                    f"hyperparameter {key!r} has default {merged[key]!r} in {owner[key]} but "
                    f"{value!r} in {ns}; give both the same value or rename one"
                )
            merged.setdefault(key, value)
            owner.setdefault(key, ns)
    return merged


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b
