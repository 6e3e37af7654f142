"""Pipeline parallelism: the GPT cut into stages by layer, run by torch.distributed.pipelining.

Every process builds the whole model from the same seed, then keeps the stages it owns
(`StageModule`s that share the full model's parameter names, so state dicts and checkpoints
need no renaming). The first stage holds the embeddings, the last the final norm and head.
With tied embeddings the first and the last stage each hold a copy of the one matrix; their
gradients are summed between the two ranks before the optimizer step, so both copies take the
same update and stay equal.

Schedules: gpipe and 1f1b run one stage per rank; interleaved-1f1b two (stage s on pp rank
s % pp), which shrinks the bubble. A pipeline step runs `microbatches` micro-batches of
`--micro-batch` sequences; each one's loss is the mean over its target tokens, exactly the
micro-batch loss of the training loop without a pipeline.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.model.gpt import GPT, IGNORE_INDEX, embed_tokens, rope_tables, unmaterialised
from llmkit.train.layout import STAGES_PER_RANK, Layout, stage_layers


class StageModule(nn.Module):
    """Layers `layers` of `model` (and its embeddings when first, its head when last)."""

    def __init__(self, model: GPT, layers: range, *, first: bool, last: bool, seq_len: int):
        super().__init__()
        config = model.config
        self.config, self.seq_len = config, seq_len
        self.tok_emb = model.tok_emb if first else None
        self.pos_emb = model.pos_emb if first else None
        self.drop = model.drop
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.final_norm = model.final_norm if last else None
        self.lm_head = model.lm_head if last else None
        if config.pos == "rope":
            self.register_buffer("rope_cos", torch.empty(0), persistent=False)
            self.register_buffer("rope_sin", torch.empty(0), persistent=False)
            if not unmaterialised(model):  # else `materialize` makes them on the device
                self.reset_buffers()

    def reset_buffers(self) -> None:
        if self.config.pos == "rope":
            cos, sin = rope_tables(self.config.head_dim, self.seq_len, self.config.rope_theta)
            device = self.rope_cos.device
            self.rope_cos, self.rope_sin = cos[None, None].to(device), sin[None, None].to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT._trunk's training path (no cache, no padding mask), cut at this stage's layers.
        if self.tok_emb is not None:
            x = self.drop(embed_tokens(self.tok_emb, self.pos_emb, x))
        rope = (self.rope_cos, self.rope_sin) if self.config.pos == "rope" else None
        for layer, block in self.blocks.items():
            x = block(x, rope, None, None, int(layer))
        if self.lm_head is not None:
            x = self.lm_head(self.final_norm(x))
        return x


def lm_loss_on_logits(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """GPT.forward's loss on a stage's logits: cross-entropy over the target tokens (their mean, or sum)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(0, 1), ignore_index=IGNORE_INDEX, reduction=reduction)


class Pipeline:
    """This rank's stages and the schedule that runs them."""

    def __init__(self, model: GPT, layout: Layout, device: torch.device, seq_len: int,
                 parallelize: Callable[[list[StageModule]], None]):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

        self.layout, self.device = layout, device
        per_rank = STAGES_PER_RANK[layout.schedule]
        total = layout.pp * per_rank
        ranges = stage_layers(model.config.n_layer, total)
        indices = [layout.pp_rank + k * layout.pp for k in range(per_rank)]
        self.modules = [StageModule(model, ranges[i], first=i == 0, last=i == total - 1, seq_len=seq_len) for i in indices]
        if not unmaterialised(model):  # a meta-built model is materialised on the device by `parallelize`
            self.modules = [module.to(device) for module in self.modules]
        self.has_first = 0 in indices
        self.has_last = total - 1 in indices
        parallelize(self.modules)
        group = layout.mesh["pp"].get_group()
        self.stages = [PipelineStage(module, i, total, device, group=group) for module, i in zip(self.modules, indices)]
        self.token_weight: float | None = None  # training: each token's loss times this; None: each chunk's mean
        schedule_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved-1f1b": ScheduleInterleaved1F1B}[layout.schedule]
        stages = self.stages if per_rank > 1 else self.stages[0]
        # scale_grads off: the loss itself carries each token's weight in the step, as in the loop.
        self.schedule = schedule_class(stages, n_microbatches=layout.microbatches, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.token_weight is None:
            return lm_loss_on_logits(logits, targets)
        return lm_loss_on_logits(logits, targets, reduction="sum") * self.token_weight

    def _run(self, run, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        losses: list[torch.Tensor] = []
        if self.has_first:
            run(inputs, target=targets if self.has_last else None, losses=losses)
        elif self.has_last:
            run(target=targets, losses=losses)
        else:
            run()
        return losses

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, token_weight: float, count: int) -> torch.Tensor:
        """One pipeline step over `microbatches` micro-batches holding `count` target tokens, each
        token's loss weighing `token_weight`: their mean loss on the last stage, zero elsewhere."""
        self.token_weight = token_weight
        losses = self._run(self.schedule.step, inputs, targets)
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach().float() for loss in losses]).sum() / token_weight / max(count, 1)

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """Each micro-batch's mean loss (last stage; empty elsewhere)."""
        self.token_weight = None
        return [loss.detach() for loss in self._run(self.schedule.eval, inputs, targets)]

    def parameters(self) -> list[nn.Parameter]:
        seen, params = set(), []
        for module in self.modules:
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        return params
