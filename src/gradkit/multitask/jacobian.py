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
    jac, own = _task_gradients(losses, shared, groups, batched, retain_graph)
    jac = jac.detach()
    direction = aggregator(jac)
    offset = 0
    for p in shared:
        _accumulate(p, direction[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    for group, grads in zip(groups, own, strict=False):
        for p, g in zip(group, grads, strict=False):
            _accumulate(p, g)
    return jac
