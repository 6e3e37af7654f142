"""`--ema DECAY`: an exponential moving average of the weights, kept in fp32 beside the run and
saved with its checkpoints (`ema/NAME` tensors in the training state), so a resume goes on
averaging exactly; the loop writes it out as RUN/ema (llmkit/model/averaging.py). Only the
parameters that train are averaged: a frozen one's average is itself (LoRA's base model, which
would otherwise be held twice more in fp32)."""

from __future__ import annotations

import torch
import torch.nn as nn

from llmkit.errors import UserError
from llmkit.train.checkpoint import KeptWeights


class MovingAverage(KeptWeights):
    SAVED_PREFIX = "ema/"  # the averages' keys among a checkpoint's training-state tensors

    def __init__(self, model: nn.Module, decay: float, device: torch.device, saved: dict[str, torch.Tensor] | None = None):
        self.model, self.decay = model, decay
        self.trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if saved:
            # (checkpoints written before 2026-12-03 hold the frozen parameters' averages too: themselves)
            if not {name for name, _ in self.trained} <= set(saved) <= {name for name, _ in model.named_parameters()}:
                raise UserError("the checkpoint's moving average does not match this model; resume without --ema changes")
            self.values = {name: saved[name].to(device, torch.float32) for name, _ in self.trained}
        else:
            self.values = {name: p.detach().float().clone() for name, p in self.trained}

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """After optimizer update number `updates`."""
        # TensorFlow's ExponentialMovingAverage warm-up (num_updates): early on the average follows
        # the weights closely, so a short run's average is not mostly its random initialisation.
        decay = min(self.decay, (1 + updates) / (10 + updates))
        params = [p.detach().float() for _, p in self.trained]
        torch._foreach_lerp_(list(self.values.values()), params, 1.0 - decay)
