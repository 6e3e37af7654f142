"""Memory and parallelism applied to a model from outside it (torchtitan's `parallelize.py`):
the model file stays one readable network; the training loop calls these before wrapping it
for data parallelism (llmkit.train.distributed.wrap)."""

from __future__ import annotations

import torch

from llmkit.errors import UsageError
from llmkit.model import sequence_grads


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Per-block activation checkpointing: each block keeps only its input and recomputes the
    rest during the backward pass (non-reentrant `torch.utils.checkpoint`, RNG state preserved,
    so dropout draws the same masks). The block's forward is replaced in place, so parameter
    names, state dicts and checkpoints are unchanged, and FSDP2's hooks (registered on the
    block afterwards) still gather its parameters around both the forward and the recompute."""
    from torch.utils.checkpoint import checkpoint

    blocks = getattr(model, "blocks", None)
    if not blocks:
        raise UsageError("--activation-checkpointing recomputes Transformer blocks; this model (an LSTM) has none: leave it out")
    for block in blocks.children():  # a ModuleList, or a pipeline stage's ModuleDict (whose iteration gives names)
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, context_fn=sequence_grads.recompute_contexts, **kwargs)

        block.forward = checkpointed


# ---------------------------------------------------------------------------------------------
# Tensor parallelism (torch.distributed.tensor.parallel), torchtitan's plan for Llama.
#
# Between blocks the residual stream is sequence-sharded (each tp rank holds T/tp positions as a
# plain local tensor); the norms run on those shards (SequenceParallel), attention and the MLP
# gather the sequence, compute on their own heads / hidden columns (Colwise in, Rowwise out) and
# reduce-scatter back. Every parameter is then a DTensor on the tp mesh, which gradient clipping
# and FSDP2 need.

# Fused projections: (parameter name suffix, number of parts stacked along the rows).
FUSED_PARTS = {"attn.kv_proj": 2, "mlp.up_proj": 2}  # [K; V] and, with SwiGLU, [gate; up]


def fused_parts(name: str, config) -> int:
    """How many stacked parts the rows of parameter `name` hold (1 = not fused)."""
    for suffix, parts in FUSED_PARTS.items():
        if f".{suffix}." in f".{name}" and (suffix != "mlp.up_proj" or config.activation == "swiglu"):
            return parts
    return 1


def rank_major(tensor: torch.Tensor, parts: int, tp: int) -> torch.Tensor:
    """Rows [A; B] -> [A_0; B_0; A_1; B_1; ...]: ColwiseParallel's contiguous row blocks then give
    every tp rank a valid [A_r; B_r] (its own K and V heads, its own gate and up columns)."""
    rows = tensor.shape[0]
    return tensor.reshape(parts, tp, rows // (parts * tp), *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def part_major(tensor: torch.Tensor, parts: int, tp: int) -> torch.Tensor:
    """The inverse of `rank_major`: back to the checkpoint's [A; B] row order."""
    rows = tensor.shape[0]
    return tensor.reshape(tp, parts, rows // (parts * tp), *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def reorder_fused(state: dict[str, torch.Tensor], config, tp: int, *, to_rank_major: bool) -> dict[str, torch.Tensor]:
    """A full state dict (weights, or one optimizer moment per name) between the checkpoint's
    row order and the tensor-parallel one."""
    if tp == 1:
        return state
    move = rank_major if to_rank_major else part_major
    out = {}
    for name, value in state.items():
        parts = fused_parts(name, config)
        out[name] = move(value, parts, tp) if parts > 1 and isinstance(value, torch.Tensor) and value.dim() >= 1 else value
    return out


# A block's layers split by output column (weights and biases sharded); out_proj and down_proj are
# split by input row (their biases replicated). llmkit plan counts a rank's share from these.
COLUMN_PARALLEL = ("attn.q_proj", "attn.kv_proj", "mlp.up_proj")


def tensor_parallel(model: torch.nn.Module, tp_mesh, *, sharded_loss: bool) -> None:
    """Split `model` (a GPT, or a pipeline stage of one) over `tp_mesh` in place.

    sharded_loss: the head's logits stay sharded on the vocabulary for `loss_parallel()`, and
    the residual stream between blocks is a sequence-sharded DTensor (which `torch.compile`'s
    backward needs); otherwise (a pipeline stage, which hands plain tensors to the next stage and
    to its loss) the residual stream is the plain local shard and the logits are gathered."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    config, tp = model.config, tp_mesh.size()
    # SequenceParallel makes the norms' weights new parameters, trainable whatever they were:
    # what was frozen (finetune --freeze, LoRA's base) is frozen again at the end.
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    with torch.no_grad():
        for name, param in model.named_parameters():
            parts = fused_parts(name, config)
            if parts > 1:
                param.copy_(rank_major(param, parts, tp))
    tied = config.tie_embeddings and getattr(model, "tok_emb", None) is not None and getattr(model, "lm_head", None) is not None
    plan = {}
    local = not sharded_loss  # plain local shards between modules (pipeline stages)
    if getattr(model, "tok_emb", None) is not None:
        plan["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=local)
        if getattr(model, "pos_emb", None) is not None:
            plan["pos_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=local)
    if getattr(model, "lm_head", None) is not None:
        plan["final_norm"] = SequenceParallel()
        plan["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1) if sharded_loss else Replicate(),
                                          use_local_output=not sharded_loss)
    parallelize_module(model, tp_mesh, plan)
    if tied:  # one Shard(0) parameter serves both: the embedding's rows and the head's output columns
        model.lm_head.weight = model.tok_emb.weight
    block_plan = {
        "attn_norm": SequenceParallel(),
        "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                   desired_input_layouts=(Replicate(), None, None, None, None)),
        **{name: ColwiseParallel() for name in COLUMN_PARALLEL},
        "attn.out_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=local),
        "mlp_norm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=local),
    }
    for block in model.blocks.children():
        parallelize_module(block, tp_mesh, block_plan)
        block.attn.n_head //= tp  # the local heads this rank computes
        block.attn.n_kv_head //= tp
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)


def materialize(module: torch.nn.Module, model, device: torch.device, tp: int, weights=None) -> None:
    """Allocate `module` (built on the meta device: the whole model or a pipeline stage, split for
    tensor parallelism or not) on `device`, every parameter at the value one process gives it
    (`model.initial_value`, `model` the meta GPT it came from) or, resuming, at its value in the
    safetensors file `weights`; a tensor-parallel rank keeps only its shard. Host memory holds one
    full parameter at a time, never the model."""
    import contextlib

    stored, checking = None, contextlib.nullcontext()
    if weights is not None:
        from safetensors import safe_open

        from llmkit.artifacts import checked_as_read

        stored = safe_open(str(weights), framework="pt")  # one tensor read at a time
        checking = checked_as_read(weights)  # (beside the reads: each process reads only its part)
    with checking:
        _fill(module, model, device, tp, stored)


def _fill(module: torch.nn.Module, model, device: torch.device, tp: int, stored) -> None:
    """materialize's allocation and values (`stored`: the open safetensors file, or None)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    # to_empty gives each module its own new tensor, so a tied pair (embedding and head) is
    # joined again afterwards.
    first_name: dict[int, str] = {}
    aliases = []
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            aliases.append((name, first_name[id(param)]))
        else:
            first_name[id(param)] = name
    module.to_empty(device=device)
    for alias, name in aliases:
        owner, _, leaf = alias.rpartition(".")
        setattr(module.get_submodule(owner), leaf, module.get_parameter(name))
    with torch.no_grad():
        for name, param in module.named_parameters():
            if stored is None:
                full = model.initial_value(name)
            else:  # a tied head is stored once, as the embedding
                full = stored.get_tensor("tok_emb.weight" if model.config.tie_embeddings and name == "lm_head.weight" else name)
            parts = fused_parts(name, model.config)
            if parts > 1 and tp > 1:
                full = rank_major(full, parts, tp)  # as tensor_parallel lays out a fused weight's rows
            if isinstance(param, DTensor):
                shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.to_local().copy_(shard.to_local())
            else:
                param.copy_(full)
    for part in module.modules():
        if hasattr(part, "reset_buffers"):
            part.reset_buffers()


def shard_data_parallel(modules: list[torch.nn.Module], dp_mesh, device: torch.device, precision: str) -> None:
    """FSDP2 over the data-parallel mesh dimension, per block and at each (stage) root; bf16
    gathers on a GPU when the run's resolved --precision is bf16."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    import warnings

    # A pipeline stage's output (a block's, or the head's logits) is a view of a tensor the stage
    # made, and the schedule changes it nowhere in place: torch 2.13 warns at every forward that an
    # in-place op on such a view could break the backward (twice a step, on every rank).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    options = {"mesh": dp_mesh}
    if device.type == "cuda" and precision == "bf16":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in modules:
        for block in module.blocks.children():
            fully_shard(block, **options)
        fully_shard(module, **options)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def all_reduce_gradients(params: list[torch.nn.Parameter], group, *, average: bool) -> None:
    """Sum (or average) the gradients of `params` over `group`, in one flat buffer per dtype:
    data-parallel replication when the parameters are DTensors (which DDP does not take)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    from torch.distributed.tensor import DTensor

    for param in params:  # e.g. an embedding's gradient arrives Partial; its shards must line up with the weight's
        if isinstance(param.grad, DTensor) and param.grad.placements != param.placements:
            param.grad = param.grad.redistribute(placements=param.placements)
    grads = [_local(p.grad) for p in params if p.grad is not None]
    size = dist.get_world_size(group)
    for dtype in sorted({g.dtype for g in grads}, key=str):
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat, group=group)
        if average:
            flat /= size
        for grad, reduced in zip(same, _unflatten_dense_tensors(flat, same)):
            grad.copy_(reduced)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, *, device: torch.device, pp_group=None,
                   skip: set[int] = frozenset()) -> float:
    """The global gradient norm over every parameter of the model once (DTensor shards counted by
    placement; pipeline stages summed over `pp_group`; `skip` = ids of parameters another stage
    already counts, a tied head), then every gradient scaled by min(1, max_norm / norm). A stage
    may train nothing (its layers frozen): it adds a zero on `device`."""
    import math

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None and id(p) not in skip]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if pp_group is not None:
        squared = norm.float() ** 2
        dist.all_reduce(squared, group=pp_group)
        norm = squared.sqrt()
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
    return float(norm)
