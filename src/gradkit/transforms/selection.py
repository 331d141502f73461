r"""Apply transforms to some parameters only: :func:`masked` and :func:`partition`.

``masked(t, mask)`` runs ``t`` on the parameters ``mask`` selects and passes the others through
unchanged; ``partition({label: t, ...}, label_fn)`` routes every parameter to exactly one of
several transforms (or chains). Selection is by parameter name (a glob such as ``"*.bias"``, a
compiled regular expression, or a list of globs — names come from ``ctx.names``, so give the
optimizer ``model.named_parameters()``), by a predicate ``fn(param, name) -> bool`` / labeller
``fn(param, name) -> label``, or, for ``partition``, by a param-group key.

State: a wrapped transform keeps state only for the parameters it handles. Its state keys exist
for every parameter (so ``state_dict`` has one layout), holding an empty tensor for parameters it
does not handle. Selection is decided when the state is created and must not change afterwards;
where it can't be decided then (a name-based rule on a bf16/fp16 parameter, whose fp32 working
copy can't be matched to a name before the first step), the state is created and then released
(set to an empty tensor) at the first step.

Optax's ``masked`` / ``partition`` (``optax/_src/wrappers.py``, ``combine.py``) are the model; the
difference is that gradkit selects inside one optimizer over torch's param groups and names
rather than over a pytree of masks.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import (
    Context,
    Segment,
    State,
    Transform,
    merge_defaults,
)

Selector = Callable[[Tensor, "str | None"], bool]
_UNKNOWN = object()  # "can't be decided before the first step"
_PASS = object()  # route label: the parameter passes through unchanged


def _name_matcher(mask: Any) -> Callable[[str], bool] | None:
    if isinstance(mask, str):
        return lambda name: fnmatch.fnmatchcase(name, mask)
    if isinstance(mask, re.Pattern):
        return lambda name: mask.search(name) is not None
    if isinstance(mask, (list, tuple)) and mask and all(isinstance(m, str) for m in mask):
        return lambda name: any(fnmatch.fnmatchcase(name, m) for m in mask)
    return None


def _selector(mask: Any) -> tuple[Selector, bool]:
    """``(select(param, name) -> bool, needs_names)`` for a mask specification."""
    by_name = _name_matcher(mask)
    if by_name is not None:

        def select(param: Tensor, name: str | None) -> bool:
            if name is None:
                raise ValueError(
                    f"masked({mask!r}) selects parameters by name, but this parameter has none; "
                    "pass model.named_parameters() to the optimizer (or use a predicate "
                    "fn(param, name) -> bool)"
                )
            return by_name(name)

        return select, True
    if callable(mask):
        return (lambda param, name: bool(mask(param, name))), False
    raise TypeError(
        f"Invalid mask: {mask!r} (expected a glob string, a compiled regex, a list of globs, or "
        "a predicate fn(param, name) -> bool)"
    )


def _group_names(hp: Mapping[str, Any]) -> dict[int, str] | None:
    """id(param) -> name for a param group given named parameters, else None."""
    names, params = hp.get("param_names"), hp.get("params")
    if not names or not params:
        return None
    return {id(p): n for p, n in zip(params, names, strict=False)}


def _placeholder(p: Tensor) -> Tensor:
    return torch.empty(0, dtype=p.dtype, device=p.device)


def _stage_of(t: Transform) -> str:
    stages = {leaf.stage for leaf in t.leaves()}
    return "update" if stages == {"update"} else "gradient"


def sub_context(ctx: Context, indices: Sequence[int]) -> Context:
    """The step context restricted to ``indices`` (sorted): segments, steps, grads, names."""
    segments, pos = [], 0
    for seg in ctx.segments:
        count = sum(1 for i in indices if seg.start <= i < seg.stop)
        if count:
            segments.append(Segment(pos, pos + count, seg.hp))
            pos += count
    return Context(
        segments,
        [ctx.steps[i] for i in indices],
        [ctx.grads[i] for i in indices],
        ctx.extras,
        [ctx.name(i) for i in indices],
    )


class _Router(Transform):
    """Shared machinery: each parameter goes to one route (or passes through)."""

    routes: dict[Any, tuple[str, Transform | None]]  # label -> (state-key prefix, transform)

    def _label(self, param: Tensor, name: str | None, hp: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _label_at_init(self, param: Tensor, hp: Mapping[str, Any], names: dict | None) -> Any:
        raise NotImplementedError

    def validate(self, hp: Mapping[str, Any]) -> None:
        for _, t in getattr(self, "routes", {}).values():
            if t is not None:
                t.validate(hp)

    def init(self, params: Sequence[Tensor], hp: Mapping[str, Any]) -> State:
        names = _group_names(hp)
        labels = [self._label_at_init(p, hp, names) for p in params]
        state: State = {}
        for label, (prefix, t) in self.routes.items():
            if t is None:
                continue
            chosen = [i for i, lab in enumerate(labels) if lab is _UNKNOWN or lab == label]
            if not chosen:
                continue
            for key, tensors in t.init([params[i] for i in chosen], hp).items():
                full = [_placeholder(p) for p in params]
                for j, i in enumerate(chosen):
                    full[i] = tensors[j]
                state[prefix + key] = full
        return state

    def update(
        self, updates: list[Tensor], state: State, params: list[Tensor], ctx: Context
    ) -> list[Tensor]:
        hps = [None] * len(updates)
        for sl, hp in ctx.iter_segments():
            hps[sl] = [hp] * (sl.stop - sl.start)
        labels = [self._label(params[i], ctx.name(i), hps[i]) for i in range(len(updates))]
        out = list(updates)
        for label, (prefix, t) in self.routes.items():
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            chosen = [i for i, lab in enumerate(labels) if lab == label]
            _release_unchosen(sub, chosen)
            if t is None or not chosen:
                continue
            _check_state(sub, chosen, ctx, label)
            new = t.update(
                [updates[i] for i in chosen],
                {k: [v[i] for i in chosen] for k, v in sub.items()},
                [params[i] for i in chosen],
                sub_context(ctx, chosen),
            )
            for j, i in enumerate(chosen):
                out[i] = new[j]
        return out


def _release_unchosen(state: State, chosen: list[int]) -> None:
    """Free the state a route holds for parameters it does not handle (in place)."""
    keep = set(chosen)
    for tensors in state.values():
        for i, t in enumerate(tensors):
            if i not in keep and t is not None and t.numel():
                t.set_(torch.empty(0, dtype=t.dtype, device=t.device))


def _check_state(state: State, chosen: list[int], ctx: Context, label: Any) -> None:
    for key, tensors in state.items():
        for i in chosen:
            if tensors[i] is None:
                who = ctx.name(i) or f"parameter {i}"
                raise ValueError(
                    f"{who} is now selected for {label!r} but had no {key!r} state: the selection "
                    "changed after the optimizer state was created (it must be fixed)"
                )


class Masked(_Router):
    def __init__(self, inner: Transform, mask: Any) -> None:
        if not isinstance(inner, Transform):
            raise TypeError(f"masked() takes a Transform, got {inner!r}")
        self.inner = inner
        self.mask = mask
        self._select, self._needs_names = _selector(mask)
        self.name = inner.name if len(inner.leaves()) == 1 else "masked"
        self.stage = _stage_of(inner)
        self.routes = {True: ("", inner)}
        super().__init__(**inner.defaults)

    def _label(self, param, name, hp):
        return True if self._select(param, name) else _PASS

    def _label_at_init(self, param, hp, names):
        if names is None:
            if self._needs_names and "params" in hp:
                return _UNKNOWN  # a group without names: the step will raise the clear error
            return self._label(param, None, hp)
        if id(param) not in names:
            return _UNKNOWN
        return self._label(param, names[id(param)], hp)

    def __repr__(self) -> str:
        return f"masked({self.inner!r}, {self.mask!r})"


def masked(transform: Transform, mask: Any) -> Transform:
    r"""Apply ``transform`` only to the parameters ``mask`` selects; the others pass unchanged.

    Args:
        transform: any transform or chain. Its hyperparameters and ``stage`` carry over.
        mask: which parameters to transform —

            * a glob on parameter names, ``"*.bias"``, or a list of globs (any matches);
            * a compiled regex, ``re.compile(r"^encoder\.")`` (``search`` semantics);
            * a predicate ``fn(param, name) -> bool`` (``name`` is None without names).

    Name-based masks need the optimizer to be built from ``model.named_parameters()``.
    ``transform`` sees only the selected parameters (a global-norm clip inside ``masked`` measures
    their norm only) and keeps state only for them: the state of the others is an empty tensor
    (see the module docstring).

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.clipping import adaptive_grad_clip
        >>> from gradkit.transforms.selection import masked
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
        >>> agc = masked(adaptive_grad_clip(0.01), lambda p, name: not name.startswith("1."))
        >>> opt = gradkit.optim.AdamW(model.named_parameters(), transforms=[agc])
    """
    return Masked(transform, mask)


class Partition(_Router):
    name = "partition"

    def __init__(self, transforms: Mapping[str, Transform | None], label_fn: Any) -> None:
        if not isinstance(transforms, Mapping) or not transforms:
            raise TypeError(
                f"partition() takes a non-empty {{label: transform}} mapping, got {transforms!r}"
            )
        for label, t in transforms.items():
            if not isinstance(label, str) or not label or "." in label:
                raise ValueError(
                    f"Invalid partition label: {label!r} (a non-empty str without '.')"
                )
            if t is not None and not isinstance(t, Transform):
                raise TypeError(f"partition label {label!r} maps to {t!r}, not a Transform or None")
        self.transforms = dict(transforms)
        self.label_fn = label_fn
        self.routes = {label: (label + ".", t) for label, t in transforms.items()}
        if not (isinstance(label_fn, str) or callable(label_fn)):
            raise TypeError(
                f"Invalid label_fn: {label_fn!r} (a param-group key or fn(param, name) -> label)"
            )
        present = [t for t in transforms.values() if t is not None]
        stages = {leaf.stage for t in present for leaf in t.leaves()}
        self.stage = "update" if stages == {"update"} else "gradient"
        merged = merge_defaults(present, [lab for lab, t in transforms.items() if t is not None])
        if isinstance(label_fn, str):
            merged[label_fn] = None  # param groups set it; validated when a step reads it
        super().__init__(**merged)

    def validate(self, hp: Mapping[str, Any]) -> None:
        super().validate(hp)
        if isinstance(self.label_fn, str):
            label = hp.get(self.label_fn)
            if label is not None and label not in self.routes:
                raise ValueError(
                    f"Invalid {self.label_fn}: {label!r} (choose one of {sorted(self.routes)})"
                )

    def _label(self, param, name, hp):
        label = (
            hp.get(self.label_fn) if isinstance(self.label_fn, str) else self.label_fn(param, name)
        )
        if label not in self.routes:
            who = repr(name) if name else f"a parameter of shape {tuple(param.shape)}"
            source = (
                f"its param group's {self.label_fn!r}"
                if isinstance(self.label_fn, str)
                else "label_fn"
            )
            raise ValueError(
                f"partition: {who} got label {label!r} from {source}; expected one of "
                f"{sorted(self.routes)}"
            )
        return label

    def _label_at_init(self, param, hp, names):
        if isinstance(self.label_fn, str):
            return self._label(param, None, hp)
        if names is not None and id(param) in names:
            return self._label(param, names[id(param)], hp)
        if names is not None:
            return _UNKNOWN
        try:
            return self._label(param, None, hp)
        except Exception:
            return _UNKNOWN

    def __repr__(self) -> str:
        return f"partition({self.transforms!r}, {self.label_fn!r})"


def partition(transforms: Mapping[str, Transform | None], label_fn: Any) -> Transform:
    r"""Route each parameter to one of several transforms (or chains) by a label.

    Args:
        transforms: ``{label: transform}``; a ``None`` transform passes its parameters through
            unchanged (e.g. frozen layers under an update-stage transform). Labels are non-empty
            strings without ``"."`` (they prefix the state keys: ``"partition.<label>.<key>"``).
        label_fn: where a parameter's label comes from —

            * a param-group key (``str``): ``group[label_fn]``, e.g. groups
              ``{"params": ..., "route": "muon"}``;
            * ``fn(param, name) -> label`` (``name`` is None unless the optimizer got
              ``named_parameters()``); :func:`labels_by_name` builds one from globs.

    Every parameter must get one of the labels (``ValueError`` otherwise, naming it). Each
    transform sees only its parameters and keeps state only for them.

    Hyperparameters: all routes read the same param-group mapping, so two routes that declare the
    same hyperparameter must agree on its default (the rule of :func:`~gradkit.chain`); for
    per-route values route by a group key and set them per group.

    Example:
        >>> import torch, gradkit
        >>> from gradkit.transforms.selection import partition, labels_by_name
        >>> from gradkit.transforms.clipping import clip_by_value
        >>> from gradkit.transforms.normalization import normalize
        >>> t = partition(
        ...     {"w": normalize(), "b": clip_by_value(0.5)},
        ...     labels_by_name({"*.weight": "w"}, default="b"),
        ... )
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = gradkit.optim.SGD(model.named_parameters(), lr=0.1, transforms=[t])
    """
    return Partition(transforms, label_fn)


def labels_by_name(patterns: Mapping[str, str], default: str | None = None) -> Callable:
    """A ``label_fn`` for :func:`partition`: the label of the first glob in ``patterns`` that
    matches the parameter's name, else ``default`` (None: an error for unmatched names)."""
    items = list(patterns.items())

    def label(param: Tensor, name: str | None) -> str | None:
        if name is None:
            raise ValueError(
                "labels_by_name needs parameter names: pass model.named_parameters() to the "
                "optimizer"
            )
        for pattern, lab in items:
            if fnmatch.fnmatchcase(name, pattern):
                return lab
        return default

    return label
