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

# A Linear layer's weight gradient is one matrix product per aligned run of this many
# sequences (over their 4*T tokens): the tree starts above it. Per-sequence products (K = T) ran
# the backward pass 17% slower than one product per micro-batch, runs of 4 within 6% of it
# (4 x 256 GPT-2 shape, 16 x 256 tokens). A power of two; each process's share of a step must
# be a multiple of it.
PRODUCT_RUN = 4


# ---------------------------------------------------------------------------------------------
# The fixed summation order: a perfect binary tree over the step's positions 0..2^k-1, where a
# node is its left half plus its right half and a half without sequences adds nothing.


@dataclass
class Block:
    """The sum of the gradients of sequences start..start+size-1 (size a power of two, start a multiple of it)."""

    start: int
    size: int
    values: torch.Tensor


def _siblings(left: Block, right: Block) -> bool:
    return left.size == right.size and left.start % (2 * left.size) == 0 and right.start == left.start + left.size


def _push(stack: list[Block], block: Block) -> None:
    """Append, then merge the last two while they are the two halves of one aligned block: a
    binary counter over positions, so a block is always the sum of its two halves."""
    stack.append(block)
    while len(stack) >= 2 and _siblings(stack[-2], stack[-1]):
        right, left = stack.pop(), stack.pop()
        stack.append(Block(left.start, 2 * left.size, left.values.add_(right.values)))


def _collapse(stack: list[Block]) -> torch.Tensor:
    """The blocks left at the end (the binary digits of the sequence count), added right to left:
    the tree's upper nodes, whose right halves hold fewer sequences."""
    total = stack[-1].values
    for block in reversed(stack[:-1]):
        total = block.values + total
    return total


def _halves_summed(values: torch.Tensor) -> torch.Tensor:
    """The tree over an aligned run of 2^j sequences (values [2^j, ...]), a level at a time."""
    while values.shape[0] > 1:
        values = values[0::2] + values[1::2]
    return values[0]


def block_layout(start: int, count: int) -> list[tuple[int, int]]:
    """(start, size) of the blocks a stack holds after positions start..start+count-1."""
    stack: list[tuple[int, int]] = []
    for position in range(start, start + count):
        stack.append((position, 1))
        while len(stack) >= 2 and stack[-2][1] == stack[-1][1] and stack[-2][0] % (2 * stack[-1][1]) == 0:
            size = stack.pop()[1]
            stack[-1] = (stack[-1][0], 2 * size)
    return stack


def merge_ranks(layouts: list[list[tuple[int, int]]], parts: list[list[torch.Tensor]]) -> list[Block]:
    """The stack one process would hold, from each rank's blocks (in rank order, each rank's
    layout from block_layout): pushed in position order, halves merge exactly as they would have."""
    stack: list[Block] = []
    for layout, values in zip(layouts, parts):
        for (start, size), value in zip(layout, values):
            _push(stack, Block(start, size, value))
    return stack


@dataclass
class RowEntries:
    """A sparse gradient (an embedding's): per (sequence position, row) the sum of that sequence's tokens' gradients."""

    positions: list[torch.Tensor] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.positions), torch.cat(self.rows), torch.cat(self.values)


def rows_tree(positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, shape: torch.Size, levels: int) -> torch.Tensor:
    """The dense gradient [V, ...] from sparse per-sequence entries: for every row, the same tree
    over positions as the dense parameters', its halves without that row left out (they would add
    zeros, which change nothing), computed a level at a time over all rows at once."""
    order = torch.argsort(rows * (int(positions.max()) + 1) + positions)
    rows, blocks, values = rows[order], positions[order], values[order]
    for _ in range(levels):
        parent = blocks >> 1
        pairs = ((rows[1:] == rows[:-1]) & (parent[1:] == parent[:-1])).nonzero().squeeze(1)
        if len(pairs):
            values[pairs] = values[pairs] + values[pairs + 1]
            keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
            keep[pairs + 1] = False
            rows, parent, values = rows[keep], parent[keep], values[keep]
        blocks = parent
    return values.new_zeros(shape).index_copy_(0, rows, values)


@dataclass
class SequenceTree:
    """Per parameter and role ("linear", "embedding", ...: a tied weight has two), the
    per-sequence gradients of this step so far: dense blocks, or sparse row entries."""

    stacks: dict[tuple[int, str], list[Block]] = field(default_factory=dict)
    entries: dict[tuple[int, str], RowEntries] = field(default_factory=dict)
    units: dict[tuple[int, str], int] = field(default_factory=dict)  # sequences per leaf (1 unless a product run)
    pending: dict[tuple[int, str], tuple[torch.Tensor, int, list, list]] = field(default_factory=dict)  # runs not yet whole
    open_runs: dict[tuple[int, str], tuple[int, torch.Tensor]] = field(default_factory=dict)  # accumulators of runs

    def push(self, param: torch.Tensor, role: str, first: int, per_sequence: torch.Tensor) -> None:
        """Add the gradients of sequences first, first+1, ... (per_sequence[i], in the parameter's dtype)."""
        stack = self.stacks.setdefault((id(param), role), [])
        count = per_sequence.shape[0]
        for start, size in block_layout(first, count):
            values = _halves_summed(per_sequence[start - first : start - first + size])
            if size == 1 and count > 1:  # a view into the batch's buffer: its own memory, so the buffer can go
                values = values.clone()
            _push(stack, Block(start, size, values))

    def push_product(self, param: torch.Tensor, role: str, first: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """Add the gradient left^T @ right of sequences first, first+1, ... (left [n, T, O] and
        right [n, T, I], contiguous): one product per run of PRODUCT_RUN sequences, its leaf of
        the tree; a run that other micro-batches complete waits here (copied) until it is whole."""
        key = (id(param), role)
        self.units[key] = PRODUCT_RUN
        done = 0
        while done < left.shape[0]:
            position = first + done
            run, offset = divmod(position, PRODUCT_RUN)
            take = min(left.shape[0] - done, PRODUCT_RUN - offset)
            parts = left[done : done + take], right[done : done + take]
            done += take
            if offset == 0 and take == PRODUCT_RUN:
                self._push_run(param, key, run, *parts)
                continue
            _, waiting_run, lefts, rights = self.pending.setdefault(key, (param, run, [], []))
            if waiting_run != run:
                raise RuntimeError("per-sequence gradients arrived out of position order")
            lefts.append(parts[0].clone())
            rights.append(parts[1].clone())
            if offset + take == PRODUCT_RUN:
                self._flush(key)

    def _push_run(self, param: torch.Tensor, key, run: int, left: torch.Tensor, right: torch.Tensor) -> None:
        value = torch.mm(left.reshape(-1, left.shape[-1]).t(), right.reshape(-1, right.shape[-1]))
        _push(self.stacks.setdefault(key, []), Block(run, 1, value.to(param.dtype)))

    def _flush(self, key) -> None:
        param, run, lefts, rights = self.pending.pop(key)
        self._push_run(param, key, run, torch.cat(lefts), torch.cat(rights))

    def run_accumulator(self, param: torch.Tensor, role: str, position: int) -> tuple[torch.Tensor, bool]:
        """For gradients added product by product (the fused head's chunks): the buffer that
        `position`'s run of PRODUCT_RUN sequences accumulates into, in position order, and
        whether it is new (to be written, not added to). end_sequence closes it."""
        key = (id(param), role)
        self.units[key] = PRODUCT_RUN
        run, offset = divmod(position, PRODUCT_RUN)
        if offset == 0:
            self.open_runs[key] = (run, torch.empty_like(param))
            return self.open_runs[key][1], True
        if key not in self.open_runs or self.open_runs[key][0] != run:
            raise RuntimeError("per-sequence gradients arrived out of position order")
        return self.open_runs[key][1], False

    def end_sequence(self, param: torch.Tensor, role: str, position: int) -> None:
        if position % PRODUCT_RUN == PRODUCT_RUN - 1:
            self._close_run((id(param), role))

    def _close_run(self, key) -> None:
        run, value = self.open_runs.pop(key)
        _push(self.stacks.setdefault(key, []), Block(run, 1, value))

    def push_rows(self, param: torch.Tensor, role: str, positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Add sparse gradients: values[i] is sequence positions[i]'s gradient of row rows[i]."""
        entries = self.entries.setdefault((id(param), role), RowEntries())
        entries.positions.append(positions)
        entries.rows.append(rows)
        entries.values.append(values)

    def roles(self, param: torch.Tensor) -> list[str]:
        return sorted(role for key, role in (*self.stacks, *self.entries) if key == id(param))

    def gradients(self, params: list[torch.Tensor], *, sequences: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor | None]:
        """Each parameter's summed gradient (its roles added in name order), then the tree is
        empty. `sequences`: this rank's count this step. With several processes (collective), rank
        r held positions r*sequences onwards: every rank's blocks and entries are gathered and
        merged in the tree one process would build."""
        for key in list(self.pending):  # the step's last run, short of PRODUCT_RUN sequences
            self._flush(key)
        for key in list(self.open_runs):
            self._close_run(key)
        keys = [(p, role) for p in params for role in self.roles(p)]
        dense = [(p, role) for p, role in keys if (id(p), role) in self.stacks]
        sparse = {(id(p), role): self.entries[(id(p), role)].cat() for p, role in keys if (id(p), role) in self.entries}
        if world_size > 1:
            self._gather_dense(dense, rank, world_size, sequences)
            sparse = {key: _gather_rows(*parts) for key, parts in sparse.items()}
        levels = max(0, (world_size * sequences - 1).bit_length())
        sums: dict[int, torch.Tensor] = {}
        for p, role in keys:
            key = (id(p), role)
            total = _collapse(self.stacks[key]) if key in self.stacks else rows_tree(*sparse[key], p.shape, levels)
            sums[id(p)] = total if id(p) not in sums else sums[id(p)] + total
        self.stacks.clear()
        self.entries.clear()
        self.units.clear()
        return [sums.get(id(p)) for p in params]

    def _gather_dense(self, keys, rank: int, world_size: int, per_rank: int) -> None:
        import torch.distributed as dist

        if not keys:
            return
        if per_rank % PRODUCT_RUN:
            raise RuntimeError(f"each process's share of a step ({per_rank} sequences) must be a multiple of {PRODUCT_RUN}")
        layouts = {unit: [block_layout(r * per_rank // unit, per_rank // unit) for r in range(world_size)]
                   for unit in {1, PRODUCT_RUN}}
        depth = max(len(layout) for unit in layouts for layout in layouts[unit])
        sizes = [p.numel() for p, _ in keys]
        mine = torch.zeros(depth, sum(sizes), dtype=keys[0][0].dtype)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            stack = self.stacks[(id(p), role)]
            if [(b.start, b.size) for b in stack] != layouts[self.units.get((id(p), role), 1)][rank]:
                raise RuntimeError(f"per-sequence gradients of {tuple(p.shape)} ({role}) cover other positions than this rank's")
            for i, block in enumerate(stack):
                mine[i, offset : offset + size] = block.values.reshape(-1)
            offset += size
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            unit_layouts = layouts[self.units.get((id(p), role), 1)]
            parts = [[theirs[i, offset : offset + size].view(p.shape) for i in range(len(layout))]
                     for layout, theirs in zip(unit_layouts, everyone)]
            self.stacks[(id(p), role)] = merge_ranks(unit_layouts, parts)
            offset += size


def _gather_rows(positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor):
    """Every rank's sparse entries, concatenated (the tree sorts them by row and position)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)]))
    most = int(max(counts).item())
    index = torch.stack([positions, rows]).new_zeros(2, most)
    index[:, : len(rows)] = torch.stack([positions, rows])
    padded = values.new_zeros((most, *values.shape[1:]))
    padded[: len(rows)] = values
    indices, gathered = [torch.empty_like(index) for _ in range(world)], [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(indices, index)
    dist.all_gather(gathered, padded)
    n = [int(c) for c in counts]
    return (torch.cat([i[0, :k] for i, k in zip(indices, n)]), torch.cat([i[1, :k] for i, k in zip(indices, n)]),
            torch.cat([g[:k] for g, k in zip(gathered, n)]))


# ---------------------------------------------------------------------------------------------
# Ops with weights, each weight gradient one sequence at a time


@dataclass
class MicroBatch:
    """Where the current micro-batch sits: its first sequence's position in the step, its size."""

    tree: SequenceTree
    first: int
    sequences: int


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
        per_seq = grad.reshape(where.sequences, -1, grad.shape[-1]).contiguous()
        if ctx.needs_input_grad[1]:
            inputs = x.to(low).reshape(where.sequences, -1, x.shape[-1]).contiguous()
            where.tree.push_product(ctx.weight, "linear", where.first, per_seq, inputs)
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
        # One entry per (sequence, row it uses): a sequence's tokens of one row summed in token order.
        vocab, width = weight.shape[0], grad.shape[-1]
        keys = (torch.arange(where.sequences, device=idx.device)[:, None] * vocab + idx.reshape(where.sequences, -1)).reshape(-1)
        unique, inverse = torch.unique(keys, return_inverse=True)
        values = grad.new_zeros(len(unique), width, dtype=weight.dtype).index_add_(0, inverse, grad.reshape(-1, width).to(weight.dtype))
        where.tree.push_rows(weight, "embedding", where.first + unique // vocab, unique % vocab, values)
        return None, None, None


def _push_scale_shift(where: MicroBatch, weight, bias, grad: torch.Tensor, normed: torch.Tensor, need_weight: bool,
                      need_bias: bool) -> None:
    """A norm's per-sequence gradients: sums over each sequence's tokens of grad * normed (the
    scale) and of grad (the shift)."""
    width = grad.shape[-1]
    if need_weight:
        scaled = (grad * normed).reshape(where.sequences, -1, width)
        where.tree.push(weight, "norm", where.first, scaled.sum(dim=1).to(weight.dtype))
    if need_bias:
        where.tree.push(bias, "norm", where.first, grad.reshape(where.sequences, -1, width).sum(dim=1).to(bias.dtype))


class _LayerNorm(torch.autograd.Function):
    """F.layer_norm (the same fused kernel forward and, for the input, backward) with per-sequence scale and shift gradients."""

    @staticmethod
    def forward(ctx, x, shape, weight, bias, eps, where: MicroBatch):
        y, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd)
        ctx.shape, ctx.where, ctx.weight, ctx.bias = shape, where, weight, bias
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(grad, x, ctx.shape, mean, rstd, ctx.weight, ctx.bias,
                                                                [True, False, False])[0]
        _push_scale_shift(ctx.where, ctx.weight, ctx.bias, grad, (x - mean) * rstd,
                          ctx.weight is not None and ctx.needs_input_grad[2], ctx.bias is not None and ctx.needs_input_grad[3])
        return grad_x, None, None, None, None, None


class _RMSNorm(torch.autograd.Function):
    """F.rms_norm's fused kernel forward, with per-sequence scale gradients."""

    @staticmethod
    def forward(ctx, x, shape, weight, eps, where: MicroBatch):
        y, rstd = torch.ops.aten._fused_rms_norm(x, shape, weight, eps)
        ctx.save_for_backward(x, rstd)
        ctx.shape, ctx.where, ctx.weight = shape, where, weight
        return y

    @staticmethod
    def backward(ctx, grad):
        x, rstd = ctx.saved_tensors
        normed, grad_x = x * rstd, None
        if ctx.needs_input_grad[0]:  # (no CPU kernel for the fused backward) rstd * (g*w - n * mean(g*w*n)) over the normalised dims
            scaled = grad * ctx.weight
            dims = tuple(range(-len(ctx.shape), 0))
            grad_x = rstd * (scaled - normed * (scaled * normed).mean(dim=dims, keepdim=True))
        _push_scale_shift(ctx.where, ctx.weight, None, grad, normed, ctx.needs_input_grad[2], False)
        return grad_x, None, None, None, None


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
    if not _trains(weight, bias) or input.shape[0] != where.sequences:
        return NotImplemented
    return _LayerNorm.apply(input, list(normalized_shape), weight, bias, eps, where)


def _rms_norm(where, input, normalized_shape, weight=None, eps=None):
    if not _trains(weight) or input.shape[0] != where.sequences or input.dtype != weight.dtype:
        return NotImplemented
    return _RMSNorm.apply(input, list(normalized_shape), weight, eps, where)


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
