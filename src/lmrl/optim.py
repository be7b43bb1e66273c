"""The optimizer and the learning-rate schedule, shared by GRPO (state.py) and SFT (sft.py).

A leaf: plain numbers in, no config object, so that both trainers (and anything else) can use it
without importing each other's settings.
"""

import math
from collections.abc import Callable

import torch


def adamw(params, lr: float, weight_decay: float, fused: bool = True) -> torch.optim.AdamW:
    """AdamW, with its fused kernel where torch has one (CPU, CUDA) unless fused=False: one
    kernel over all parameters instead of several per parameter list, the same update up to
    float rounding (measured in bench/README.md, "fused AdamW kernel")."""
    params = list(params)
    fused = fused and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _decay(shape: Callable[[float], float]) -> Callable[[float, float], float]:
    """From 1 at progress 0 to min_lr_frac at progress 1, along `shape` (1 -> 0)."""
    return lambda progress, min_lr_frac: min_lr_frac + (1.0 - min_lr_frac) * shape(progress)


# The schedules after warm-up: (progress in [0, 1], min_lr_frac) -> multiplier of the peak lr.
SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "constant": lambda progress, min_lr_frac: 1.0,
    "cosine": _decay(lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress))),
    "linear": _decay(lambda progress: 1.0 - progress),
}


def schedule_factor(step: int, steps: int, warmup_steps: int, schedule: str,
                    min_lr_frac: float) -> float:
    """Multiplier of the peak lr at `step` (from 0): linear warm-up, then one of SCHEDULES to
    min_lr_frac at `steps`.

    Example: steps=100, warmup_steps=10, "cosine", min_lr_frac=0: step 0 -> 0.1, step 9 -> 1.0,
    step 55 -> 0.5, step 100 -> 0.0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return SCHEDULES[schedule](progress, min_lr_frac)


def lr_lambda(steps: int, warmup_steps: int, schedule: str,
              min_lr_frac: float) -> Callable[[int], float]:
    """The schedule as a LambdaLR multiplier: step -> schedule_factor(step, ...)."""
    return lambda step: schedule_factor(step, steps, warmup_steps, schedule, min_lr_frac)
