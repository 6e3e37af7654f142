"""`--keep-best`: the weights of the run's lowest validation loss, kept beside the run and written
out at its end as RUN/best (llmkit/train/loop.py). Only the parameters that train are copied (a
frozen one is itself: LoRA's base model), to host memory, at a validation that beats the best so
far; each checkpoint's training state holds them (`best/NAME` tensors, and the record in its
progress), so a resumed run goes on from the same best."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from llmkit.errors import UserError
from llmkit.train.checkpoint import KeptWeights


class BestWeights(KeptWeights):
    SAVED_PREFIX = "best/"  # the best weights' keys among a checkpoint's training-state tensors

    def __init__(self, model: nn.Module, saved: dict[str, torch.Tensor] | None = None,
                 record: dict[str, Any] | None = None, *, keeps_values: bool = True):
        """`keeps_values`: False on a process that writes no checkpoint (a data-parallel rank past the
        first), which follows the record alone (a copy on every rank took as many times the host memory)."""
        self.model, self.keeps_values = model, keeps_values
        self.trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.values: dict[str, torch.Tensor] = {}
        # the validation they scored at: step, val_loss, tokens_seen, val_scores (None until one is made)
        self.record: dict[str, Any] | None = None
        if record is not None:
            if set(saved or {}) != {name for name, _ in self.trained}:
                raise UserError("the checkpoint's best weights do not match this model; resume without changing "
                                "what trains (--lora-rank, --freeze)")
            self.values, self.record = dict(saved) if keeps_values else {}, dict(record)

    @torch.no_grad()
    def offer(self, val_loss: float, *, step: int, tokens_seen: int, val_scores: dict[str, float]) -> bool:
        """Keep the model's weights if `val_loss` is the lowest yet (a tie keeps the earlier step)."""
        if not math.isfinite(val_loss) or self.record is not None and val_loss >= self.record["val_loss"]:
            return False
        if self.keeps_values:
            self.values = {name: p.detach().to("cpu", copy=True) for name, p in self.trained}
        self.record = {"step": step, "val_loss": val_loss, "tokens_seen": tokens_seen, "val_scores": dict(val_scores)}
        return True
