"""What a training layout costs: parameters, FLOPs, memory per device, speed.

    shape = ModelShape.of(model_config)                  # exact counts, from a meta-device model
    layout = Layout(gpus=8, tp=2, pp=1, strategy="fsdp", micro_batch=4, seq_len=2048)
    memory = estimate_memory(shape, layout, device)      # bytes per device, by kind

Memory is the training loop's, as llmkit runs it: fp32 master weights, fp32 gradients and AdamW's
two fp32 moments (16 bytes a parameter; SGD's one momentum buffer: 12, `--optimizer sgd`), sharded over the data-parallel ranks with FSDP, split by
tensor parallelism (matrices, embedding and head; the residual stream between blocks sequence-sharded) and
by pipeline stage (the busiest stage counts). Activations are counted tensor by tensor for one
block in the run's precision (`--precision`: bf16 autocast, the default on GPU, or fp32) with SDPA's flash kernel (no T x T scores kept),
times the blocks on a stage and the micro-batches a pipeline schedule keeps in flight; activation
checkpointing keeps only each block's input and recomputes one block at a time. The loss
keeps the logits in fp32 (log-softmax and its gradient); on a CPU, without tensor or pipeline
parallelism, the head and loss run fused over chunks of tokens and hold one chunk. An allowance covers the allocator's
fragmentation and workspaces (10 % of the tensors) and the CUDA context (0.5 GB) or, on a CPU,
the process itself (Python, PyTorch, data: 0.41 GB, measured). Docs: docs/parallel.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from llmkit.train.layout import STAGES_PER_RANK, stage_layers

GB = 1e9
# The optimizer's state a parameter: AdamW's two fp32 moments, SGD's momentum buffer
OPTIMIZER_BYTES = {"adamw": 8, "sgd": 4}
FRAGMENTATION = 0.10
CUDA_CONTEXT = 0.5 * GB
CPU_PROCESS = 0.41 * GB
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")


@dataclass(frozen=True)
class ModelShape:
    """The sizes the estimate needs, counted on the model llmkit would build."""

    config: object  # llmkit.model.gpt.ModelConfig
    total: int  # every parameter, a tied embedding once
    non_embedding: int  # Kaplan's N, as scaling laws count: without the token and position embeddings
    flop_params: int  # the parameters a token's matrix products use: no position table, no untied token embedding (as MFU counts)
    embedding: int  # token embedding (and position table)
    head: int  # a separate output head (0 when tied)
    per_block: int
    block_split: int  # the part of a block that tensor parallelism splits
    final_norm: int

    @classmethod
    def of(cls, config) -> ModelShape:
        import torch

        from llmkit.model.presets import build_model, non_embedding_params

        with torch.device("meta"):
            model = build_model(config)
        total = sum(p.numel() for p in model.parameters())
        non_embedding, flop_params = non_embedding_params(model), model.num_params(non_embedding=True)
        embedding = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("tok_emb", "pos_emb")))
        head = 0 if config.tie_embeddings else sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm_head"))
        block = next(iter(model.blocks))
        per_block = sum(p.numel() for p in block.parameters())
        from llmkit.train.parallelize import COLUMN_PARALLEL

        split = sum(p.numel() for name, p in block.named_parameters() if p.dim() == 2 or name.rpartition(".")[0] in COLUMN_PARALLEL)
        final_norm = total - embedding - head - per_block * config.n_layer
        return cls(config, total, non_embedding, flop_params, embedding, head, per_block, split, final_norm)

    def flops_per_token(self, seq_len: int) -> float:
        from llmkit.model.gpt import training_flops_per_token

        return float(training_flops_per_token(self.flop_params, self.config.n_layer, self.config.n_embd, seq_len))


@dataclass(frozen=True)
class Layout:
    gpus: int = 1  # devices per node (CPU processes on a CPU)
    nnodes: int = 1
    tp: int = 1
    pp: int = 1
    strategy: str = "ddp"
    micro_batch: int = 16
    seq_len: int = 1024
    activation_checkpointing: bool = False
    pp_schedule: str = "1f1b"
    pp_microbatches: int | None = None  # default: pp (the fewest that fill the pipeline)
    accumulation: int = 1  # micro-batches per step on each rank
    compiled: bool = False  # torch.compile: on a CPU the usual head and loss, not the fused one
    ema: bool = False  # --ema: an fp32 copy of the weights on every device
    keep_best: bool = False  # --keep-best: an fp32 copy of them in the first process's host memory
    optimizer: str = "adamw"  # --optimizer: its state a parameter (OPTIMIZER_BYTES)

    @property
    def world(self) -> int:
        return self.gpus * self.nnodes

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    @property
    def microbatches(self) -> int:
        """Pipeline micro-batches per pipeline step (1 without a pipeline)."""
        return (self.pp_microbatches or self.pp) if self.pp > 1 else 1

    @property
    def batch_ways(self) -> int:
        """Micro-batches one accumulation step feeds at once: dp replicas x pipeline micro-batches."""
        return self.dp * self.microbatches

    @property
    def in_flight(self) -> int:
        """Micro-batches whose activations the first pipeline stage holds at once. Interleaved 1F1B
        (two chunks a rank, each half its layers) runs (v-1) pp + 2 (pp-1) chunk forwards before
        rank 0's first backward, torch's warm-up, and one more in its steady state."""
        if self.pp == 1:
            return 1
        if self.pp_schedule == "gpipe":
            return self.microbatches
        if self.pp_schedule == "1f1b":
            return min(self.microbatches, self.pp)
        return math.ceil(min(2 * self.microbatches, 3 * self.pp - 1) / 2)

    @property
    def in_flight_last(self) -> int:
        """Micro-batches whose activations the last stage holds at once: under 1F1B it runs each
        micro-batch's backward right after its forward; an interleaved schedule's last rank runs pp
        chunk forwards of its middle stage first (torch's warm-up: (v-1) pp)."""
        if self.pp == 1 or self.pp_schedule == "gpipe":
            return self.in_flight
        if self.pp_schedule == "1f1b":
            return 1
        return math.ceil(min(2 * self.microbatches, self.pp + 1) / 2)

    def in_flight_on(self, stage: str) -> int:
        """Micro-batches in flight on a device of `stage` ("only", "first" or "last")."""
        return self.in_flight_last if stage == "last" else self.in_flight

    @property
    def logits_in_flight(self) -> int:
        """Micro-batches whose log-probabilities the last stage keeps for their backward: all under
        GPipe, one under either 1F1B (the head is on the last chunk, whose backward follows its forward)."""
        return self.microbatches if self.pp > 1 and self.pp_schedule == "gpipe" else 1

    def layers_on(self, stage: str, n_layer: int) -> int:
        """The blocks a device of `stage` holds, as pretrain splits them (`stage_layers`)."""
        if self.pp == 1 or stage == "only":
            return n_layer
        stages = self.pp * STAGES_PER_RANK[self.pp_schedule]
        ranges = stage_layers(n_layer, stages)
        rank = 0 if stage == "first" else self.pp - 1
        return sum(len(ranges[index]) for index in range(rank, stages, self.pp))

    @property
    def pipeline_bubble(self) -> float:
        """The idle share of a pipeline step: (pp-1) / (micro-batches x stages per rank + pp-1)."""
        if self.pp == 1:
            return 0.0
        return (self.pp - 1) / (self.microbatches * STAGES_PER_RANK[self.pp_schedule] + self.pp - 1)

    @property
    def recompute_factor(self) -> float:
        """Hardware FLOPs / model FLOPs: recomputing each forward adds 2N to 6N."""
        return 4 / 3 if self.activation_checkpointing else 1.0

    def problem(self, config) -> str | None:
        """Why this layout cannot run this model (None: it can), with the fix."""
        from llmkit.train.layout import model_layout_problem, weight_copies_problem, world_problem

        if world_problem(self.world, self.tp, self.pp):
            return world_problem(self.world, self.tp, self.pp)
        copies = weight_copies_problem(self.ema, self.keep_best, tp=self.tp, pp=self.pp,
                                       fsdp_over=self.dp if self.strategy == "fsdp" else 1)
        if copies:
            return copies
        return model_layout_problem(config, tp=self.tp, pp=self.pp, schedule=self.pp_schedule, microbatches=self.microbatches,
                                    seq_len=self.seq_len)


@dataclass
class Memory:
    """Bytes per device of the busiest device, by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    transient: float  # FSDP's gathered block, for example
    allowance: float
    available: float
    notes: list[str] = field(default_factory=list)
    saves_fit: bool = True  # on a CPU: training and rank 0's gathering of a checkpoint together (_weigh_the_save)

    @property
    def tensors(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.transient

    @property
    def total(self) -> float:
        return self.tensors + self.allowance

    @property
    def fits(self) -> bool:
        return self.total <= self.available and self.saves_fit

    def as_dict(self) -> dict[str, float | bool]:
        parts = ("weights", "gradients", "optimizer", "activations", "logits", "transient", "allowance")
        return {**{f"{p}_gb": getattr(self, p) / GB for p in parts}, "total_gb": self.total / GB,
                "available_gb": self.available / GB, "fits": self.fits, "saves_fit": self.saves_fit}


def stage_parameters(shape: ModelShape, layout: Layout, stage: str = "only") -> float:
    """Parameters a device of `stage` ("only": the whole model; a pipeline's "first" or "last")
    holds before data-parallel sharding (the middle stages hold fewer than the first and the last)."""
    c = shape.config
    tp = layout.tp
    block = shape.block_split / tp + (shape.per_block - shape.block_split)
    layers = layout.layers_on(stage, c.n_layer) * block
    if stage == "first":
        return layers + shape.embedding / tp
    # the last stage holds the head, or a copy of the tied token embedding (not the position table)
    head = (shape.head or c.vocab_size * c.n_embd) / tp + shape.final_norm
    return layers + head if stage == "last" else layers + shape.embedding / tp + shape.head / tp + shape.final_norm


# Attention with dropout on a CPU: SDPA has no fused kernel for it, so PyTorch's math kernel (and
# the per-sequence path, llmkit/model/sequence_dropout.py) keep a head's T x T weights for the
# backward pass: the softmax's fp32 output, the dropout noise or mask, and the dropped weights (in
# the run's precision) that multiply v. Measured on `mini`, 8 x 512, fp32, --dropout 0.1: 2.53 GB
# (--no-batch-invariant) and 2.60 GB (per-sequence) against 1.52 GB without dropout, ~13 bytes a
# score. GPU kernels (flash, memory-efficient) apply dropout inside and keep no scores.
def math_attention_bytes(half: int) -> int:
    return 4 + 4 + half


def block_activation_bytes(config, tokens: int, layout: Layout, half: int, math_attention: bool = False) -> float:
    """Bytes one block keeps for its backward pass, for `tokens` tokens (micro-batch x sequence);
    `math_attention`: attention keeps its T x T weights (a CPU run with dropout)."""
    h, tp = config.n_embd, layout.tp
    kv_share = config.n_kv_head / config.n_head
    residual = 4 * h / tp  # the fp32 residual stream entering each norm (sequence-sharded under tp)
    norm_out = half * h  # each norm's output, gathered over the sequence: the input of a matrix product
    attention = half * h * (1 + 2 * kv_share) + half * h  # q, k, v and the attention output
    mlp = half * config.mlp_hidden * (4 if config.activation == "swiglu" else 2)
    dropout = h * 2 if config.dropout > 0 else 0  # two masks, a byte each
    scores = math_attention_bytes(half) * config.n_head / tp * layout.seq_len if math_attention else 0
    per_token = 2 * residual + 2 * norm_out + (attention + mlp) / tp + dropout + scores
    return per_token * tokens


@dataclass(frozen=True)
class Device:
    """What each device offers and computes with."""

    memory_gb: float
    on_gpu: bool
    bf16: bool  # bf16 autocast (--precision): activations in bf16, weights and optimizer state fp32
    # A CPU: memory_gb (and the peak FLOP/s) are the machine's, shared by the processes on it.
    shared: bool = False

    def memory_per_process(self, layout: Layout) -> float:
        return self.memory_gb / layout.gpus if self.shared else self.memory_gb


def estimate_memory(shape: ModelShape, layout: Layout, device: Device) -> Memory:
    """The busiest device's memory: with a pipeline, the larger of its first stage (the embedding,
    the most micro-batches in flight) and its last (the head and the logits)."""
    if layout.pp == 1:
        memory = stage_memory(shape, layout, device, "only")
        _weigh_the_save(memory, memory, shape, layout, device)
        return memory
    first, last = (stage_memory(shape, layout, device, stage) for stage in ("first", "last"))
    (busiest, stage), (other, other_stage) = sorted(((first, "first"), (last, "last")), key=lambda m: -m[0].total)
    busiest.notes.append(f"pipeline: the busiest device holds the {stage} stage, {layout.in_flight_on(stage)} micro-batch(es) "
                         f"in flight ({layout.pp_schedule}); the {other_stage} stage's needs {other.total / GB:.2f} GB")
    _weigh_the_save(busiest, first, shape, layout, device)
    return busiest


def _weigh_the_save(memory: Memory, rank0: Memory, shape: ModelShape, layout: Layout, device: Device) -> None:
    """Whether a split layout's checkpoint saves fit (`memory.saves_fit`, on a CPU) and a note of what
    they take. The checkpoint is one file: each save gathers the whole model and AdamW state
    on rank 0 (`rank0`: its memory in training), beside its own part (not in the total, which is a
    training step's). A pipeline's first stage on a CPU keeps its own tensors in the gathered state; tensor
    parallelism and FSDP gather new whole ones (measured on a CPU, a 50.7M model: rank 0 peaked at
    1.13 GB saving under --pp 2, 1.71 GB under --tp 2, against 0.94 and 0.88 GB in training)."""
    if layout.tp == 1 and layout.pp == 1 and not (layout.strategy == "fsdp" and layout.dp > 1):
        return
    saved = 4 + OPTIMIZER_BYTES[layout.optimizer]  # (what a checkpoint holds: fp32 weights and the optimizer's state)
    gathered = saved * shape.total
    if layout.tp == 1 and layout.pp > 1 and not device.on_gpu:  # (a GPU's first stage copies its own to the host too)
        gathered -= saved * stage_parameters(shape, layout, "first")
    said = (f"each checkpoint save gathers the whole model and {'AdamW' if layout.optimizer == 'adamw' else 'SGD'} state on "
            f"rank 0 ({saved} bytes a parameter): about {gathered / GB:.2f} GB more")
    if device.on_gpu:
        memory.notes.append(f"{said}, in its host memory")
        return
    # On a CPU in the machine's memory, which the processes share: rank 0's training state and what it gathers,
    # the others' training state (the activations are gone by then)
    state = (1 + FRAGMENTATION) * (rank0.weights + rank0.gradients + rank0.optimizer + rank0.transient) + CPU_PROCESS
    saving = state + (1 + FRAGMENTATION) * gathered
    machine = rank0.available * layout.gpus if device.shared else rank0.available
    everyone = saving + (layout.gpus - 1) * state
    if memory.total <= memory.available and everyone > machine:  # (training itself not fitting is the verdict's to say)
        memory.saves_fit = False
        memory.notes.append(f"{said}: the processes then need {everyone / GB:.2f} GB, more than the machine's "
                            f"{machine / GB:.2f} GB: training fits, its first save would run out of memory (fewer processes, "
                            "or more memory)")
    else:
        memory.notes.append(f"{said} beside its own part ({saving / GB:.2f} GB on rank 0 then)")


def stage_memory(shape: ModelShape, layout: Layout, device: Device, stage: str) -> Memory:
    """Memory of a device holding the whole model (`stage` "only") or a pipeline's "first" or "last" stage."""
    c = shape.config
    on_gpu = device.on_gpu
    # Saved activations: bf16 under autocast, the residual stream aside (fp32 in either precision).
    # On a CPU this holds since RoPE and SwiGLU keep no fp32 copies of q, k and the MLP for their
    # backward (llmkit/model/fused_ops.py; before, a bf16 `mini` run peaked 9 % below fp32's, now
    # 17 %); CPU autocast also keeps bf16 copies of the weights for backward (below).
    half = 2 if device.bf16 else 4
    params = stage_parameters(shape, layout, stage)
    shard = layout.dp if layout.strategy == "fsdp" else 1
    weights = 4 * params / shard
    notes: list[str] = []
    if layout.strategy == "fsdp" and layout.dp == 1:  # (as pretrain notes it)
        notes.append("--strategy fsdp shards the weights over data-parallel processes, and this layout has one: nothing "
                     "is sharded")
    if layout.ema:  # (refused where the weights are split: fsdp on several processes, --tp, --pp)
        weights += 4 * params
        notes.append(f"--ema: a moving average of the weights beside them ({4 * params / GB:.2f} GB)")
    if layout.keep_best:
        if on_gpu:
            notes.append(f"--keep-best: its copy of the weights is in the first process's host memory ({4 * params / GB:.2f} "
                         "GB), not the GPU's")
        else:  # (the first process's; the processes share the machine's memory, which the plan divides between them)
            sharing = layout.gpus if device.shared else 1
            weights += 4 * params / sharing
            notes.append(f"--keep-best: the best weights' copy on the first process ({4 * params / GB:.2f} GB"
                         + (f", 1/{sharing} of it counted on each of the {sharing} processes sharing the machine)"
                            if sharing > 1 else ")"))
    gradients = 4 * params / shard
    optimizer = OPTIMIZER_BYTES[layout.optimizer] * params / shard
    tokens = layout.micro_batch * layout.seq_len
    layers = layout.layers_on(stage, c.n_layer)
    math_attention = not on_gpu and c.dropout > 0
    block = block_activation_bytes(c, tokens, layout, half, math_attention)
    if math_attention:
        notes.append("attention with dropout on a CPU keeps each head's T x T weights for the backward pass "
                     "(no fused kernel takes dropout there)")
    # what a micro-batch leaves for its backward pass: with checkpointing, each block's fp32 input only
    saved = layers * (4 * c.n_embd * tokens / layout.tp if layout.activation_checkpointing else block)
    if stage != "last":
        saved += 4 * c.n_embd * tokens / layout.tp  # the embedding output (sequence-sharded under tp)
    activations = saved * layout.in_flight_on(stage)
    if layout.activation_checkpointing:
        activations += block  # the one block being recomputed, whatever is in flight
        if not on_gpu:
            # On a CPU the peak resident memory also holds what glibc keeps of the recomputed blocks
            # freed one after another (docs/parallel.md): 0.67 and 0.77 of a block above the tensors
            # measured (2026-12-07: `mini` 32 x 256, `tiny` 64 x 256), 8-14 % of the peak; counted as
            # one block, so that a fix the plan proposes does fit (it ran 8-13 % over).
            activations += block
    # backward differentiates one block at a time: its activations' gradients live beside what is saved
    activations += block
    if stage == "first":
        logits = 0.0  # the head and the loss are the last stage's
    elif not on_gpu and layout.tp == 1 and layout.pp == 1 and not layout.compiled:
        # the CPU's fused head and loss (llmkit/model/fused_loss.py): one chunk of logits, and the head's
        # gradients made in the forward pass (hidden states' and the weight's) until backward takes them
        from llmkit.model.fused_loss import CHUNK_ELEMENTS  # (here: importing it imports torch)

        logits = 4 * (CHUNK_ELEMENTS + tokens * c.n_embd + c.vocab_size * c.n_embd)
        if device.bf16:  # the chunk's bf16 products beside its fp32 logits, and the head's bf16 copy
            logits += 2 * (CHUNK_ELEMENTS + c.vocab_size * c.n_embd)
    else:
        # the head's output (bf16 on GPU), its fp32 copy and log-softmax for the loss, the gradient;
        # each other micro-batch in flight keeps its fp32 log-softmax for its backward pass
        per_entry = tokens * c.vocab_size / layout.tp
        logits = per_entry * (half + 4 + 4) + per_entry * 4 * (layout.logits_in_flight - 1)
    transient = 0.0
    if (not on_gpu and layout.tp == 1 and layout.pp == 1 and layout.strategy == "ddp" and layout.accumulation > 1
            and not layout.compiled):  # (--compile turns per-sequence gradients off by default)
        # per-sequence gradients (the CPU default, llmkit/model/sequence_tree.py): while a step
        # accumulates, the pairwise tree holds partial sums of the gradients beside the newest
        partial_sums = (layout.accumulation - 1).bit_length()
        gradients += 4 * params * partial_sums
        notes.append(f"per-sequence gradients: up to {partial_sums} partial sum(s) of the gradients while a step accumulates")
    sharded = layout.strategy == "fsdp" and layout.dp > 1  # (one process: pretrain runs it unsharded, as ddp)
    if device.bf16 and not (on_gpu and (layout.compiled or sharded)):
        # autocast's bf16 copies of the (gathered) weights, kept from forward to backward (on a GPU
        # FSDP2 gathers them in bf16 itself, and a compiled graph casts them where it uses them)
        transient = 2 * params
    if layout.strategy == "fsdp" and layout.dp > 1:
        # FSDP2 gathers one block's parameters at a time and prefetches the next: in bf16 on a GPU
        # (its mixed-precision policy), in fp32 on a CPU, which has none (autocast's copies are above)
        gathered = half if on_gpu else 4
        transient += 2 * gathered * (shape.block_split / layout.tp + shape.per_block - shape.block_split)
        # the root's parameters (the stage's embedding or head) stay gathered from forward to backward
        root = {"only": shape.embedding + shape.head, "first": shape.embedding,
                "last": shape.head or c.vocab_size * c.n_embd}[stage]
        transient += gathered * root / layout.tp
    allowance = FRAGMENTATION * (weights + gradients + optimizer + activations + logits + transient)
    allowance += CUDA_CONTEXT if on_gpu else CPU_PROCESS
    return Memory(weights, gradients, optimizer, activations, logits, transient, allowance,
                  device.memory_per_process(layout) * GB, notes)


def split(layout: Layout, sequences: int | None) -> Layout | None:
    """`layout` with the micro-batch and accumulation `llmkit pretrain` makes of a global batch of
    `sequences` (`layout.micro_batch` is the one asked for, which the split may shrink), or None
    where that batch does not split over its ranks; without a batch (None), one micro-batch per
    data-parallel rank and pipeline micro-batch."""
    if sequences is None:
        return replace(layout, accumulation=1)
    from llmkit.errors import UserError
    from llmkit.train.launch import split_batch

    try:  # pretrain's own rule, so a plan never proposes a split that pretrain refuses
        micro, accumulation = split_batch(sequences, layout.micro_batch, layout.batch_ways, what="the batch", fix=str)
    except UserError:
        return None
    return replace(layout, micro_batch=micro, accumulation=accumulation)


def largest_micro_batch(shape: ModelShape, layout: Layout, device: Device, *, sequences: int | None = None,
                        limit: int = 4096) -> int:
    """The largest micro-batch that fits (0: not even one sequence); with a global batch of
    `sequences`, the largest that batch splits into whole micro-batches of."""
    if sequences is not None:
        # only the micro-batches pretrain would keep as given: divisors of each rank's share
        if sequences % layout.batch_ways:
            return 0
        share = sequences // layout.batch_ways
        for micro in sorted((m for m in range(1, min(share, limit) + 1) if share % m == 0), reverse=True):
            option = split(replace(layout, micro_batch=micro), sequences)
            if estimate_memory(shape, option, device).fits:
                return micro
        return 0
    fits = lambda m: estimate_memory(shape, replace(layout, micro_batch=m, accumulation=1), device).fits  # noqa: E731
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def runnable(shape: ModelShape, layout: Layout, sequences: int | None) -> Layout | None:
    """`layout` as pretrain would run it (its batch split, see `split`), or None where pretrain
    refuses it: its batch does not split, or the model does not split this way (`Layout.problem`)."""
    option = split(layout, sequences)
    if option is None or option.problem(shape.config) is not None:
        return None
    return option


def smallest_layout(shape: ModelShape, layout: Layout, device: Device, *, sequences: int | None = None,
                    per_node: int = 8, max_nodes: int = 256) -> Layout | None:
    """The layout with the fewest devices (then the least model parallelism, then no recomputation,
    then no FSDP, then tensor before pipeline parallelism: no bubble)
    that fits the model at the given micro-batch and sequence length, and that pretrain runs: the
    model splits that way and the global batch of `sequences` (if given) splits over its ranks."""
    tps = [t for t in (1, 2, 4, 8) if t <= per_node]  # tensor parallelism stays within a node
    pps = (1, 2, 4, 8, 16, 32)
    # within a node, powers of two and the whole node (of 6, say); past it, whole nodes
    within = sorted({w for w in (1, 2, 4, 8) if w <= per_node} | {per_node})
    worlds = within + [per_node * n for n in range(2, max_nodes + 1)]
    for world in worlds:
        gpus, nnodes = (world, 1) if world <= per_node else (per_node, world // per_node)
        candidates = []
        for tp in tps:
            for pp in pps:
                if world % (tp * pp):
                    continue
                for strategy in ("ddp", "fsdp") if world > tp * pp else ("ddp",):  # (fsdp on one replica shards nothing)
                    for recompute in (False, True):
                        option = runnable(shape, replace(layout, gpus=gpus, nnodes=nnodes, tp=tp, pp=pp, strategy=strategy,
                                                         activation_checkpointing=recompute), sequences)
                        if option is not None and estimate_memory(shape, option, device).fits:
                            candidates.append((tp * pp, recompute, strategy == "fsdp", pp, option))
        if candidates:
            return min(candidates, key=lambda x: x[:4])[4]
    return None


def _fewer_processes(layout: Layout) -> list[int]:
    """Process counts per machine below the layout's that still split into its tp x pp groups, tp
    within a machine (as the search keeps it), the most first."""
    return [n for n in range(layout.gpus - 1, 0, -1)
            if n % layout.tp == 0 and (n * layout.nnodes) % (layout.tp * layout.pp) == 0]


def _recompute_smaller(shape: ModelShape, layout: Layout, device: Device, *, sequences: int | None,
                       batch_for: Callable[[int, int], int | None] | None, above: int, process_flag: str) -> list[str]:
    """Two changes where one would not do, or only as a micro-batch of `above` or less: activation
    checkpointing with the largest micro-batch it fits, on the devices asked for or (a CPU's
    processes sharing one machine's memory) in the fewest processes the layout splits into. More
    machines, the search's answer, shrink only the sharded state and may take dozens of them."""
    bases = [("", layout)]
    fewer = _fewer_processes(layout) if device.shared else []
    if fewer and runnable(shape, fewest := replace(layout, gpus=fewer[-1]), sequences) is not None:
        bases.append((f"{process_flag} {fewer[-1]} ", fewest))
    asked = (split(layout, sequences) or layout).micro_batch
    for flag, base in bases:
        best = largest_micro_batch(shape, replace(base, activation_checkpointing=True), device, sequences=sequences)
        if flag and best >= asked:  # (on the devices asked for, recomputation alone is a single change, tried)
            return [f"{flag}--activation-checkpointing"]
        if above < best < asked:
            tokens = batch_for(best, base.batch_ways) if batch_for is not None and sequences is None else None
            return [f"{flag}--activation-checkpointing --micro-batch {best}" + (f" --batch-tokens {tokens}" if tokens else "")]
    return []


def fixes(shape: ModelShape, layout: Layout, device: Device, *, sequences: int | None = None,
          batch_for: Callable[[int, int], int | None] | None = None, process_flag: str = "--nproc") -> list[str]:
    """The single changes that make a layout that does not fit, fit; `layout` as asked (its
    micro-batch the one given, before the global batch of `sequences` is split), so that each
    change is split as pretrain would split it with that flag added. `batch_for(micro_batch, ways)`:
    the --batch-tokens a proposed micro-batch on `ways` ranks needs beside it (None: none), where
    no batch was given. On a CPU, fewer processes are offered under `process_flag`, the flag the
    plan was asked with (--nproc, or --gpus N with --gpu cpu)."""
    tried = []
    if not layout.activation_checkpointing:
        tried.append(("--activation-checkpointing", replace(layout, activation_checkpointing=True)))
    if layout.strategy != "fsdp" and layout.dp > 1:
        tried.append(("--strategy fsdp", replace(layout, strategy="fsdp")))
    best = largest_micro_batch(shape, layout, device, sequences=sequences)
    if 0 < best < (split(layout, sequences) or layout).micro_batch:  # below the micro-batch it runs at
        tokens = batch_for(best, layout.batch_ways) if batch_for is not None and sequences is None else None
        tried.append((f"--micro-batch {best}" + (f" --batch-tokens {tokens}" if tokens else ""), replace(layout, micro_batch=best)))
    for tp in (2, 4, 8):
        if tp > layout.tp:  # the same devices regrouped (less data parallelism), else more of them
            if layout.world % (tp * layout.pp) == 0:
                tried.append((f"--tp {tp}", replace(layout, tp=tp)))
            tried.append((f"--tp {tp} (on {layout.world * tp // layout.tp} devices)",
                          replace(layout, tp=tp, gpus=layout.gpus * tp // layout.tp)))
            break
    for pp in (2, 4, 8):
        if pp > layout.pp:
            if layout.world % (layout.tp * pp) == 0:
                tried.append((f"--pp {pp}", replace(layout, pp=pp)))
            tried.append((f"--pp {pp} (on {layout.world * pp // layout.pp} devices)",
                          replace(layout, pp=pp, gpus=layout.gpus * pp // layout.pp)))
            break
    if layout.strategy == "fsdp":  # FSDP shards over every data-parallel rank: more nodes, less a device
        for nodes in range(layout.nnodes + 1, layout.nnodes * 2 ** 8 + 1):  # the fewest that fit
            option = runnable(shape, replace(layout, nnodes=nodes), sequences)
            if option is not None and estimate_memory(shape, option, device).fits:
                tried.append((f"--nnodes {nodes} (on {nodes * layout.gpus} devices)", replace(layout, nnodes=nodes)))
                break
    fitting = []
    for label, option in tried:
        option = runnable(shape, option, sequences)
        if option is not None and estimate_memory(shape, option, device).fits:
            fitting.append(label)
    if device.shared:  # one machine's processes share its memory: fewer get more each
        fewer = next((n for n in _fewer_processes(layout) if (option := runnable(shape, replace(layout, gpus=n), sequences))
                      is not None and estimate_memory(shape, option, device).fits), None)
        if fewer is not None:
            fitting.append(f"{process_flag} {fewer}")
    # Two changes: on a CPU where neither recomputation nor fewer processes fit alone; on GPUs only where no single
    # change on the devices asked for does (a larger micro-batch for 1.33x the compute is no fix there).
    single = [label for label in fitting if not label.endswith("devices)")]
    wanted = (not any(label.startswith(("--activation-checkpointing", process_flag)) for label in fitting) if device.shared
              else not single)
    if not layout.activation_checkpointing and wanted:
        fitting += _recompute_smaller(shape, layout, device, sequences=sequences, batch_for=batch_for, above=best,
                                      process_flag=process_flag)
    # regrouping the devices one has comes before asking for more
    return [label for label in fitting if not (label.endswith("devices)") and label.split(" (")[0] in fitting)]
