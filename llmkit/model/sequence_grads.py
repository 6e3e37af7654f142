"""Gradients that do not depend on how a step's batch is split: each sequence's weight gradient
made from its own tokens, and the sequences' gradients summed in one fixed order.

A step's gradient is a sum over its sequences. PyTorch sums them inside the weight gradient's
matrix product, in an order set by how many sequences that product saw: micro-batch 4 and
micro-batch 8 agree to rounding, not to the bit, and two processes add their halves in yet
another order. Under `per_sequence_gradients(...)` every op with a weight hands its gradient to
a SequenceTree (llmkit/model/sequence_tree.py) by sequence position instead of adding it to
`.grad`:
- Linear: one product per aligned run of 4 sequences, over their tokens (a run split across
  micro-batches waits until it is whole);
- Embedding: per (sequence, row it uses), the sum of that sequence's tokens' gradients;
- LayerNorm / RMSNorm: per sequence, the sums of its tokens' scale and shift gradients (the
  fused kernels compute the norm itself);
- the fused head and loss (llmkit/model/fused_loss.py): chunks that never span two sequences,
  accumulated in position order into one matrix per run.
The tree adds them pairwise along the positions, the same tree whatever the micro-batch, the
number of processes and the threads, so the trained weights are the same to the bit.

What else it relies on:
- The forward pass and the activations' gradients are per row already: a row of a matrix
  product does not change with the rows beside it (measured: oneDNN, llmkit/model/cpu_gemm.py,
  from 2 rows on, MKL from 16; a sequence
  has its T rows in every product, and a shorter product, a classifier head's, is padded to
  16). The tests check the end result.
- The loss's backward is seeded with the micro-batch's target count, so each token's gradient
  is exactly its own (count / count = 1); the tree's sum is divided once by the step's count.
- Dropout masks per sequence, seeded by the step and the sequence's position
  (llmkit/model/sequence_dropout.py), not drawn from the process's random stream.

Used by the training engine on CPU (llmkit/train/data_parallel.py, `--batch-invariant`); the
activation-checkpointing recompute re-enters it (llmkit/train/parallelize.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llmkit.model import cpu_gemm
from llmkit.model.sequence_tree import SequenceTree

# ---------------------------------------------------------------------------------------------
# Ops with weights, each weight gradient one sequence (or run) at a time


@dataclass
class MicroBatch:
    """Where the current micro-batch sits: its first sequence's position in the step, its size;
    what its dropout masks are drawn from (llmkit/model/sequence_dropout.py)."""

    tree: SequenceTree
    first: int
    sequences: int
    dropout_key: int = 0  # the run's seed and the step, mixed
    dropout_calls: int = 0  # dropout calls so far in this forward pass (a mask's seed includes it)
    # Each sequence's loss summed over its targets, by its position in the step (the fused head's):
    # the step's loss added from these in one order is the same whatever the split (train_step).
    sequence_losses: dict[int, float] = field(default_factory=dict)


# A row of a matrix product has the same bits whatever the rows beside it only from this many
# rows on: MKL takes other kernels for fewer (measured: 16 rows with AVX2, 8 with AVX-512; the
# oneDNN products of llmkit/model/cpu_gemm.py, used on x86 CPUs with AVX-512, from 2). A
# language model's products have T rows a sequence; a classifier's head has one per example, so a
# micro-batch of 1 to 15 is padded to 16 rows of zeros.
MIN_ROWS = 16


def at_least_min_rows(product, x: torch.Tensor) -> torch.Tensor:
    """product(x) for x [..., C], computed over at least MIN_ROWS rows."""
    rows = x.numel() // x.shape[-1]
    if rows >= MIN_ROWS:
        return product(x)
    flat = x.reshape(rows, x.shape[-1])
    padded = torch.cat([flat, flat.new_zeros(MIN_ROWS - rows, flat.shape[-1])])
    return product(padded)[:rows].reshape(*x.shape[:-1], -1)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, where: MicroBatch):
        y = at_least_min_rows(lambda rows: cpu_gemm.linear(rows, weight, bias), x)  # under autocast in its dtype, as the plain layer
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)  # a frozen weight's layer keeps no input
        ctx.where, ctx.weight, ctx.bias, ctx.x_dtype = where, weight, bias, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        where, low = ctx.where, grad.dtype
        grad_x = (at_least_min_rows(lambda rows: cpu_gemm.matmul(rows, weight.to(low)), grad).to(ctx.x_dtype)
                  if ctx.needs_input_grad[0] else None)
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
    if need_weight:  # (normed is the caller's scratch: multiplied in place, one [B, T, C] buffer the fewer)
        scaled = normed.mul_(grad).reshape(where.sequences, -1, width)
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
        _push_scale_shift(ctx.where, ctx.weight, ctx.bias, grad, (x - mean).mul_(rstd),
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


@lru_cache(maxsize=1)
def _handlers():
    from llmkit.model import fused_loss  # (imports this module)
    from llmkit.model import sequence_dropout

    return {F.linear: _linear, cpu_gemm.linear: _linear, F.embedding: _embedding, F.layer_norm: _layer_norm, F.rms_norm: _rms_norm,
            fused_loss.linear_cross_entropy: _head_and_loss, F.dropout: sequence_dropout.dropout,
            F.scaled_dot_product_attention: sequence_dropout.attention}


class _PerSequenceMode(TorchFunctionMode):
    def __init__(self, where: MicroBatch, dropout_calls: int | None = None):
        super().__init__()
        self.where, self.handlers, self.dropout_calls = where, _handlers(), dropout_calls

    def __enter__(self):
        _active.append(self.where)
        if self.dropout_calls is not None:  # a recomputation draws the masks its block drew
            self.where.dropout_calls = self.dropout_calls
        return super().__enter__()

    def __exit__(self, *exc):
        _active.pop()
        return super().__exit__(*exc)

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


def record_sequence_loss(row: int, value: float) -> None:
    """A loss not made by the fused head (a preference pair's, at its first row): kept by the row's
    position in the step, as the fused head keeps each sequence's, so that the step's loss is added in
    one order whatever the split (DataParallelRun.step_loss). Nothing outside per_sequence_gradients."""
    if _active:
        where = _active[-1]
        where.sequence_losses[where.first + row] = value


def recompute_contexts():
    """For torch.utils.checkpoint's context_fn: the recomputation in the backward pass runs the
    forward's ops as they ran (per sequence, for the same micro-batch), not the usual ones."""
    if not _active:
        return nullcontext(), nullcontext()
    where = _active[-1]
    return nullcontext(), _PerSequenceMode(where, dropout_calls=where.dropout_calls)


def per_sequence_gradients(tree: SequenceTree, first: int, sequences: int, dropout_key: int = 0) -> _PerSequenceMode:
    """Within: the forward and backward of a micro-batch of `sequences` sequences, the first at
    position `first` of the step; weight gradients go to `tree` instead of `.grad`, dropout masks
    come from `dropout_key` (sequence_dropout.step_key) and each sequence's position. Ops without
    a per-sequence form (and frozen weights) run as usual."""
    return _PerSequenceMode(MicroBatch(tree, first, sequences, dropout_key))
