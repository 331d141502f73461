r"""Rules that move hyperparameters tuned at one batch size to another.

With :math:`\kappa = B_\text{new} / B_\text{base}`:

* :func:`linear_lr_scaling` -- SGD: :math:`\eta \to \kappa\eta`. Goyal et al., "Accurate, Large
  Minibatch SGD: Training ImageNet in 1 Hour", 2017, arXiv:1706.02677 (the Linear Scaling Rule,
  used with a gradual warm-up, e.g. :class:`~gradkit.schedules.LinearWarmup`).
* :func:`sqrt_lr_scaling` -- Adam/RMSprop: :math:`\eta \to \sqrt\kappa\,\eta`. Malladi, Lyu,
  Panigrahi & Arora, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS
  2022, arXiv:2205.10287 (the Square Root Scaling Rule).
* :func:`adam_sqrt_scaling` -- the full Square Root Scaling Rule of Malladi et al., which also moves
  the averaging horizons and epsilon: :math:`1-\beta_i \to \kappa(1-\beta_i)`,
  :math:`\epsilon \to \epsilon/\sqrt\kappa`. Scaling only the learning rate is the common practice;
  the full rule is the one their SDE analysis supports.

These are approximations that hold below a critical batch size; beyond it, gains diminish.
"""

from __future__ import annotations

import math

from gradkit.schedules._checks import check_positive


def _ratio(batch_size: float, base_batch_size: float) -> float:
    return check_positive("batch_size", batch_size) / check_positive(
        "base_batch_size", base_batch_size
    )


def linear_lr_scaling(lr: float, batch_size: float, base_batch_size: float) -> float:
    """SGD: ``lr * batch_size / base_batch_size`` (Goyal et al. 2017).

    Example:
        >>> linear_lr_scaling(0.1, batch_size=8192, base_batch_size=256)
        3.2
    """
    return check_positive("lr", lr) * _ratio(batch_size, base_batch_size)


def sqrt_lr_scaling(lr: float, batch_size: float, base_batch_size: float) -> float:
    """Adam/RMSprop: ``lr * sqrt(batch_size / base_batch_size)`` (Malladi et al. 2022).

    Example:
        >>> sqrt_lr_scaling(1e-3, batch_size=1024, base_batch_size=256)
        0.002
    """
    return check_positive("lr", lr) * math.sqrt(_ratio(batch_size, base_batch_size))


def adam_sqrt_scaling(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    batch_size: float,
    base_batch_size: float,
) -> dict[str, object]:
    r"""The full Square Root Scaling Rule for Adam (Malladi et al. 2022, their "SRSR"): :math:`\eta\sqrt\kappa`, :math:`1-\kappa(1-\beta_1)`, :math:`1-\kappa(1-\beta_2)`,
    :math:`\epsilon/\sqrt\kappa`. Returns keyword arguments for an Adam-family constructor.

    Raises ``ValueError`` when :math:`\kappa(1-\beta_i) \ge 1` (no valid beta exists).

    Example:
        >>> adam_sqrt_scaling(1e-3, (0.9, 0.999), 1e-8, batch_size=512, base_batch_size=256)
        {'lr': 0.0014142135623730952, 'betas': (0.8, 0.998), 'eps': 7.071067811865475e-09}
    """
    kappa = _ratio(batch_size, base_batch_size)
    check_positive("lr", lr)
    check_positive("eps", eps)
    scaled = []
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta!r} (must be in [0, 1))")
        new = 1.0 - kappa * (1.0 - beta)
        if not 0.0 <= new < 1.0:
            raise ValueError(
                f"Invalid batch_size: {batch_size!r} (scaling beta parameter at index {i} = "
                f"{beta!r} by kappa={kappa:g} gives {new:g}, outside [0, 1))"
            )
        scaled.append(new)
    return {"lr": lr * math.sqrt(kappa), "betas": tuple(scaled), "eps": eps / math.sqrt(kappa)}
