"""`--compile`: the decode step through `torch.compile`, one graph for every step.

A decode step of a small model is many small operations (norms, RoPE, cache writes, the
attention of one query) around a few matrix-vector products; eagerly each is a dispatch through
PyTorch's Python and C++ layers. Compiled (inductor: fused C++/OpenMP kernels on CPU, Triton on
GPU, replayed there as a CUDA graph; on CPU freezing folds the weights into the graph so the
matmuls get prepacked weights), the step costs little more than its matrix products. The step
is `GPT.decode_step`, whose shapes do not change between steps: the cache buffers are attended
whole, through a mask, and the slot is a tensor. The cache length is marked dynamic and the batch size is not, so one compilation serves
every batch of the same size, whatever its prompt and output lengths; the prefill (many tokens,
run once) stays eager. Each graph holds its own copy of the weights, packed for its batch size.

Compiling takes seconds (4-11 s from the `tiny` to the `small` preset on one CPU core, less from
inductor's on-disk cache) and is paid once per batch size, so it pays off on long outputs and many
prompts, not on one short completion. Up to RECOMPILE_LIMIT batch sizes are compiled; past that,
or if compilation fails, the step runs eagerly (`GPT.decode_step` itself, the same values) and a
one-line note says so. Logits match the eager path to float rounding, which can, rarely, flip a
near-tie greedy choice. Freezing folds the weights into the graph as they are at the first step:
a model whose weights change afterwards needs a new CompiledDecoder.
"""

from __future__ import annotations

import inspect
import shutil
import weakref

import torch

from llmkit.errors import UsageError, UserError

# Cache lengths are rounded up to a multiple of this (the attention reads the whole cache: rounding
# costs up to 127 slots). The compiled step takes any cache length, so this no longer decides how
# many graphs are built; it keeps the lengths the step sees to a few.
CACHE_LENGTH_STEP = 128
# Graphs kept per decoder: one per batch size (eval's last, smaller batch adds one); dynamo's default is 8.
RECOMPILE_LIMIT = 64


def replays_cuda_graphs(device: torch.device) -> bool:
    """Whether the compiled step is replayed as a CUDA graph: on a GPU, where a decode step's kernels
    take less time than launching them one by one from Python (transformers' compiled static-cache
    decoding does the same; measured against it on an H200 without graphs: 0.74x at batch 1)."""
    return device.type == "cuda"


def check_compilable(model) -> None:
    """A one-line error for a model or machine the compiled step does not serve."""
    if not hasattr(model, "decode_step"):
        from llmkit.model.ensemble import Ensemble

        what = "an ensemble" if isinstance(model, Ensemble) else f"an {model.config.arch.upper()} checkpoint"
        raise UserError(f"--compile needs a single Transformer checkpoint; this is {what}: leave out --compile")
    device = next(model.parameters()).device.type
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--compile works on cpu and cuda, not {device}; leave out --compile or pick --device cpu")
    if device == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise UserError("--compile on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or leave out --compile")


class CompiledDecoder:
    """Calls `model.decode_step` compiled, for one new token per row of a KVCache batch."""

    def __init__(self, model):
        check_compilable(model)
        self.model = model
        # Static shapes but for the cache length, marked dynamic on every new cache (see step): one
        # graph per batch size, whatever the prompt and output lengths.
        settings = dict(dynamic=None, fullgraph=True)
        self.cuda_graphs = replays_cuda_graphs(next(model.parameters()).device)
        if self.cuda_graphs:
            settings["mode"] = "reduce-overhead"  # CUDA graphs; the cache buffers they write: see step
        if "recompile_limit" in inspect.signature(torch.compile).parameters:
            settings["recompile_limit"] = RECOMPILE_LIMIT
        try:
            self._step = torch.compile(model.decode_step, **settings)
        except RuntimeError as exc:  # e.g. a Python version dynamo does not support yet
            raise UserError(f"--compile is not available here ({str(exc).splitlines()[0]}); leave out --compile") from exc
        self._slot = torch.zeros(1, dtype=torch.long, device=next(model.parameters()).device)
        self._compiled_batches: set[tuple] = set()
        self._cache_seen: weakref.ref | None = None  # the cache the step last saw, not kept alive
        from llmkit.console import err

        # said once, up front: a message at the compilation itself would land inside streamed text
        err.print("--compile: the first tokens of each new batch size wait a few seconds for the compiler", style="dim",
                  soft_wrap=True)

    def cache_length(self, needed: int, limit: int | None) -> int:
        """`needed` rounded up to a multiple of CACHE_LENGTH_STEP, within the context limit."""
        rounded = -(-needed // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
        return rounded if limit is None else min(rounded, limit)

    def step(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Next-token logits [B, V] after feeding `tokens` [B]; advances the cache by one slot."""
        if cache.pos >= cache.max_len:
            raise ValueError(f"KV cache full: {cache.pos} + 1 tokens > max_len {cache.max_len}")
        self.model.cover_positions(cache.max_len)
        slot = self._slot.fill_(cache.pos)  # one tensor reused: no host-to-device copy per step
        args = (tokens[:, None], slot, cache.pad_lengths, cache.k, cache.v)
        if self._step is None:
            logits = self.model.decode_step(*args)
        else:
            try:
                if self._cache_seen is None or self._cache_seen() is not cache:
                    # a weak reference: holding the last cache kept it (GBs on a GPU) alive beside the next
                    self._cache_seen = weakref.ref(cache)
                    for buffer in (*cache.k, *cache.v):
                        torch._dynamo.mark_dynamic(buffer, 2)
                        if self.cuda_graphs:
                            # A graph may write in place only into buffers at fixed addresses. Unguarded:
                            # a new cache (a new batch, a new turn) re-records the graph, not recompiles.
                            torch._dynamo.mark_static_address(buffer, guard=False)
                # (the RoPE tables' length too: a graph holds them, and tables grown for a longer cache
                # compile a new one, through _compile_and_step, not as a recompile of the old)
                tables = getattr(self.model, "rope_cos", None)
                batch = (tuple(tokens.shape), cache.k[0].dtype, None if tables is None else tables.shape[0])
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are no longer read
                if batch in self._compiled_batches:
                    logits = self._step(*args)
                else:
                    logits = self._compile_and_step(args)
                    self._compiled_batches.add(batch)
                if self.cuda_graphs:
                    logits = logits.clone()  # a graph's output buffer is overwritten by its next replay
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager step computes the same
                self._step = None
                from llmkit.console import note

                note(f"--compile stopped ({type(exc).__name__}); decoding continues without it")
                logits = self.model.decode_step(*args)
        cache.pos += 1
        return logits

    def _compile_and_step(self, args):
        """The step for a new batch size, which compiles it. Freezing folds the weights into the graph,
        where inductor packs them for the CPU's matrix products at that batch size; it is read from
        inductor's global config when a graph is compiled (torch.compile's `options` do not reach
        that check), so it is set for this call only, not for the rest of the process. And a new
        batch size gets a graph of its own rather than one with the batch size dynamic, whose
        products cannot be packed (18 % slower at batch 8).

        Not with CUDA graphs: under freezing (and inference mode) dynamo bakes every input marked as
        a static address into the graph as a constant, so the cache buffers would be the first
        cache's for good, and a later cache would be neither written nor read (nothing raises)."""
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=not self.cuda_graphs), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return self._step(*args)
