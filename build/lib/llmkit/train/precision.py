"""The run's numerics as a context: bf16 autocast or plain fp32 (`--precision`, resolved by
llmkit.train.options.resolve_precision). Weights, gradients and optimizer state stay fp32 either way."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast(device: torch.device, precision: str):
    """A fresh context for one forward (and its backward): autocast is not reentrant across uses."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
