r"""``ScheduleLR``: drive ``group["lr"]`` of any torch optimizer from plain schedule callables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

ScheduleFn = Callable[[int], float]

#: configuration held by the scheduler object, never put into its state_dict
_CONFIG_KEYS = ("optimizer", "schedules")


class ScheduleLR(LRScheduler):
    r"""A :class:`torch.optim.lr_scheduler.LRScheduler` that sets each group's learning rate from
    a schedule callable ``t -> value`` at ``t = last_epoch`` (the number of ``step()`` calls).

    * ``multiply=True`` (default): ``lr = initial_lr * schedule(t)``, like
      :class:`torch.optim.lr_scheduler.LambdaLR` (schedules built with ``peak=1.0``).
    * ``multiply=False``: ``lr = schedule(t)`` (schedules built with ``peak=<learning rate>``).

    ``schedules`` is one callable for every group or a sequence with one per param group. Works
    with any :class:`torch.optim.Optimizer` (gradkit's or torch's) and inside torch's
    :class:`~torch.optim.lr_scheduler.SequentialLR`, which restarts it at ``t = 0`` at its
    milestone. The learning rate is a closed form of ``t``, so, as with ``LambdaLR``, placing it
    after a multiplicative scheduler in a ``ChainedScheduler`` overrides that scheduler.

    ``state_dict()`` holds the step count and base learning rates (plain numbers, loadable with
    ``torch.load(weights_only=True)``); the schedules are configuration, rebuilt by your code like
    ``LambdaLR``'s functions, and are not saved.

    Example:
        >>> import torch
        >>> from gradkit.schedules import CosineDecay, ScheduleLR
        >>> opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.5)
        >>> sched = ScheduleLR(opt, CosineDecay(total_steps=4, warmup_steps=2))
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     sched.step()
        >>> [round(lr, 4) for lr in lrs]
        [0.0, 0.25, 0.5, 0.25, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedules: ScheduleFn | Sequence[ScheduleFn],
        *,
        multiply: bool = True,
        last_epoch: int = -1,
    ) -> None:
        groups = len(optimizer.param_groups)
        if callable(schedules):
            schedules = [schedules] * groups
        else:
            schedules = list(schedules)
            if len(schedules) != groups:
                raise ValueError(
                    f"Invalid schedules: {len(schedules)} given for {groups} param groups "
                    "(pass one callable, or one per param group)"
                )
            for i, fn in enumerate(schedules):
                if not callable(fn):
                    raise ValueError(f"Invalid schedules[{i}]: {fn!r} (expected a callable)")
        if not isinstance(multiply, bool):
            raise ValueError(f"Invalid multiply: {multiply!r} (expected True or False)")
        self.schedules = schedules
        self.multiply = multiply
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        step = self.last_epoch
        if self.multiply:
            return [
                base_lr * fn(step)
                for fn, base_lr in zip(self.schedules, self.base_lrs, strict=True)
            ]
        return [float(fn(step)) for fn in self.schedules]

    # a closed form: SequentialLR's ``_update_lr(0)`` and ``step(epoch)`` use it
    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _CONFIG_KEYS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _CONFIG_KEYS})

    def __repr__(self) -> str:
        return f"ScheduleLR(schedules={self.schedules!r}, multiply={self.multiply})"
