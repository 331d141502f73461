"""Generic gradient transforms, composable with ``gradkit.chain`` and any gradkit optimizer."""

from gradkit.transforms.basic import (
    add_decayed_weights,
    add_l2,
    maximize,
    scale,
    scale_by_lr,
    trace,
)

__all__ = ["add_decayed_weights", "add_l2", "maximize", "scale", "scale_by_lr", "trace"]
