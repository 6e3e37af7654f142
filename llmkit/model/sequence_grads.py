"""Gradients that do not depend on how a step's batch is split: each sequence's weight gradient
computed on its own, and the sequences' gradients summed in one fixed order.

A step's gradient is a sum over its sequences. PyTorch sums them inside the weight gradient's
matrix product, in an order set by how many sequences that product saw: micro-batch 4 and
micro-batch 8 agree to rounding, not to the bit, and two processes add their halves in yet
another order. Under `per_sequence_gradients(...)` every op with a weight (Linear, Embedding,
the scale and shift of LayerNorm/RMSNorm, the fused head and loss) makes one weight gradient per
sequence instead (a batched product over the sequence's own tokens: the same numbers whatever
else is in the batch), and `SequenceTree` adds them pairwise along the sequences' positions in
the step's global batch: 0+1, 2+3, then (0+1)+(2+3), ... the same tree whatever the micro-batch,
the number of processes and the threads. So the trained weights are the same to the bit.

What else it relies on:
- The forward pass and the activations' gradients are per row already: a row of a matrix
  product does not change with the rows beside it (measured on MKL for 17 rows and more; a
  sequence has its T rows in every product). tests/test_sequence_grads.py checks the end result.
- The loss's backward is seeded with the micro-batch's target count, so each token's gradient
  is exactly its own (count / count = 1); the tree's sum is divided once by the step's count.
- No dropout: its masks come from a per-rank random stream (the engine refuses it).

Used by the training engine on CPU (llmkit/train/data_parallel.py, `--batch-invariant`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Per-sequence gradients are made at most this many elements at a time (64 MB in fp32).
CHUNK_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------------------------
# The fixed summation order


@dataclass
class Block:
    """The sum of the gradients of sequences start..start+size-1 (size a power of two, start a
    multiple of it). `rows`: the values are only these rows of the parameter (an embedding's
    rows a micro-batch touched); None: the whole parameter."""

    start: int
    size: int
    values: torch.Tensor
    rows: torch.Tensor | None = None


def _siblings(left: Block, right: Block) -> bool:
    return left.size == right.size and left.start % (2 * left.size) == 0 and right.start == left.start + left.size


def _dense(block: Block, shape: torch.Size) -> torch.Tensor:
    if block.rows is None:
        return block.values
    return block.values.new_zeros(shape).index_copy_(0, block.rows, block.values)


def _push(stack: list[Block], block: Block, shape: torch.Size) -> None:
    """Append, then merge the last two while they are the two halves of one aligned block: a
    binary counter over positions, so a block is always the sum of its two halves."""
    stack.append(block)
    while len(stack) >= 2 and _siblings(stack[-2], stack[-1]):
        right, left = stack.pop(), stack.pop()
        if left.rows is right.rows:  # whole parameters, or one micro-batch's rows
            values, rows = left.values.add_(right.values), left.rows
        else:  # rows of different micro-batches: zeros elsewhere add nothing, so dense is the same sum
            values, rows = _dense(left, shape).add_(_dense(right, shape)), None
        stack.append(Block(left.start, 2 * left.size, values, rows))


def _collapse(stack: list[Block], shape: torch.Size) -> torch.Tensor:
    """The blocks left at the end (the binary digits of the sequence count), added right to left."""
    total = _dense(stack[-1], shape)
    for block in reversed(stack[:-1]):
        total = _dense(block, shape) + total
    return total


def block_layout(start: int, count: int) -> list[tuple[int, int]]:
    """(start, size) of the blocks a stack holds after positions start..start+count-1."""
    stack: list[tuple[int, int]] = []
    for position in range(start, start + count):
        stack.append((position, 1))
        while len(stack) >= 2 and stack[-2][1] == stack[-1][1] and stack[-2][0] % (2 * stack[-1][1]) == 0:
            size = stack.pop()[1]
            stack[-1] = (stack[-1][0], 2 * size)
    return stack


@dataclass
class SequenceTree:
    """Per parameter and role ("linear", "embedding", ...: a tied weight has two), the blocks of
    per-sequence gradients summed so far in this step."""

    stacks: dict[tuple[int, str], list[Block]] = field(default_factory=dict)

    def push(self, param: torch.Tensor, role: str, first: int, per_sequence: torch.Tensor,
             rows: torch.Tensor | None = None) -> None:
        """Add the gradients of sequences first, first+1, ... (per_sequence[i], in the parameter's dtype)."""
        stack = self.stacks.setdefault((id(param), role), [])
        shape = param.shape
        for i in range(per_sequence.shape[0]):
            _push(stack, Block(first + i, 1, per_sequence[i], rows), shape)
        # Blocks still inside this batch's buffer get their own memory, so the buffer can go.
        buffer = per_sequence.untyped_storage().data_ptr()
        for block in stack:
            if per_sequence.shape[0] > 1 and block.values.untyped_storage().data_ptr() == buffer:
                block.values = block.values.clone()

    def roles(self, param: torch.Tensor) -> list[str]:
        return sorted(role for key, role in self.stacks if key == id(param))

    def gradients(self, params: list[torch.Tensor], *, rank: int = 0, world_size: int = 1,
                  per_rank: int = 0) -> list[torch.Tensor | None]:
        """Each parameter's summed gradient (its roles added in name order), then the tree is
        empty. With several processes (collective), rank r held positions r*per_rank onwards:
        every rank's blocks are gathered and merged in the same tree one process would build."""
        keys = [(p, role) for p in params for role in self.roles(p)]
        if world_size > 1:
            self._gather(keys, rank, world_size, per_rank)
        sums: dict[int, torch.Tensor] = {}
        for p, role in keys:
            total = _collapse(self.stacks[(id(p), role)], p.shape)
            sums[id(p)] = total if id(p) not in sums else sums[id(p)] + total
        self.stacks.clear()
        return [sums.get(id(p)) for p in params]

    def _gather(self, keys, rank: int, world_size: int, per_rank: int) -> None:
        import torch.distributed as dist

        layouts = [block_layout(r * per_rank, per_rank) for r in range(world_size)]
        depth = max(len(layout) for layout in layouts)
        sizes = [p.numel() for p, _ in keys]
        mine = torch.zeros(depth, sum(sizes), dtype=keys[0][0].dtype)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            stack = self.stacks[(id(p), role)]
            if [(b.start, b.size) for b in stack] != layouts[rank]:
                raise RuntimeError(f"per-sequence gradients of {tuple(p.shape)} ({role}) cover other positions than this rank's")
            for i, block in enumerate(stack):
                mine[i, offset : offset + size] = _dense(block, p.shape).reshape(-1)
            offset += size
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            parts = [[theirs[i, offset : offset + size].view(p.shape) for i in range(len(layout))]
                     for layout, theirs in zip(layouts, everyone)]
            self.stacks[(id(p), role)] = merge_ranks(layouts, parts, p.shape)
            offset += size


def merge_ranks(layouts: list[list[tuple[int, int]]], parts: list[list[torch.Tensor]], shape: torch.Size) -> list[Block]:
    """The stack one process would hold, from each rank's blocks (in rank order, each rank's
    layout from block_layout): pushed in position order, halves merge exactly as they would have."""
    stack: list[Block] = []
    for layout, values in zip(layouts, parts):
        for (start, size), value in zip(layout, values):
            _push(stack, Block(start, size, value), shape)
    return stack


# ---------------------------------------------------------------------------------------------
# Ops with weights, each weight gradient one sequence at a time


@dataclass
class MicroBatch:
    """Where the current micro-batch sits: its first sequence's position in the step, its size."""

    tree: SequenceTree
    first: int
    sequences: int


def _chunks(sequences: int, per_sequence_elements: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_sequence_elements))
    for start in range(0, sequences, step):
        yield start, min(start + step, sequences)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, where: MicroBatch):
        y = F.linear(x, weight, bias)  # under autocast in its dtype, as the plain layer
        ctx.save_for_backward(x, weight)
        ctx.where, ctx.weight, ctx.bias = where, weight, bias
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        where, low = ctx.where, grad.dtype
        grad_x = grad.matmul(weight.to(low)).to(x.dtype) if ctx.needs_input_grad[0] else None
        per_seq = grad.reshape(where.sequences, -1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            inputs = x.to(low).reshape(where.sequences, -1, x.shape[-1])
            for start, stop in _chunks(where.sequences, weight.numel()):
                products = torch.bmm(per_seq[start:stop].transpose(1, 2), inputs[start:stop])
                where.tree.push(ctx.weight, "linear", where.first + start, products.to(weight.dtype))
        if ctx.bias is not None and ctx.needs_input_grad[2]:
            where.tree.push(ctx.bias, "linear", where.first, per_seq.sum(dim=1).to(ctx.bias.dtype))
        return grad_x, None, None, None


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight, where: MicroBatch):
        ctx.save_for_backward(idx)
        ctx.where, ctx.weight = where, weight
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        where, weight = ctx.where, ctx.weight
        # Only the rows this micro-batch uses: [sequences, rows, C] instead of [sequences, V, C].
        rows, inverse = torch.unique(idx, return_inverse=True)
        width = grad.shape[-1]
        slots = (torch.arange(where.sequences, device=idx.device)[:, None] * len(rows) + inverse.reshape(where.sequences, -1))
        per_seq = grad.new_zeros(where.sequences * len(rows), width, dtype=weight.dtype)
        per_seq.index_add_(0, slots.reshape(-1), grad.reshape(-1, width).to(weight.dtype))  # in token order
        where.tree.push(weight, "embedding", where.first, per_seq.view(where.sequences, len(rows), width), rows=rows)
        return None, None, None


class _ScaleShift(torch.autograd.Function):
    """y = x * weight (+ bias): the affine part of a norm, after its parameter-free part."""

    @staticmethod
    def forward(ctx, normed, weight, bias, where: MicroBatch):
        ctx.save_for_backward(normed, weight)
        ctx.where, ctx.weight, ctx.bias = where, weight, bias
        y = normed * weight
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad):
        normed, weight = ctx.saved_tensors
        where = ctx.where
        grad_normed = grad * weight if ctx.needs_input_grad[0] else None
        per_seq = grad.reshape(where.sequences, -1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            scaled = (grad * normed).reshape(where.sequences, -1, grad.shape[-1])
            where.tree.push(ctx.weight, "norm", where.first, scaled.sum(dim=1).to(weight.dtype))
        if ctx.bias is not None and ctx.needs_input_grad[2]:
            where.tree.push(ctx.bias, "norm", where.first, per_seq.sum(dim=1).to(ctx.bias.dtype))
        return grad_normed, None, None, None


def _trains(*params) -> bool:
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


def _linear(where, input, weight, bias=None):
    if not _trains(weight, bias) or input.dim() < 2 or input.shape[0] != where.sequences:
        return NotImplemented
    return _Linear.apply(input, weight, bias, where)


def _embedding(where, input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    if (not _trains(weight) or input.dim() < 2 or input.shape[0] != where.sequences or padding_idx is not None
            or max_norm is not None or scale_grad_by_freq or sparse):
        return NotImplemented
    return _Embedding.apply(input, weight, where)


def _layer_norm(where, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    if not _trains(weight, bias) or input.shape[0] != where.sequences or weight is None:
        return NotImplemented
    return _ScaleShift.apply(F.layer_norm(input, normalized_shape, None, None, eps), weight, bias, where)


def _rms_norm(where, input, normalized_shape, weight=None, eps=None):
    if not _trains(weight) or input.shape[0] != where.sequences:
        return NotImplemented
    return _ScaleShift.apply(F.rms_norm(input, normalized_shape, None, eps), weight, None, where)


def _head_and_loss(where, hidden, weight, targets):
    from llmkit.model import fused_loss

    if hidden.shape[0] != where.sequences:
        return NotImplemented
    return fused_loss.per_sequence_linear_cross_entropy(hidden, weight, targets, where)


def _handlers():
    from llmkit.model import fused_loss

    return {F.linear: _linear, F.embedding: _embedding, F.layer_norm: _layer_norm, F.rms_norm: _rms_norm,
            fused_loss.linear_cross_entropy: _head_and_loss}


class _PerSequenceMode(TorchFunctionMode):
    def __init__(self, where: MicroBatch):
        super().__init__()
        self.where, self.handlers = where, _handlers()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is not None:
            result = handler(self.where, *args, **kwargs)
            if result is not NotImplemented:
                return result
        return func(*args, **kwargs)


_active: list[MicroBatch] = []


def active() -> bool:
    """True inside per_sequence_gradients: a layer then keeps the batch dimension on every call."""
    return bool(_active)


@contextmanager
def per_sequence_gradients(tree: SequenceTree, first: int, sequences: int):
    """Within: the forward of a micro-batch of `sequences` sequences, the first at position
    `first` of the step; its backward (which may run after) adds weight gradients to `tree`
    instead of `.grad`. Ops without a per-sequence form (and frozen weights) run as usual."""
    where = MicroBatch(tree, first, sequences)
    _active.append(where)
    try:
        with _PerSequenceMode(where):
            yield where
    finally:
        _active.pop()
