"""The training loop's engine for the usual layout: the whole model on every rank, with data
parallelism over the ranks (DDP, FSDP2, or a single process).

With --batch-invariant (the default for a CPU run of a GPT model) there is no DDP: each
sequence's weight gradient goes to a SequenceTree (llmkit/model/sequence_grads.py,
sequence_tree.py) and the ranks' trees are merged in finish_gradients, so the weights do not
depend on the layout.

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

from llmkit.errors import UsageError
from llmkit.model import sequence_dropout, sequence_grads, sequence_tree
from llmkit.model.classifier import SequenceClassifier
from llmkit.model.gpt import GPT
from llmkit.train import checkpoint as ckpt
from llmkit.train import distributed as dist_utils
from llmkit.train.objectives import mean_over, rows_per_example, targets_in
from llmkit.train.precision import autocast


def use_batch_invariance(requested: bool | None, model: nn.Module, device: torch.device, *, strategy: str,
                         compile: bool, loss_fn: Callable, world_size: int = 1, sequences_per_rank: int = 0,
                         batch_flag: str = "--batch-tokens") -> tuple[bool, str | None]:
    """--batch-invariant: on by default where it is supported, refused (one line, the reason) where
    asked and not. Returns whether it is on, and why not where a CPU run left it off by default."""
    reasons = []
    if world_size > 1 and sequences_per_rank % sequence_tree.PRODUCT_RUN:
        reasons.append(f"each process's share of a step ({sequences_per_rank} sequences) must be a multiple of "
                       f"{sequence_tree.PRODUCT_RUN}; change {batch_flag} or the process count")
    if device.type != "cpu":
        reasons.append("it is for CPU runs (GPU kernels do not promise the same bits anyway)")
    network = model.lm if isinstance(model, SequenceClassifier) else model
    if not (isinstance(network, GPT) and mean_over(loss_fn)):
        reasons.append("per-sequence gradients cover GPT models (pretraining, SFT, classification), not this model or objective")
    if strategy != "ddp" and world_size > 1:  # (in one process FSDP wraps nothing: the run is the ddp one)
        reasons.append("FSDP reduces gradients itself; use --strategy ddp")
    if compile:
        reasons.append("compiled kernels sum in their own order; drop --compile")
    if requested and reasons:
        raise UsageError(f"--batch-invariant does not apply here: {reasons[0]} (or pass --no-batch-invariant)")
    if requested is None:
        return not reasons, reasons[0] if reasons and device.type == "cpu" else None
    return bool(requested), None


class DataParallelRun:
    """The whole model on every rank: wrapped for DDP or FSDP2 (or left alone in one process)."""

    def __init__(self, model: nn.Module, info, device: torch.device, *, strategy: str, activation_checkpointing: bool,
                 compile: bool, loss_fn: Callable, precision: str, batch_invariant: bool | None = False,
                 sequences_per_rank: int = 0, seed: int = 0, batch_flag: str = "--batch-tokens"):
        self.raw, self.info, self.device, self.loss_fn, self.precision = model, info, device, loss_fn, precision
        self.seed = seed  # with the step and a sequence's position, seeds its dropout masks (per-sequence mode)
        self.batch_invariant, self.not_invariant_because = use_batch_invariance(
            batch_invariant, model, device, strategy=strategy, compile=compile, loss_fn=loss_fn,
            world_size=info.world_size, sequences_per_rank=sequences_per_rank, batch_flag=batch_flag)
        self.tree = sequence_tree.SequenceTree() if self.batch_invariant else None  # the step's per-sequence gradients
        self.targets_this_step, self.step_sequences = 0.0, 0
        self.sequence_losses: dict[int, float] = {}  # this step's, by position (step_loss)
        if activation_checkpointing:
            from llmkit.train.parallelize import checkpoint_activations

            checkpoint_activations(model)  # before FSDP, whose hooks must surround the recompute
        # Batch-invariant runs merge the ranks' gradients themselves (finish_gradients): no DDP.
        wrapped = model if self.batch_invariant else dist_utils.wrap(model, strategy, info, precision)
        self.model = torch.compile(wrapped) if compile else wrapped
        self.optimizer_target = model  # the model's own parameters (FSDP2 shards them in place)

    def step_total(self, local: int) -> float:
        """Collective: the step's targets (tokens, or examples) over every data-parallel rank."""
        if not self.info.distributed:  # a GPU tensor read back would wait for the last step's kernels
            return float(local)
        # on the run's device: NCCL reduces only CUDA tensors
        return float(dist_utils.all_reduce_sum(torch.tensor(float(local), dtype=torch.float64, device=self.device), self.info))

    def forward_backward(self, batch: Sequence[torch.Tensor], targets: int, step_total: float, last: bool,
                         position: int = 0, step: int = 0) -> torch.Tensor:
        """Adds this micro-batch's gradients (gradient sync only on the last); returns its (mean) loss.
        Its mean over its `targets` weighs by their share of the step's `step_total`, so the step's
        gradient is that of the mean over all of them, whatever the split. `position`: its first
        sequence's place in the step's global batch (ranks hold consecutive ones)."""
        if self.batch_invariant:
            rows = rows_per_example(self.loss_fn)  # (a preference pair's two replies: positions 2k and 2k + 1)
            return self._forward_backward_per_sequence(batch, targets, step_total, position * rows, step)
        share = targets * self.info.world_size / step_total  # DDP and FSDP average over ranks
        with dist_utils.gradient_sync(self.model, last), autocast(self.device, self.precision):
            loss = self.loss_fn(self.model, batch)
            (loss * share).backward()
        return loss.detach().float()

    def _forward_backward_per_sequence(self, batch: Sequence[torch.Tensor], targets: int, step_total: float,
                                       position: int, step: int) -> torch.Tensor:
        sequences = batch[0].shape[0]
        masks = sequence_dropout.step_key(self.seed, step)
        # The backward inside too: activation checkpointing recomputes blocks there.
        mode = sequence_grads.per_sequence_gradients(self.tree, position, sequences, masks)
        with mode, autocast(self.device, self.precision):
            loss = self.loss_fn(self.model, batch)
            # Seeded with the target count, every token's gradient is its own (the mean's 1/count
            # cancels exactly); the step's sum is divided by the step's count once, in finish_gradients.
            loss.backward(torch.tensor(float(targets), dtype=loss.dtype))
        self.targets_this_step = step_total
        self.step_sequences += sequences
        self.sequence_losses.update(mode.where.sequence_losses)
        return loss.detach().float()

    def step_loss(self, step_total: float, global_batch: int) -> float | None:
        """Collective. --batch-invariant: the step's mean loss from each sequence's own sum, added
        in the step's order across ranks (exactly: math.fsum), so neither --micro-batch nor the
        process count moves its bits (the micro-batches' means, weighed, did: the loss curves a
        sweep draws, and so its fingerprint, followed --micro-batch). None where the loss keeps no
        sums per sequence (a classifier's mean over examples) or the run sums as usual."""
        losses, self.sequence_losses = self.sequence_losses, {}
        if not self.batch_invariant:
            return None
        rows = global_batch * rows_per_example(self.loss_fn)  # (a preference pair's loss sits at its first row)
        sums = torch.zeros(rows, 2, dtype=torch.float64)  # per position: its loss sum; 1 where it has one
        if losses:  # (one indexed write for the step's sequences: this runs every step)
            sums[list(losses)] = torch.tensor([[value, 1.0] for value in losses.values()], dtype=torch.float64)
        if self.info.distributed:  # each position's row from one rank, zeros from the others: an exact sum
            sums = dist_utils.all_reduce_sum(sums.to(self.device), self.info).cpu()
        if int(sums[:, 1].sum()) != global_batch:
            return None
        return math.fsum(sums[:, 0].tolist()) / step_total if step_total else math.nan

    def finish_gradients(self) -> None:
        """DDP and FSDP2 reduce the gradients inside the last backward: nothing is left to do,
        unless the gradients are per sequence: then the trees of all ranks become `.grad`."""
        if not self.batch_invariant:
            return
        params = [p for p in self.raw.parameters() if p.requires_grad]
        names = [name for name, p in self.raw.named_parameters() if p.requires_grad and p.grad is not None]
        if names:
            raise RuntimeError(f"per-sequence gradients do not cover {names[0]} (it got a .grad the usual way)")
        grads = self.tree.gradients(params, sequences=self.step_sequences, rank=self.info.rank, world_size=self.info.world_size)
        for p, grad in zip(params, grads):
            if grad is not None:
                p.grad = grad.div_(self.targets_this_step)
        self.targets_this_step, self.step_sequences = 0.0, 0

    def mean_loss(self, local: torch.Tensor) -> torch.Tensor:
        return dist_utils.all_reduce_mean(local, self.info)

    def clip(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    @torch.no_grad()
    def evaluate(self, val_batches: Callable, val_size: int, micro_batch: int) -> float:
        """Mean loss over samples 0..val_size-1, whatever the world size."""
        if self.batch_invariant:
            return self._evaluate_sample_by_sample(val_batches, val_size)
        info = self.info
        chunks = [range(i, min(i + micro_batch, val_size)) for i in range(0, val_size, micro_batch)]
        per_rank = math.ceil(len(chunks) / info.world_size)
        self.model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # the loss summed over targets; their count
        for k in range(per_rank):
            j = k * info.world_size + info.rank
            # Every rank runs the same number of forwards (FSDP gathers inside them); spare ones weigh 0.
            indices, spare = (chunks[j], False) if j < len(chunks) else (chunks[0], True)
            batch = val_batches(indices)
            weight = 0 if spare else targets_in(self.loss_fn, batch)  # a chunk's mean weighs by its targets
            batch = dist_utils.to_device(batch, self.device)
            with autocast(self.device, self.precision):
                loss = self.loss_fn(self.model, batch)
            if weight:
                total[0] += loss.double() * weight
                total[1] += weight
        total = dist_utils.all_reduce_sum(total, info)
        return float(total[0] / total[1]) if total[1] else math.nan

    def validates(self, index: int, micro_batch: int) -> bool:
        """Whether this rank's validation scored sample `index` as its own (not in a spare forward
        that repeats the first chunk): what a caller counting per-sample results adds up."""
        if self.batch_invariant:
            return index % self.info.world_size == self.info.rank
        return (index // micro_batch) % self.info.world_size == self.info.rank

    def _evaluate_sample_by_sample(self, val_batches: Callable, val_size: int) -> float:
        """--batch-invariant: each sample's loss on its own, the samples' sums added in their order
        (exactly: math.fsum), so neither --micro-batch nor the process count moves a bit of the mean.
        The mean of each micro-batch's chunk, weighed, did (the float sums ran in another order): a
        sweep's runs.json, which holds the runs' final validation loss, changed fingerprint."""
        info = self.info
        self.model.eval()
        sums = torch.zeros(val_size, 2, dtype=torch.float64)  # per sample: its loss summed over its targets; their count
        for index in range(info.rank, val_size, info.world_size):  # (`validates`) no collective inside: ranks may run fewer
            batch = val_batches([index])
            targets = targets_in(self.loss_fn, batch)
            with autocast(self.device, self.precision):
                loss = self.loss_fn(self.model, dist_utils.to_device(batch, self.device))
            if targets:
                sums[index, 0], sums[index, 1] = float(loss) * targets, targets
        if info.distributed:  # every sample's row comes from one rank, zeros from the others: an exact sum
            sums = dist_utils.all_reduce_sum(sums.to(self.device), info).cpu()
        count = math.fsum(sums[:, 1].tolist())
        return math.fsum(sums[:, 0].tolist()) / count if count else math.nan

    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """Collective: the full model and optimizer state dicts (on rank 0)."""
        return ckpt.gather_full_state(self.raw, optimizer, self.info.distributed)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, optim_state: dict) -> None:
        ckpt.load_optimizer_state(self.raw, optimizer, optim_state, self.info.distributed)
