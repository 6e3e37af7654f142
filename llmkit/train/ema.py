"""`--ema DECAY`: an exponential moving average of the weights, kept in fp32 beside the run and
saved with its checkpoints (`ema/NAME` tensors in the training state), so a resume goes on
averaging exactly; the loop writes it out as RUN/ema (llmkit/model/averaging.py). Only the
parameters that train are averaged: a frozen one's average is itself. Under LoRA the average is of
each adapted layer's merged weight, W + (alpha/R) B A (the model the run's checkpoints load as),
kept under the layer's `weight` name: a mean of A's and of B's would not be the mean of their
product. It costs those layers' weights once more in fp32, not the adapters' size."""

from __future__ import annotations

import torch
import torch.nn as nn

from llmkit.errors import UserError
from llmkit.model.adapters import is_adapter_key, merged_float
from llmkit.train.checkpoint import KeptWeights


class MovingAverage(KeptWeights):
    SAVED_PREFIX = "ema/"  # the averages' keys among a checkpoint's training-state tensors

    def __init__(self, model: nn.Module, decay: float, device: torch.device, saved: dict[str, torch.Tensor] | None = None):
        self.model, self.decay = model, decay
        # (a LoRALinear's adapters: averaged as the layer's merged weight)
        self.adapted = {f"{name}.weight": module for name, module in model.named_modules() if hasattr(module, "lora_A")}
        self.trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad and not is_adapter_key(name)]
        names = [name for name, _ in self.trained] + list(self.adapted)
        if saved:
            # (checkpoints written before 2026-12-03 hold the frozen parameters' averages too: themselves)
            if not set(names) <= set(saved) <= {name for name, _ in model.named_parameters()}:
                raise UserError("the checkpoint's moving average does not match this model; resume without --ema changes")
            self.values = {name: saved[name].to(device, torch.float32) for name in names}
        else:
            self.values = {name: p.detach().float().clone() for name, p in self.trained}
            self.values.update({name: _merged(module) for name, module in self.adapted.items()})

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """After optimizer update number `updates`."""
        # TensorFlow's ExponentialMovingAverage warm-up (num_updates): early on the average follows
        # the weights closely, so a short run's average is not mostly its random initialisation.
        decay = min(self.decay, (1 + updates) / (10 + updates))
        if self.trained:
            torch._foreach_lerp_([self.values[name] for name, _ in self.trained], [p.detach().float() for _, p in self.trained],
                                 1.0 - decay)
        for name, module in self.adapted.items():  # one merged weight at a time: all at once doubled the average's memory
            self.values[name].lerp_(_merged(module), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights with the averages in place; under LoRA plain merged weights (no adapters)."""
        return {name: value for name, value in super().state_dict().items() if not is_adapter_key(name)}


def _merged(module: nn.Module) -> torch.Tensor:
    """A LoRALinear's weight with its adapter folded in, in fp32."""
    return merged_float(module.weight.detach(), module.lora_A.detach(), module.lora_B.detach(), module.scaling)
