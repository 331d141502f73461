"""Step sizes and batch sizes: learning-rate schedules, their torch ``LRScheduler`` adapter,
schedule refinement from gradient norms, batch-size scaling rules and the AdAdaGrad controller.

Example:
    >>> import torch
    >>> import gradkit
    >>> from gradkit.schedules import ScheduleLR, WarmupStableDecay
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = gradkit.optim.AdamW(model.parameters(), lr=1e-3)
    >>> sched = ScheduleLR(opt, WarmupStableDecay(total_steps=100, warmup_steps=10))
    >>> for _ in range(10):
    ...     opt.zero_grad()
    ...     model(torch.randn(8, 4)).square().mean().backward()
    ...     opt.step()
    ...     sched.step()
    >>> opt.param_groups[0]["lr"]
    0.001
"""

from gradkit.schedules.adapter import ScheduleLR
from gradkit.schedules.basic import (
    DECAY_SHAPES,
    CosineDecay,
    LinearDecay,
    LinearWarmup,
    Schedule,
    WarmupStableDecay,
)
from gradkit.schedules.batch_size import (
    AdaptiveBatchSize,
    BatchTestResult,
    gradient_statistics,
    inner_product_test,
    norm_test,
)
from gradkit.schedules.refined import (
    GradNormRecorder,
    RefinedSchedule,
    median_smooth,
    refine_schedule,
)
from gradkit.schedules.scaling import adam_sqrt_scaling, linear_lr_scaling, sqrt_lr_scaling

__all__ = [
    "DECAY_SHAPES",
    "AdaptiveBatchSize",
    "BatchTestResult",
    "CosineDecay",
    "GradNormRecorder",
    "LinearDecay",
    "LinearWarmup",
    "RefinedSchedule",
    "Schedule",
    "ScheduleLR",
    "WarmupStableDecay",
    "adam_sqrt_scaling",
    "gradient_statistics",
    "inner_product_test",
    "linear_lr_scaling",
    "median_smooth",
    "norm_test",
    "refine_schedule",
    "sqrt_lr_scaling",
]
