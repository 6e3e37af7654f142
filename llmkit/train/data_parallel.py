"""The training loop's engine for the usual layout: the whole model on every rank, with data
parallelism over the ranks (DDP, FSDP2, or a single process).

It has the interface of ModelParallelRun (llmkit/train/model_parallel.py), the engine of
--tp/--pp runs, so the loop (llmkit/train/loop.py) runs either without asking which: a
micro-batch's forward and backward, the gradients finished and clipped, the loss averaged over
ranks, validation, and the full state dicts a checkpoint stores.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from llmkit.train import checkpoint as ckpt
from llmkit.train import distributed as dist_utils
from llmkit.train.precision import autocast


class DataParallelRun:
    """The whole model on every rank: wrapped for DDP or FSDP2 (or left alone in one process)."""

    def __init__(self, model: nn.Module, info, device: torch.device, *, strategy: str, activation_checkpointing: bool,
                 compile: bool, loss_fn: Callable, precision: str):
        self.raw, self.info, self.device, self.loss_fn, self.precision = model, info, device, loss_fn, precision
        if activation_checkpointing:
            from llmkit.train.parallelize import checkpoint_activations

            checkpoint_activations(model)  # before FSDP, whose hooks must surround the recompute
        wrapped = dist_utils.wrap(model, strategy, info, precision)
        self.model = torch.compile(wrapped) if compile else wrapped
        self.optimizer_target = model  # the model's own parameters (FSDP2 shards them in place)

    def forward_backward(self, batch: Sequence[torch.Tensor], accumulation: int, last: bool) -> torch.Tensor:
        """Adds this micro-batch's gradients (gradient sync only on the last); returns its loss."""
        with dist_utils.gradient_sync(self.model, last), autocast(self.device, self.precision):
            loss = self.loss_fn(self.model, batch)
            (loss / accumulation).backward()
        return loss.detach().float()

    def finish_gradients(self) -> None:
        """DDP and FSDP2 reduce the gradients inside the last backward: nothing is left to do."""

    def mean_loss(self, local: torch.Tensor) -> torch.Tensor:
        return dist_utils.all_reduce_mean(local, self.info)

    def clip(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    @torch.no_grad()
    def evaluate(self, val_batches: Callable, val_size: int, micro_batch: int) -> float:
        """Mean loss over samples 0..val_size-1, whatever the world size."""
        info = self.info
        chunks = [range(i, min(i + micro_batch, val_size)) for i in range(0, val_size, micro_batch)]
        per_rank = math.ceil(len(chunks) / info.world_size)
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for k in range(per_rank):
            j = k * info.world_size + info.rank
            # Every rank runs the same number of forwards (FSDP gathers inside them); spare ones weigh 0.
            indices, weight = (chunks[j], len(chunks[j])) if j < len(chunks) else (chunks[0], 0)
            batch = dist_utils.to_device(val_batches(indices), self.device)
            with autocast(self.device, self.precision):
                loss = self.loss_fn(self.model, batch)
            total += loss.double() * weight
        total = dist_utils.all_reduce_sum(total, info)
        return float(total) / val_size

    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """Collective: the full model and optimizer state dicts (on rank 0)."""
        return ckpt.gather_full_state(self.raw, optimizer, self.info.distributed)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
        ckpt.load_optimizer_state(self.raw, optimizer, optim_state, self.info.distributed)
