"""Memory and parallelism applied to a model from outside it (torchtitan's `parallelize.py`):
the model file stays one readable network; the training loop calls these before wrapping it
for data parallelism (llmkit.train.distributed.wrap)."""

from __future__ import annotations

import torch

from llmkit.errors import UserError


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Per-block activation checkpointing: each block keeps only its input and recomputes the
    rest during the backward pass (non-reentrant `torch.utils.checkpoint`, RNG state preserved,
    so dropout draws the same masks). The block's forward is replaced in place, so parameter
    names, state dicts and checkpoints are unchanged, and FSDP2's hooks (registered on the
    block afterwards) still gather its parameters around both the forward and the recompute."""
    from torch.utils.checkpoint import checkpoint

    blocks = getattr(model, "blocks", None)
    if not blocks:
        raise UserError("--activation-checkpointing recomputes Transformer blocks; this model (an LSTM) has none: leave it out")
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
