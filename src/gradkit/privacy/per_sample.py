r"""Per-sample gradients of any ``nn.Module`` with ``torch.func``.

For a batch :math:`(x_b, y_b)_{b=1}^{B}` and a loss :math:`\ell`, the per-sample gradient of
parameter :math:`\theta` is :math:`g_b = \nabla_\theta\, \ell(f(x_b; \theta), y_b)`, computed as if
each example were a batch of one. DP-SGD clips each :math:`g_b` before summing, so it needs them
individually (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv:1607.00133).

How: ``torch.func.vmap(torch.func.grad(loss))`` over the batch dimension, with the module called
through ``torch.func.functional_call`` (parameters as explicit inputs; buffers and frozen
parameters passed unbatched). This works for any layer built from differentiable torch ops,
without a hand-written rule per layer type (Opacus' ``hooks`` mode needs a registered grad
sampler per layer; its ``functorch`` mode does what we do here per layer:
https://github.com/meta-pytorch/opacus, ``opacus/grad_sample/functorch.py``).

Fallback: some modules cannot run under ``vmap`` (data-dependent Python control flow such as
``.item()``, in-place updates of captured buffers, some custom autograd functions). For those a
micro-batching loop (one ``autograd.grad`` per example — the obviously-correct reference Opacus
also tests against) gives the same numbers, slower. ``method="auto"`` tries ``vmap`` and falls back
with a warning that names the error.

Memory: per-sample gradients cost ``B x n_params`` numbers. ``chunk_size`` bounds it: examples are
processed ``chunk_size`` at a time; :func:`iter_per_sample_grads` yields chunk by chunk so that a
consumer (DP-SGD's clipping) never holds more than one chunk.

Each example is run as a batch of one (the input gets a leading dimension of size 1 inside the
vectorised function), so ``loss_fn(output, target)`` sees the shapes it sees in normal training;
its reduction does not matter for a batch of one with a scalar loss per example.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

Inputs = Tensor | tuple[Tensor, ...]
LossFn = Callable[[Any, Tensor], Tensor]
_METHODS = ("auto", "vmap", "loop")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that get gradients (``requires_grad``), by name, in module order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _as_tuple(inputs: Inputs) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _batch_size(inputs: tuple[Tensor, ...], targets: Tensor) -> int:
    sizes = {t.shape[0] for t in inputs} | {targets.shape[0]}
    if len(sizes) != 1:
        raise ValueError(
            f"Invalid batch: inputs and targets disagree on the batch size (got sizes {sorted(sizes)})"
        )
    return sizes.pop()


def _check_options(method: str, chunk_size: int | None) -> None:
    if method not in _METHODS:
        raise ValueError(f"Invalid method: {method!r} (expected one of {_METHODS})")
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"Invalid chunk_size: {chunk_size!r} (must be a positive integer or None)")


def _vmap_chunk(
    model: nn.Module, loss_fn: LossFn, inputs: tuple[Tensor, ...], targets: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update(dict(model.named_buffers()))

    def loss_of_one(
        p: dict[str, Tensor], xs: tuple[Tensor, ...], y: Tensor
    ) -> tuple[Tensor, Tensor]:
        batch_of_one = tuple(x.unsqueeze(0) for x in xs)
        out = torch.func.functional_call(model, {**p, **constants}, batch_of_one)
        loss = loss_fn(out, y.unsqueeze(0))
        return loss, loss.detach()

    # randomness="different": dropout draws an independent mask per example, as in a real batch
    per_example = torch.func.vmap(
        torch.func.grad(loss_of_one, has_aux=True), in_dims=(None, 0, 0), randomness="different"
    )
    grads, losses = per_example(params, inputs, targets)
    return grads, losses


def _loop_chunk(
    model: nn.Module, loss_fn: LossFn, inputs: tuple[Tensor, ...], targets: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    named = trainable_parameters(model)
    rows: dict[str, list[Tensor]] = {n: [] for n in named}
    losses = []
    for b in range(targets.shape[0]):
        loss = loss_fn(model(*(x[b : b + 1] for x in inputs)), targets[b : b + 1])
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        for (n, p), g in zip(named.items(), grads, strict=True):
            rows[n].append(torch.zeros_like(p) if g is None else g)
        losses.append(loss.detach())
    return _stack_rows(named, rows, losses)


def _stack_rows(
    named: dict[str, nn.Parameter], rows: dict[str, list[Tensor]], losses: list[Tensor]
) -> tuple[dict[str, Tensor], Tensor]:
    grads = {
        n: torch.stack(r) if r else p.new_zeros((0, *p.shape))
        for (n, p), r in zip(named.items(), rows.values(), strict=True)
    }
    loss_tensor = torch.stack(losses) if losses else torch.zeros(0)
    return grads, loss_tensor


def iter_per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Inputs,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    method: str = "auto",
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """Yield ``(grads, losses)`` for consecutive chunks of the batch.

    ``grads[name]`` has shape ``[chunk, *param.shape]`` for every trainable parameter; ``losses``
    holds each example's loss. ``chunk_size=None`` is one chunk (the whole batch). An empty batch
    yields nothing.
    """
    _check_options(method, chunk_size)
    xs = _as_tuple(inputs)
    size = _batch_size(xs, targets)
    step = size if chunk_size is None else chunk_size
    use_vmap = method in ("auto", "vmap")
    for start in range(0, size, max(step, 1)):
        chunk_x = tuple(x[start : start + step] for x in xs)
        chunk_y = targets[start : start + step]
        if use_vmap:
            try:
                yield _vmap_chunk(model, loss_fn, chunk_x, chunk_y)
                continue
            except Exception as err:  # torch.func raises several types; re-raised unless auto
                if method == "vmap":
                    raise
                warnings.warn(
                    f"per-sample gradients: vmap failed ({type(err).__name__}: {err}); "
                    "falling back to a per-example loop",
                    RuntimeWarning,
                    stacklevel=2,
                )
                use_vmap = False
        yield _loop_chunk(model, loss_fn, chunk_x, chunk_y)


def per_sample_grads(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Inputs,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    method: str = "auto",
) -> dict[str, Tensor]:
    """Per-sample gradients ``{name: Tensor[B, *param.shape]}`` of every trainable parameter.

    :param model: any module; called as ``model(*inputs)`` on batches of one example.
    :param loss_fn: ``loss_fn(output, target) -> scalar`` (e.g. ``F.cross_entropy``).
    :param inputs: a tensor or a tuple of tensors, batch in dimension 0.
    :param targets: a tensor, batch in dimension 0.
    :param chunk_size: examples per vectorised call (bounds peak memory); ``None``: all at once.
    :param method: ``"auto"`` (vmap, loop if vmap fails), ``"vmap"`` or ``"loop"``.

    >>> import torch, torch.nn.functional as F
    >>> from gradkit.privacy import per_sample_grads
    >>> net = torch.nn.Linear(3, 2)
    >>> g = per_sample_grads(net, F.cross_entropy, torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    >>> tuple(g["weight"].shape), tuple(g["bias"].shape)
    ((5, 2, 3), (5, 2))
    """
    named = trainable_parameters(model)
    parts: dict[str, list[Tensor]] = {n: [] for n in named}
    for grads, _ in iter_per_sample_grads(
        model, loss_fn, inputs, targets, chunk_size=chunk_size, method=method
    ):
        for n in named:
            parts[n].append(grads[n])
    return {
        n: torch.cat(parts[n]) if parts[n] else p.new_zeros((0, *p.shape)) for n, p in named.items()
    }
