"""Per-task gradients over shared parameters, aggregated into ``.grad``.

The API mirrors TorchJD's ``mtl_backward`` + ``jac_to_grad`` (https://github.com/TorchJD/torchjd,
``src/torchjd/autojac/``) in one call, with the aggregation done on parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from gradkit.multitask._base import Aggregator


def _accumulate(param: Tensor, grad: Tensor) -> None:
    grad = grad.detach().to(param.dtype)
    if param.grad is None:
        param.grad = grad.clone()
    else:
        param.grad.add_(grad)


def _check_inputs(losses, shared, task_params):
    if len(losses) == 0:
        raise ValueError("losses is empty")
    for i, loss in enumerate(losses):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor")
    if not shared:
        raise ValueError("shared_params is empty")
    if task_params is not None and len(task_params) != len(losses):
        raise ValueError(
            f"task_params has {len(task_params)} lists, expected one per loss ({len(losses)})"
        )
    seen = {id(p) for p in shared}
    for group in task_params or ():
        for p in group:
            if id(p) in seen:
                raise ValueError("a parameter appears twice in shared_params / task_params")
            seen.add(id(p))


def jacobian(
    losses: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    batched: bool = False,
    retain_graph: bool = False,
) -> Tensor:
    """The Jacobian ``J`` ([m, n]) of the scalar ``losses`` w.r.t. the flattened ``params``.

    ``batched=False``: one ``autograd.grad`` per loss (retaining the graph between them).
    ``batched=True``: a single vectorised call (``is_grads_batched=True``, i.e. ``torch.vmap``
    over the backward pass with the rows of the identity as ``grad_outputs``).
    """
    losses = list(losses)
    return _task_gradients(losses, list(params), [[] for _ in losses], batched, retain_graph)[0]


def _task_gradients(losses, shared, task_params, batched, retain_graph):
    m = len(losses)
    if batched:
        extra = [p for group in task_params for p in group]
        stacked = torch.stack([loss.reshape(()) for loss in losses])
        eye = torch.eye(m, dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked,
            shared + extra,
            grad_outputs=eye,
            retain_graph=retain_graph,
            allow_unused=True,
            materialize_grads=True,
            is_grads_batched=True,
        )
        jac = torch.cat([g.reshape(m, -1) for g in grads[: len(shared)]], dim=1)
        own, start = [], len(shared)
        for i, group in enumerate(task_params):
            own.append([g[i] for g in grads[start : start + len(group)]])
            start += len(group)
        return jac, own
    rows, own = [], []
    for i, loss in enumerate(losses):
        inputs = shared + list(task_params[i])
        keep = retain_graph or i < m - 1
        grads = torch.autograd.grad(
            loss, inputs, retain_graph=keep, allow_unused=True, materialize_grads=True
        )
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        own.append(list(grads[len(shared) :]))
    return torch.stack(rows), own


def backward(
    losses: Sequence[Tensor],
    shared_params: Iterable[Tensor],
    aggregator: Aggregator,
    *,
    task_params: Sequence[Iterable[Tensor]] | None = None,
    batched: bool = False,
    retain_graph: bool = False,
    representation: Tensor | None = None,
) -> Tensor:
    """Aggregate the task gradients over ``shared_params`` and accumulate them into ``.grad``.

    Computes the Jacobian ``J`` (row ``i`` = gradient of ``losses[i]`` over the flattened
    ``shared_params``), writes ``aggregator(J)`` reshaped into the shared parameters' ``.grad``
    (adding to existing gradients, as ``Tensor.backward`` does) and gives each parameter of
    ``task_params[i]`` the gradient of ``losses[i]`` alone. Returns ``J`` (detached), e.g. for
    :func:`gradkit.multitask.metrics.conflict_metrics`.

    :param batched: compute ``J`` in one vectorised backward (``is_grads_batched=True``) instead
        of one backward per task. Both give the same numbers; which is faster depends on the model.
    :param retain_graph: keep the graph after the call.
    :param representation: the shared encoder's output ``z`` (in the graph). When given, ``J`` is
        taken w.r.t. ``z`` instead of the parameters (MGDA-UB, Sener & Koltun 2018, and LibMTL's
        ``rep_grad``): the aggregated representation gradient is back-propagated through the
        encoder once. Much cheaper when ``z`` is smaller than the shared parameters; it is an
        approximation (the encoder's Jacobian is applied after aggregation) — MGDA-UB's bound
        holds for MGDA, other aggregators lose their parameter-space guarantees. The returned
        ``J`` is then [m, z.numel()].

    Example::

        feats = trunk(x)
        losses = [loss_fn(head(feats), y) for head, y in zip(heads, targets)]
        backward(losses, trunk.parameters(), UPGrad(),
                 task_params=[h.parameters() for h in heads])
        opt.step(); opt.zero_grad()
    """
    losses = list(losses)
    shared = list(shared_params)
    groups = None if task_params is None else [list(g) for g in task_params]
    _check_inputs(losses, shared, groups)
    groups = groups if groups is not None else [[] for _ in losses]
    if representation is not None:
        return _representation_backward(
            losses, shared, aggregator, groups, representation, batched, retain_graph
        )
    jac, own = _task_gradients(losses, shared, groups, batched, retain_graph)
    jac = jac.detach()
    write_direction(shared, aggregator(jac))
    for group, grads in zip(groups, own, strict=False):
        for p, g in zip(group, grads, strict=False):
            _accumulate(p, g)
    return jac


def write_direction(params: Sequence[Tensor], direction: Tensor) -> None:
    """Accumulate the flat ``direction`` ([n]) into the ``.grad`` of ``params`` (in order)."""
    total = sum(p.numel() for p in params)
    if direction.dim() != 1 or direction.numel() != total:
        raise ValueError(
            f"Invalid direction: shape {tuple(direction.shape)}, expected [{total}] for the params"
        )
    offset = 0
    for p in params:
        _accumulate(p, direction[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _representation_backward(losses, shared, aggregator, groups, rep, batched, retain_graph):
    """MGDA-UB style: aggregate the task gradients w.r.t. the shared representation ``rep`` (one
    row of ``J`` per task, over ``rep``'s entries), then back-propagate the aggregated
    representation gradient through the shared encoder once."""
    if not isinstance(rep, Tensor) or not rep.requires_grad:
        raise ValueError("representation must be a tensor in the graph (requires_grad=True)")
    jac, own = _task_gradients(losses, [rep], groups, batched, retain_graph=True)
    jac = jac.detach()
    direction = aggregator(jac).view_as(rep).to(rep.dtype)
    grads = torch.autograd.grad(
        rep, shared, grad_outputs=direction, retain_graph=retain_graph, allow_unused=True,
        materialize_grads=True,
    )  # fmt: skip
    for p, g in zip(shared, grads, strict=True):
        _accumulate(p, g)
    for group, task_grads in zip(groups, own, strict=False):
        for p, g in zip(group, task_grads, strict=False):
            _accumulate(p, g)
    return jac


class TaskGradientAccumulator:
    """Accumulate per-task gradients over micro-batches, then aggregate once (GCond-style).

    Each :meth:`add` differentiates the given task losses of one micro-batch over ``shared_params``
    and adds them to that task's running sum; :meth:`jacobian` returns the per-task **means**
    (each task divided by the number of micro-batches it was seen in) and :meth:`backward` writes
    ``aggregator(J)`` into ``.grad`` and starts a new accumulation. Aggregating after accumulation
    resolves conflicts between low-noise gradients instead of single noisy micro-batches (GCond,
    arXiv:2509.07252). Task-specific parameters (``task_params``) accumulate their own task's
    gradient directly into ``.grad`` (same means).

    :meth:`next_task` gives the stochastic schedule of GCond's official code: with ``k``
    micro-batches per step and ``m`` tasks (``k`` divisible by ``m``), task 0 for the first
    ``k/m`` micro-batches, then task 1, ... — compute only that task's loss.
    """

    def __init__(
        self,
        shared_params: Iterable[Tensor],
        num_tasks: int,
        *,
        task_params: Sequence[Iterable[Tensor]] | None = None,
    ):
        self.shared = list(shared_params)
        if not self.shared:
            raise ValueError("shared_params is empty")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"Invalid num_tasks: {num_tasks!r} (must be an integer >= 1)")
        self.num_tasks = num_tasks
        self.task_params = [list(g) for g in task_params] if task_params is not None else None
        if self.task_params is not None and len(self.task_params) != num_tasks:
            raise ValueError(
                f"task_params has {len(self.task_params)} lists, expected num_tasks={num_tasks}"
            )
        self.reset()

    def reset(self) -> None:
        self.sums: list[Tensor | None] = [None] * self.num_tasks
        self.own: list[list[Tensor] | None] = [None] * self.num_tasks
        self.counts = [0] * self.num_tasks
        self.micro_batches = 0

    def next_task(self, accumulation_steps: int) -> int:
        """The task whose loss the next micro-batch computes in stochastic mode."""
        if accumulation_steps % self.num_tasks != 0:
            raise ValueError(
                f"Invalid accumulation_steps: {accumulation_steps} (must be divisible by the "
                f"number of tasks, {self.num_tasks}, in stochastic mode)"
            )
        per_task = accumulation_steps // self.num_tasks
        return (self.micro_batches // per_task) % self.num_tasks

    def add(self, losses: Sequence[Tensor], tasks: Sequence[int] | None = None) -> None:
        """Add the gradients of ``losses`` (one per task in ``tasks``; all tasks by default)."""
        losses = list(losses)
        tasks = list(range(self.num_tasks)) if tasks is None else list(tasks)
        if len(tasks) != len(losses):
            raise ValueError(f"got {len(losses)} losses for {len(tasks)} tasks")
        for t in tasks:
            if not 0 <= t < self.num_tasks:
                raise ValueError(f"Invalid task index: {t} (num_tasks={self.num_tasks})")
        own_params = [self.task_params[t] if self.task_params else [] for t in tasks]
        jac, own = _task_gradients(losses, self.shared, own_params, False, False)
        for row, t, grads in zip(jac.detach(), tasks, own, strict=True):
            self.sums[t] = row.clone() if self.sums[t] is None else self.sums[t].add_(row)
            if self.own[t] is None:
                self.own[t] = [g.detach().clone() for g in grads]
            else:
                for acc, g in zip(self.own[t], grads, strict=True):
                    acc.add_(g.detach())
            self.counts[t] += 1
        self.micro_batches += 1

    def jacobian(self) -> Tensor:
        """Per-task mean gradients, shape [m, n]; tasks never seen raise (no silent zeros)."""
        missing = [t for t, c in enumerate(self.counts) if c == 0]
        if missing:
            raise ValueError(f"no gradient was accumulated for task(s) {missing}")
        return torch.stack([s / c for s, c in zip(self.sums, self.counts, strict=True)])

    def backward(self, aggregator: Aggregator) -> Tensor:
        """Write ``aggregator(J)`` (and the task parameters' mean gradients) into ``.grad``,
        reset, and return ``J``."""
        jac = self.jacobian()
        write_direction(self.shared, aggregator(jac))
        for t, grads in enumerate(self.own):
            for p, g in zip(self.task_params[t] if self.task_params else [], grads, strict=True):
                _accumulate(p, g / self.counts[t])
        self.reset()
        return jac
