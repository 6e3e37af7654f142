"""Optimizers (AdamW, SGD with momentum) with weight-decay groups, and learning-rate schedules.

The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

import torch

from llmkit.errors import UserError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never norms' gains or biases (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() yields a tied tensor once
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _undecorated(method):
    """The method under torch's `_disable_dynamo` decorator (itself where a torch release has none)."""
    return getattr(method, "__wrapped__", method)


class _Untraced:
    """torch's optimizers import `torch._dynamo` on their first call (about 2 s of a run's start, in
    every process) only to keep `torch.compile` from tracing into them. llmkit compiles blocks, never
    the optimizer, so its optimizers call the methods underneath; the step keeps the no-grad mode
    the decorator would have set."""

    add_param_group = _undecorated(torch.optim.Optimizer.add_param_group)
    zero_grad = _undecorated(torch.optim.Optimizer.zero_grad)
    state_dict = _undecorated(torch.optim.Optimizer.state_dict)
    load_state_dict = _undecorated(torch.optim.Optimizer.load_state_dict)

    def step(self, closure=None):
        with torch.no_grad():
            return _undecorated(super().step)(self, closure)


class AdamW(_Untraced, torch.optim.AdamW):
    pass


class SGD(_Untraced, torch.optim.SGD):
    pass


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    momentum: float = 0.9,
    device_type: str = "cpu",
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        # The fused kernel: one launch per step on CUDA, and on CPU about 7x faster than the
        # per-tensor loop PyTorch picks by default there.
        return AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=device_type in ("cuda", "cpu"))
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then the decay."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    min_lr = lr * min_lr_ratio
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
