"""The adapter that turns any chain of transforms into a real ``torch.optim.Optimizer``."""

from __future__ import annotations

import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from gradkit.core.guards import GroupGrads, NonFiniteGuard, StepGuard
from gradkit.core.transform import Chain, Context, Segment, Transform, When, chain
from gradkit.core.validation import check_choice
from gradkit.transforms.basic import AddDecayedWeights, ScaleByLR

NONFINITE_POLICIES = ("skip", "raise", "apply")
STATE_DTYPES = ("fp32", "bf16", "q8")
LOW_PRECISION = (torch.bfloat16, torch.float16)
# Storage-policy group keys besides ``state_dtype`` (see gradkit.memory.storage), optional.
_STORAGE_KEYS = ("state_block_size", "state_min_numel", "state_chunk_numel", "stochastic_rounding")
# Group keys the adapter owns; they are not hyperparameters of any transform.
_ADAPTER_KEYS = ("nonfinite", "foreach", "fused", "state_dtype", *_STORAGE_KEYS)


class ChainOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a :class:`~gradkit.core.Transform` chain.

    Every gradkit optimizer is one of these. It behaves like torch's own optimizers: param groups
    carry per-group hyperparameters (the transforms read them at each step, so LR schedulers work
    unchanged), ``state_dict()`` / ``load_state_dict()`` use torch's format and resume bit-exactly,
    ``step(closure)``, ``zero_grad`` and step hooks come from the base class.

    State lives in ``optimizer.state[p]`` under namespaced keys (``"adam.exp_avg"``), plus
    ``"step"`` (a float32 CPU scalar tensor, as in torch) counting the updates of that parameter.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        transform: the transform (or chain) to run.
        nonfinite: what to do when a group's gradients hold NaN/inf: ``"skip"`` (default; the
            group's step is skipped, parameters and state untouched, ``group["nonfinite_skips"]``
            increments and a warning is emitted once), ``"raise"`` (``NonFiniteGradientError``
            naming the parameter; nothing is modified), or ``"apply"`` (no check, fastest).
        **hyperparams: values overriding the transforms' defaults for every group.

        state_dtype: how state tensors are stored: ``"fp32"`` (default), ``"bf16"`` (stochastic
            rounding on write) or ``"q8"`` (block-wise 8-bit); also a param-group key. The update
            rule always computes in fp32; see :mod:`gradkit.memory.storage` for the details and
            the optional group keys ``state_block_size``, ``state_min_numel``,
            ``state_chunk_numel`` and ``stochastic_rounding``.

    Parameters in bfloat16/float16 are updated through an fp32 copy and keep fp32 state (or the
    ``state_dtype`` policy's); with the group key ``stochastic_rounding=True`` bf16 parameters
    are written back with stochastic rounding. Parameters without ``.grad`` are skipped; sparse
    gradients raise ``RuntimeError``.

    Example:
        >>> import torch, gradkit
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = gradkit.ChainOptimizer(
        ...     model.parameters(), gradkit.chain(gradkit.trace(), gradkit.scale_by_lr()),
        ...     lr=0.1, momentum=0.9,
        ... )
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> _ = opt.step()
    """

    fuse_apply: bool = True
    """Apply a trailing ``[decay ->] scale_by_lr`` in place (see ``_apply_lr_step``); False runs
    the readable path, every transform materializing its output (tests compare the two)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        transform: Transform,
        *,
        nonfinite: str = "skip",
        state_dtype: str = "fp32",
        **hyperparams: Any,
    ) -> None:
        self.transform: Chain = transform if isinstance(transform, Chain) else chain(transform)
        unknown = sorted(set(hyperparams) - set(self.transform.defaults) - set(_ADAPTER_KEYS))
        if unknown:
            raise TypeError(
                f"unexpected hyperparameter(s) {unknown}; this chain takes "
                f"{sorted(self.transform.defaults)}"
            )
        defaults = {
            **self.transform.defaults,
            **hyperparams,
            "nonfinite": nonfinite,
            "state_dtype": state_dtype,
        }
        self._validate(defaults)
        self.storage_generator = torch.Generator().manual_seed(0)
        """Draws the stochastic rounding of bf16 state / parameters; saved in ``state_dict``."""
        self._body, self._decay = split_lr_tail(self.transform)
        self.guards: list[StepGuard] = [NonFiniteGuard()]
        self.skip_log: deque[dict[str, Any]] = deque(maxlen=1000)
        self._warned: set[str] = set()
        self._step_count = 0
        super().__init__(params, defaults)

    # -- construction ---------------------------------------------------------------------
    def _validate(self, hp: Mapping[str, Any]) -> None:
        check_choice(hp, "nonfinite", NONFINITE_POLICIES)
        check_storage(hp)
        self.transform.validate(hp)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate(group)
        except ValueError:
            self.param_groups.pop()
            raise
        for guard in getattr(self, "guards", [NonFiniteGuard()]):
            group.setdefault(f"{guard.name}_skips", 0)

    def add_guard(self, guard: StepGuard) -> StepGuard:
        """Run ``guard`` after the built-in non-finite check on every step (see
        :mod:`gradkit.core.guards`); returns it. Its state is saved in ``state_dict()``."""
        if any(g.name == guard.name for g in self.guards):
            raise ValueError(f"a guard named {guard.name!r} is already registered")
        self.guards.append(guard)
        for group in self.param_groups:
            group.setdefault(f"{guard.name}_skips", 0)
        return guard

    # -- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_count += 1
        candidates = []
        for index, group in enumerate(self.param_groups):
            group_params, group_grads = _with_grads(group)
            if group_params:
                candidates.append(GroupGrads(index, group, group_params, group_grads))
        deferred = self._deferred_checks(candidates)
        skipped = self._run_guards(candidates, loss, deferred)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        segments: list[Segment] = []
        names: list[str | None] = []
        for gg in candidates:
            if gg.index in skipped:
                continue
            start = len(params)
            params += gg.params
            grads += gg.grads
            names += _names(gg.group, gg.params)
            segments.append(Segment(start, len(params), gg.group))
        if params:
            self._checking = {id(gg.group) for gg in candidates if gg.index in deferred}
            try:
                self._update(params, grads, segments, names)
            finally:
                self._checking = set()
        return loss

    def _run_guards(
        self, candidates: list[GroupGrads], loss: Any, deferred: set[int] = frozenset()
    ) -> set[int]:
        """Ask every guard in turn; record, count and warn (once per guard) for each skip.
        The built-in non-finite guard leaves out the ``deferred`` groups (checked in the step)."""
        value = float(loss) if isinstance(loss, (Tensor, float, int)) else None
        skipped: set[int] = set()
        for guard in self.guards:
            active = [gg for gg in candidates if gg.index not in skipped]
            if isinstance(guard, NonFiniteGuard):
                active = [gg for gg in active if gg.index not in deferred]
            if not active:
                continue
            for index, reason in guard.check(active, value).items():
                skipped.add(index)
                self._record_skip(index, guard.name, reason)
        return skipped

    def _record_skip(self, index: int, guard: str, reason: str) -> None:
        """Count, log and (once per guard) warn about a skipped group step."""
        group = self.param_groups[index]
        group[f"{guard}_skips"] = group.get(f"{guard}_skips", 0) + 1
        self.skip_log.append(
            {"step": self._step_count, "group": index, "guard": guard, "reason": reason}
        )
        if guard not in self._warned:
            self._warned.add(guard)
            warnings.warn(
                f"{reason}: step skipped for that group (parameters and state untouched; "
                f"see group['{guard}_skips'] and optimizer.skip_log). "
                "This warning is shown once.",
                RuntimeWarning,
                stacklevel=_outside_stacklevel(),
            )

    # -- the non-finite check inside a fused step -------------------------------------------
    _checking: set[int] = frozenset()  # type: ignore[assignment]
    """``id`` of the groups whose non-finite check this step's fast path does (see below)."""

    def _deferred_checks(self, candidates: list[GroupGrads]) -> set[int]:
        """Groups whose ``nonfinite="skip"`` check the fused step does itself.

        A kernel whose first pass reads every gradient of a group, read-only, before anything
        is written (a norm, a maximum) learns from those sums whether a gradient is NaN/inf; the
        guard's own read of the gradients would then be a second one. Only when the built-in
        guard is the only guard (a later guard must see the groups the check left), the policy
        is ``"skip"`` and the group's state exists (so a skip restores it by undoing the step
        count) and is stored uncompressed.
        """
        if (
            len(self.guards) != 1
            or self._stores_compressed
            or any(_compresses(gg.group) for gg in candidates)
        ):
            return set()
        return {
            gg.index
            for gg in candidates
            if gg.group["nonfinite"] == "skip"
            and self._checks_in_step(gg.group, gg.params, gg.grads)  # False at once for most
            and all(self.state[p] for p in gg.params)
        }

    def _checks_in_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> bool:
        """Whether this step's fast path will read all of ``group``'s gradients in a read-only
        first pass and call :meth:`_skip_late` when its sums are not finite (False here)."""
        del group, params, grads
        return False

    def _skip_late(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> bool:
        """The deferred check of one group, after its first pass saw a non-finite sum: the exact
        test (a sum overflows for huge finite float64 values, and non-finite parameters make it
        NaN too). True when a gradient is NaN/inf: the step counts incremented for this step
        are restored, the skip is recorded as the guard would, and the caller writes nothing."""
        from gradkit.core.guards import nonfinite_indices

        if not nonfinite_indices(grads):
            return False
        for p in params:
            self.state[p]["step"] -= 1
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        self._record_skip(index, "nonfinite", f"non-finite gradient in param group {index}")
        return True

    def _update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        segments: list[Segment],
        names: list[str | None] | None = None,
    ) -> None:
        if self._stores_compressed or any(_compresses(seg.hp) for seg in segments):
            from gradkit.memory.storage import update_with_storage

            self._stores_compressed = True
            update_with_storage(self, params, grads, segments, names or [])
            return
        work = [p.float() if p.dtype in LOW_PRECISION else p for p in params]
        grads = [
            g if g.dtype == w.dtype else g.to(w.dtype) for g, w in zip(grads, work, strict=True)
        ]
        self._init_state(params, work, segments)
        step_tensors = [self.state[p]["step"] for p in params]
        torch._foreach_add_(step_tensors, 1.0)
        rest = self._fast_step(params, work, grads, segments)
        if self._checking:  # a deferred check the fast path did not run: run it now
            rest = [
                seg
                for seg in rest
                if id(seg.hp) not in self._checking
                or not self._skip_late(
                    seg.hp, params[seg.start : seg.stop], grads[seg.start : seg.stop]
                )
            ]
        if len(rest) == len(segments):
            self._run_chain(params, work, grads, segments, step_tensors, names or [])
        elif rest:
            self._run_chain(*restrict(rest, params, work, grads, step_tensors, names))
        for p, w in zip(params, work, strict=True):
            if w is not p:
                p.copy_(w)

    def _run_chain(
        self,
        params: list[Tensor],
        work: list[Tensor],
        grads: list[Tensor],
        segments: list[Segment],
        step_tensors: list[Tensor],
        names: list[str | None],
        state: dict[str, list[Tensor]] | None = None,
    ) -> None:
        steps = [int(s.item()) for s in step_tensors]
        ctx = Context(segments, steps, grads, names=names)
        body = self._body if self.fuse_apply else len(self.transform.transforms)
        if state is None:
            state = self._gather_state(params)
        updates = self.transform.run(list(grads), state, work, ctx, body)
        if body == len(self.transform.transforms):
            torch._foreach_add_(work, updates)
        else:
            self._apply_lr_step(work, updates, segments)

    def _fast_step(
        self,
        params: list[Tensor],
        work: list[Tensor],
        grads: list[Tensor],
        segments: list[Segment],
        state: dict[str, list[Tensor]] | None = None,
    ) -> list[Segment]:
        """Hook for whole-step fused kernels: update the segments (param groups) a kernel can
        handle and return the others, which then run the chain.

        Called after state exists and step counts are incremented. A kernel must produce the same
        parameters and the same state (under the same keys) as the chain; ``work`` holds the
        tensors to update (fp32 copies of low-precision parameters). ``state`` (key -> one
        tensor per parameter) is given when the state to update is not ``self.state`` itself:
        the decoded fp32 copies of compressed state (see :mod:`gradkit.memory.storage`).
        """
        del params, work, grads, state
        return segments

    def _apply_lr_step(
        self, work: list[Tensor], updates: list[Tensor], segments: list[Segment]
    ) -> None:
        """``[add_decayed_weights ->] scale_by_lr`` at the end of a chain, applied in place.

        Same result as ``p += -lr * (u + wd * p)`` but written ``p *= 1 - lr*wd; p += -lr * u``:
        torch's operation order (so AdamW & co. match torch to rounding) and two fewer
        parameter-sized temporaries.
        """
        for seg in segments:
            lr = float(seg.hp["lr"])
            params, ups = work[seg.start : seg.stop], updates[seg.start : seg.stop]
            wd = _decay_rate(self._decay, seg.hp) if self._decay is not None else 0.0
            if wd != 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, ups, alpha=-lr)

    def _init_state(
        self, params: list[Tensor], work: list[Tensor], segments: list[Segment]
    ) -> None:
        for seg in segments:
            fresh = [i for i in range(seg.start, seg.stop) if not self.state[params[i]]]
            if not fresh:
                continue
            new = self.transform.init([work[i] for i in fresh], seg.hp)
            for j, i in enumerate(fresh):
                entry = self.state[params[i]]
                # a fused kernel reads the step on the parameter's device (as torch's does)
                device = params[i].device if seg.hp.get("fused") else None
                entry["step"] = torch.tensor(0.0, dtype=torch.float32, device=device)
                for key, tensors in new.items():
                    entry[key] = tensors[j]

    def _gather_state(self, params: list[Tensor]) -> dict[str, list[Tensor]]:
        keys: dict[str, None] = {}
        for p in params:
            keys.update(dict.fromkeys(self.state[p]))
        keys.pop("step", None)
        return {k: [self.state[p].get(k) for p in params] for k in keys}  # type: ignore[misc]

    # -- state access outside step() --------------------------------------------------------
    _stores_compressed = False  # set once a group's policy compresses state (then stays on)

    def read_state(self, p: Tensor, key: str) -> Tensor:
        """``self.state[p][key]`` as fp32: the stored tensor itself, or a decoded copy when the
        storage policy keeps it compressed (then write changes back with :meth:`write_state`)."""
        stored = self.state[p][key]
        if not self._stores_compressed:
            return stored
        from gradkit.memory.storage import decode

        return decode(self.state[p], key)

    def write_state(self, p: Tensor, key: str, value: Tensor) -> None:
        """Store ``value`` (from :meth:`read_state`) as ``self.state[p][key]`` under ``p``'s
        group's storage policy; a no-op when ``value`` already is the stored tensor."""
        if not self._stores_compressed:
            if value is not self.state[p].get(key):
                self.state[p][key] = value
            return
        from gradkit.memory.storage import write_state

        write_state(self, p, key, value)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus a ``"gradkit"`` entry: guard state, skip log, step count, and
        the state of :attr:`storage_generator`. Compressed state is saved as stored (codes and
        block maxima)."""
        sd = super().state_dict()
        sd["gradkit"] = {
            "guards": {g.name: g.state_dict() for g in self.guards},
            "skip_log": list(self.skip_log),
            "step_count": self._step_count,
            "storage_rng": self.storage_generator.get_state(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch, but keep each state tensor's saved dtype.

        torch casts floating state to the parameter's dtype, which would round the fp32 state of
        bf16 parameters; resuming must be bit-exact, so the saved dtype wins.

        Storage-policy keys (``state_dtype``, ...) are not taken from the checkpoint: this
        optimizer's own policy wins, and state saved under another policy is converted (see
        :mod:`gradkit.memory.storage`).
        """
        storage = [
            {k: g[k] for k in ("state_dtype", *_STORAGE_KEYS) if k in g} for g in self.param_groups
        ]
        super().load_state_dict(state_dict)
        for group, keep in zip(self.param_groups, storage, strict=True):
            for key in ("state_dtype", *_STORAGE_KEYS):
                group.pop(key, None)
            group.update(keep)
        extra = state_dict.get("gradkit", {})
        if "storage_rng" in extra:
            self.storage_generator.set_state(extra["storage_rng"].to("cpu", torch.uint8))
        for guard in self.guards:
            if guard.name in extra.get("guards", {}):
                guard.load_state_dict(extra["guards"][guard.name])
        self.skip_log = deque(extra.get("skip_log", []), maxlen=self.skip_log.maxlen)
        self._step_count = extra.get("step_count", 0)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                current = self.state[p].get(key)
                if (
                    isinstance(value, Tensor)
                    and current is not None
                    and current.dtype != value.dtype
                ):
                    self.state[p][key] = value.to(device=p.device, copy=True)
        self._convert_storage()

    def _convert_storage(self) -> None:
        from gradkit.memory.storage import convert_all, has_compressed_state

        compresses = any(_compresses(g) for g in self.param_groups)
        if compresses or has_compressed_state(self):
            convert_all(self)
        self._stores_compressed = compresses or has_compressed_state(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def _outside_stacklevel() -> int:
    """``warnings.warn``'s stacklevel, called from the function calling this one, that points
    at the first frame outside gradkit and torch (the user's ``step()`` call, however deep in
    the step the warning is raised)."""
    frame, level = sys._getframe(1), 1  # the caller of warn: stacklevel 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("gradkit.", "torch.")
    ):
        frame, level = frame.f_back, level + 1
    return level


def check_storage(hp: Mapping[str, Any]) -> None:
    """Validate the storage-policy keys of a group (see :mod:`gradkit.memory.storage`)."""
    if "state_dtype" in hp:
        check_choice(hp, "state_dtype", STATE_DTYPES)
    for key, low in (("state_block_size", 1), ("state_min_numel", 0), ("state_chunk_numel", 0)):
        value = hp.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"Invalid {key}: {value!r} (must be an integer >= {low})")
    if not isinstance(hp.get("stochastic_rounding", False), bool):
        raise ValueError(
            f"Invalid stochastic_rounding: {hp['stochastic_rounding']!r} (expected True or False)"
        )
    if hp.get("fused") and hp.get("state_dtype", "fp32") != "fp32":
        raise ValueError(
            f"Invalid state_dtype: {hp['state_dtype']!r} with fused=True (the fused kernel keeps "
            "fp32 state; drop fused or use state_dtype='fp32')"
        )


def _compresses(hp: Mapping[str, Any]) -> bool:
    """Whether a group's policy needs the storage path (compressed state or stochastic params)."""
    return hp.get("state_dtype", "fp32") != "fp32" or bool(hp.get("stochastic_rounding"))


def split_lr_tail(chain_: Chain) -> tuple[int, Transform | None]:
    """How many leading transforms come before the chain's trailing ``[decay ->] scale_by_lr``.

    A chain ending in ``scale_by_lr`` (optionally preceded by decoupled weight decay) is applied
    by :meth:`ChainOptimizer._apply_lr_step`; any other chain's updates are added as they are.
    """
    ts = chain_.transforms
    if not ts or not isinstance(ts[-1], ScaleByLR):
        return len(ts), None
    if len(ts) >= 2 and _decay_rate(ts[-2], None) is not None:
        return len(ts) - 2, ts[-2]
    return len(ts) - 1, None


def _decay_rate(t: Transform, hp: Mapping[str, Any] | None) -> float | None:
    """Weight decay ``t`` adds in a group; None if ``t`` is not a decay (hp=None only asks)."""
    if isinstance(t, AddDecayedWeights):
        return 0.0 if hp is None else t.rate(hp)
    if isinstance(t, When) and isinstance(t.inner, AddDecayedWeights):
        if hp is None:
            return 0.0
        return t.inner.rate(hp) if hp[t.flag] == t.value else 0.0
    return None


def _with_grads(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(
                "gradkit optimizers do not support sparse gradients; use torch.optim.SparseAdam "
                "or a dense embedding (nn.Embedding(sparse=False))"
            )
        params.append(p)
        grads.append(p.grad)
    return params, grads


def restrict_state(
    segments: list[Segment], state: dict[str, list[Tensor]]
) -> dict[str, list[Tensor]]:
    """``state`` (key -> one tensor per parameter) restricted to ``segments``, as ``restrict``."""
    keep = [i for seg in segments for i in range(seg.start, seg.stop)]
    return {key: [values[i] for i in keep] for key, values in state.items()}


def restrict(
    segments: list[Segment],
    params: list[Tensor],
    work: list[Tensor],
    grads: list[Tensor],
    step_tensors: list[Tensor],
    names: list[str | None] | None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Segment], list[Tensor], list[str | None]]:
    """The arguments of ``_run_chain`` restricted to ``segments`` (re-indexed), in its order."""
    out: tuple[list, list, list, list, list, list] = ([], [], [], [], [], [])
    sub_params, sub_work, sub_grads, sub_segments, sub_steps, sub_names = out
    for seg in segments:
        sl = slice(seg.start, seg.stop)
        start = len(sub_params)
        sub_params += params[sl]
        sub_work += work[sl]
        sub_grads += grads[sl]
        sub_steps += step_tensors[sl]
        sub_names += names[sl] if names else [None] * (seg.stop - seg.start)
        sub_segments.append(Segment(start, len(sub_params), seg.hp))
    return out


def _names(group: dict[str, Any], params: list[Tensor]) -> list[str | None]:
    names = group.get("param_names")
    if not names:
        return [None] * len(params)
    by_id = {id(p): n for p, n in zip(group["params"], names, strict=True)}
    return [by_id[id(p)] for p in params]
