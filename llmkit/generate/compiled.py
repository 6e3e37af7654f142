"""`--compile`: the decode step through `torch.compile`, one graph for every step.

A decode step of a small model is many small operations (norms, RoPE, cache writes, the
attention of one query) around a few matrix-vector products; eagerly each is a dispatch through
PyTorch's Python and C++ layers. Compiled (inductor: fused C++/OpenMP kernels on CPU, Triton on
GPU; `freezing` folds the weights into the graph so the CPU matmuls get prepacked weights), the
step costs little more than its matrix products. The step is `GPT.decode_step`, whose shapes do
not change between steps: the cache buffers are attended whole, through a mask, and the slot is a
tensor. So one compilation serves a whole batch, and every batch of the same size and cache
length; the prefill (many tokens, run once) stays eager.

Compiling takes seconds (about 7 s for the `tiny` preset and 15-20 s for `mini` on one CPU core)
and is paid once per batch shape, so it pays off on long outputs and many prompts, not on one
short completion. Logits match the eager path to float rounding, which can, rarely, flip a
near-tie greedy choice.
"""

from __future__ import annotations

import shutil

import torch

from llmkit.errors import UserError

# Cache lengths are rounded up to a multiple of this, so batches with prompts of nearby lengths
# share one compiled graph (the attention reads the whole cache: rounding costs a few slots).
CACHE_LENGTH_STEP = 128


def check_compilable(model) -> None:
    """A one-line error for a model or machine the compiled step does not serve."""
    if not hasattr(model, "decode_step"):
        kind = getattr(model.config, "arch", type(model).__name__)
        raise UserError(f"--compile needs a single Transformer checkpoint; this is {'an ensemble' if kind == 'gpt' else kind!r}: leave out --compile")
    device = next(model.parameters()).device.type
    if device not in ("cpu", "cuda"):
        raise UserError(f"--compile works on cpu and cuda, not {device}; leave out --compile or pick --device cpu")
    if device == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise UserError("--compile on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or leave out --compile")


class CompiledDecoder:
    """Calls `model.decode_step` compiled, for one new token per row of a KVCache batch."""

    def __init__(self, model):
        check_compilable(model)
        self.model = model
        self._step = torch.compile(model.decode_step, dynamic=False, fullgraph=True, options={"freezing": True})

    def cache_length(self, needed: int, limit: int | None) -> int:
        """`needed` rounded up to a multiple of CACHE_LENGTH_STEP, within the context limit."""
        rounded = -(-needed // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
        return rounded if limit is None else min(rounded, max(limit, needed))

    def step(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Next-token logits [B, V] after feeding `tokens` [B]; advances the cache by one slot."""
        if cache.pos >= cache.max_len:
            raise ValueError(f"KV cache full: {cache.pos} + 1 tokens > max_len {cache.max_len}")
        slot = torch.tensor([cache.pos], dtype=torch.long, device=tokens.device)
        logits = self._step(tokens[:, None], slot, cache.pad_lengths, cache.k, cache.v)
        cache.pos += 1
        return logits
