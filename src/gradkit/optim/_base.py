"""What every named gradkit optimizer shares: the constructor plumbing and the registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from gradkit import _native
from gradkit.core.optimizer import ChainOptimizer, split_lr_tail
from gradkit.core.transform import Segment, Transform, chain
from gradkit.transforms.basic import maximize as _maximize

Params = Iterable[Any]


class GradkitOptimizer(ChainOptimizer):
    """Base class of the named optimizers in :mod:`gradkit.optim`.

    A named optimizer is ``chain(maximize(), *transforms, *core)`` where ``core`` is the paper's
    update and ``transforms`` are the user's extra gradient transforms (clipping, ...), applied to
    the gradient before the update rule.

    Every named optimizer also takes ``nonfinite`` (see :class:`gradkit.ChainOptimizer`) and
    ``state_dtype="fp32" | "bf16" | "q8"``: how its state is stored (the update is always
    computed in fp32; see :mod:`gradkit.memory.storage`), also settable per param group.
    """

    paper: str = ""
    year: int = 0
    url: str = ""

    def __init__(
        self,
        params: Params,
        core: Sequence[Transform],
        *,
        maximize: bool = False,
        transforms: Sequence[Transform] | None = None,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
        foreach: bool | None = None,
        **hyperparams: Any,
    ) -> None:
        full = chain(_maximize(maximize), *place_transforms(core, transforms or ()))
        self._plain = not transforms
        super().__init__(
            params, full, nonfinite=nonfinite, state_dtype=state_dtype, maximize=maximize,
            foreach=foreach, **hyperparams,
        )  # fmt: skip

    # -- the native fast path ---------------------------------------------------------------
    use_native: bool = True
    """Run the native one-pass kernel where this optimizer has one (see :mod:`gradkit._native`);
    False runs the readable chain of multi-tensor ops (tests compare the two)."""

    def native_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        """The native kernel for a group with hyperparameters ``hp``, or None (readable path).

        Overridden by optimizers that have a kernel; it is only asked when the chain is the
        paper's update alone (no ``transforms=``) and state is stored in fp32.
        """
        del hp
        return None

    def _fast_step(self, params, work, grads, segments, state=None):
        rest = super()._fast_step(params, work, grads, segments, state)
        if not (self.use_native and self._plain):
            return rest
        todo = []
        for seg in rest:
            spec = self.native_spec(seg.hp)
            if spec is None or not _native.available():
                todo.append(seg)
                continue
            sl = slice(seg.start, seg.stop)
            states = [self.state[p] for p in params[sl]]
            if state is None:
                kept = [[s[k] for s in states] for k in spec.state]
            else:  # decoded copies of compressed state
                kept = [state[k][sl] if k in state else [None] for k in spec.state]
            lists = [work[sl], grads[sl], *kept]
            # one kernel call per dtype (a group may mix float32 and float64 parameters)
            by_dtype: dict[torch.dtype, list[int]] = {}
            for i, w in enumerate(lists[0]):
                by_dtype.setdefault(w.dtype, []).append(i)
            parts = [[[ts[i] for i in idx] for ts in lists] for idx in by_dtype.values()]
            kernel = _native.kernel(spec.kernel)
            if not all(_native.eligible(p) and kernel.ready(p[0][0].dtype) for p in parts):
                todo.append(seg)
                continue
            steps = torch.stack([s["step"] for s in states])
            for idx, part in zip(by_dtype.values(), parts, strict=True):
                # the parameters of this call, for kernels that read extra per-parameter state
                self._native_params = [params[seg.start + i] for i in idx]
                self._run_native(spec, part, steps[idx] if len(parts) > 1 else steps, seg)
            self._native_params = []
        return todo

    _native_params: list[Tensor] = []  # noqa: RUF012 (replaced per call, never mutated)

    # -- the non-finite check inside a kernel's first pass (ChainOptimizer._deferred_checks) ---
    def first_pass_slot(self, spec: NativeSpec) -> int | None:
        """The ``out`` slot where ``spec``'s kernel reduces every gradient, read-only, before it
        writes anything; None when it has no such pass (one-pass kernels). A group whose kernel
        has one may get its non-finite check deferred to the step (``_checking``): kernels run
        by :meth:`_run_checked` take the ``check`` flag as their last hp value (see
        gk_stop_nonfinite in gradkit/_native/gk.h); others call :meth:`_skip_late` themselves."""
        del spec
        return None

    def _checks_in_step(self, group, params, grads):
        if not (self.use_native and self._plain) or not _native.available():
            return False
        spec = self.native_spec(group)
        if spec is None or self.first_pass_slot(spec) is None:
            return False
        kept = [[self.state[p].get(k) for p in params] for k in spec.state]
        lists = [params, grads, *kept]
        return _native.eligible(lists) and _native.kernel(spec.kernel).ready(params[0].dtype)

    def _run_checked(
        self, spec: NativeSpec, lists: list[list[Tensor]], steps: Tensor, seg: Segment
    ) -> Tensor | None:
        """Run a kernel that has a first pass (see :meth:`first_pass_slot`); returns its ``out``,
        or None when the group's step was skipped.

        When this group's non-finite check was deferred to the step, the kernel stops after that
        pass if a reduction is not finite; then the group is skipped (:meth:`_skip_late`) or, on
        a false alarm (a finite gradient whose squares overflow float64), run again unchecked.
        """
        n = len(lists[0])
        check = self.first_pass_slot(spec) is not None and id(seg.hp) in self._checking
        out = torch.zeros(n + 1, _native.OUT_WIDTH, dtype=torch.float64)  # + the status row
        kernel = _native.kernel(spec.kernel)
        kernel.run(lists, steps, (*spec.hp[:-1], float(check)), out)
        if out[n, 0] != 0:  # stopped after the first pass: nothing was written
            if self._skip_late(seg.hp, self._native_params, lists[1]):
                return None
            out.zero_()
            kernel.run(lists, steps, spec.hp, out)
        return out[:n]

    def elementwise_spec(self, hp: Mapping[str, Any]) -> NativeSpec | None:
        """:meth:`native_spec` when its kernel updates every element from that element alone
        (no per-tensor norm or count, no per-tensor scalar state) and runs in one call, so it may
        run on any slice of a tensor: the fused 8-bit state step (:mod:`gradkit.memory.storage`)
        needs that. None otherwise."""
        if not (self.use_native and self._plain):
            return None
        if type(self)._run_native is not GradkitOptimizer._run_native:
            return None  # a second phase or per-call bookkeeping
        spec = self.native_spec(hp)
        return spec if spec is not None and spec.kernel in ELEMENTWISE_KERNELS else None

    def _run_native(
        self, spec: NativeSpec, lists: list[list[Tensor]], steps: Tensor, seg: Segment
    ) -> None:
        """Run ``spec`` on one group (override for kernels that need a second phase)."""
        del seg
        _native.kernel(spec.kernel).run(lists, steps, spec.hp)


ELEMENTWISE_KERNELS = frozenset(
    {"adam", "radam", "ademamix", "diffgrad", "grams", "adamomentum", "sgd", "rmsprop",
     "adagrad", "signsgd", "spam", "sophia"}
)  # fmt: skip
"""Kernels in gradkit/_native without reductions across elements or per-tensor scalar state."""


@dataclass(frozen=True)
class NativeSpec:
    """Which native kernel runs a group: its name (``gk_<kernel>_f32/_f64`` in
    ``gradkit/_native/*.c``), the state keys in the kernel's order, and its scalar arguments."""

    kernel: str
    state: tuple[str, ...]
    hp: tuple[float, ...]


def place_transforms(core: Sequence[Transform], extra: Sequence[Transform]) -> list[Transform]:
    """Insert the user's ``transforms=`` into a named optimizer's chain by their ``stage``.

    ``"gradient"`` transforms (clipping, ...) go before the update rule; ``"update"`` transforms
    (cautious masking, ...) go after it, right before the trailing ``[decay ->] scale_by_lr``;
    ``"wrap"`` transforms (momentum reset) wrap each transform of the update rule.
    """
    before = [t for t in extra if t.stage == "gradient"]
    after = [t for t in extra if t.stage == "update"]
    wrappers = [t for t in extra if t.stage == "wrap"]
    unknown = [t for t in extra if t.stage not in ("gradient", "update", "wrap")]
    if unknown:
        raise ValueError(
            f"Invalid transforms: {unknown!r} (stage must be 'gradient', 'update' or 'wrap')"
        )
    leaves = chain(*core).transforms if core else []
    if not after and not wrappers:
        return [*before, *leaves]
    tail, _ = split_lr_tail(chain(*leaves))
    if tail == len(leaves):
        raise ValueError(
            f"Invalid transforms: {[*after, *wrappers]!r}; this optimizer's chain does not end in a "
            "learning-rate step, so there is no place for update-stage or wrapping transforms "
            "(build a chain instead)"
        )
    body = leaves[:tail]
    for wrapper in wrappers:  # "wrap" transforms (momentum reset) wrap each update-rule transform
        body = [wrapper.wrap(t) for t in body]
    return [*before, *body, *after, *leaves[tail:]]


def torch_only_flags(
    name: str, *, fused: bool | None, capturable: bool = False, differentiable: bool = False
) -> None:
    """Reject torch.optim flags gradkit accepts for signature compatibility but can't honour."""
    for flag, value in (("fused", fused), ("capturable", capturable)):
        if value:
            raise ValueError(
                f"Invalid {flag}: {value!r}; {name} has no {flag} implementation in gradkit yet "
                f"(leave {flag} unset; gradkit always runs multi-tensor kernels)"
            )
    if differentiable:
        raise ValueError(
            f"Invalid differentiable: {differentiable!r}; gradkit optimizers do not support "
            "differentiating through step()"
        )


@dataclass(frozen=True)
class OptimizerInfo:
    """Registry entry: what a user needs to pick an optimizer."""

    name: str
    cls: type
    paper: str
    year: int
    url: str
    defaults: dict[str, Any] = field(repr=False)
    state_bytes_per_param: float
    """Optimizer-state bytes per fp32 parameter at the default hyperparameters (O(1) scalars such
    as step counters excluded)."""

    def bytes_per_param(self, policy: str = "fp32", block_size: int = 256) -> float:
        """Theoretical state bytes per parameter under a ``state_dtype`` policy.

        From the ``state_floats`` parameter-sized tensors: ``fp32`` 4 bytes each, ``bf16`` 2,
        ``q8`` one code byte plus a 4-byte absmax per ``block_size`` values. Tensors under
        ``state_min_numel`` (4,096) stay fp32 in practice, so measured totals of models with many
        small tensors sit slightly above this (see :func:`gradkit.memory.state_bytes`).

        Example:
            >>> import gradkit
            >>> info = {i.name: i for i in gradkit.optim.available()}["AdamW"]
            >>> info.bytes_per_param("fp32"), info.bytes_per_param("bf16"), info.bytes_per_param("q8")
            (8.0, 4.0, 2.03125)
        """
        floats = self.state_bytes_per_param / 4.0
        per_float = {"fp32": 4.0, "bf16": 2.0, "q8": 1.0 + 4.0 / block_size}
        if policy not in per_float:
            raise ValueError(f"Invalid policy: {policy!r} (choose one of 'fp32', 'bf16', 'q8')")
        return floats * per_float[policy]


_REGISTRY: dict[str, OptimizerInfo] = {}
T = TypeVar("T", bound=type)


def register(*, paper: str, year: int, url: str, state_floats: float) -> Callable[[T], T]:
    """Class decorator adding a named optimizer to :func:`available`.

    ``state_floats`` is the number of parameter-sized fp32 state tensors at the defaults.
    """

    def deco(cls: T) -> T:
        cls.paper, cls.year, cls.url = paper, year, url  # type: ignore[attr-defined]
        sig = inspect.signature(cls.__init__)
        defaults = {
            k: p.default
            for k, p in sig.parameters.items()
            if k not in ("self", "params") and p.default is not inspect.Parameter.empty
        }
        _REGISTRY[cls.__name__] = OptimizerInfo(
            cls.__name__, cls, paper, year, url, defaults, 4.0 * state_floats
        )
        return cls

    return deco


def available() -> list[OptimizerInfo]:
    """Every gradkit optimizer with its paper, year, default hyperparameters and state size.

    Example:
        >>> import gradkit
        >>> info = {i.name: i for i in gradkit.optim.available()}
        >>> info["AdamW"].state_bytes_per_param
        8.0
    """
    return list(_REGISTRY.values())
