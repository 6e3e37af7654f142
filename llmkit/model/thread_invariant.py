"""GELU and SiLU on a CPU whose bits do not follow the thread count.

PyTorch's CPU kernels for these activations (and their backwards) split a tensor's elements into
one run per thread, compute each run in SIMD vectors, and compute the run's last few elements, too
few to fill two vectors, with the scalar formula, whose last bit can differ. So which elements take
the scalar formula follows the thread count: GELU at `gpt2-tiny`'s shape gave other logits on 3
threads than on 1 or 2, and a 4-step `gpt2-tiny` pretraining run on 3 threads another fingerprint.
(exp, tanh and the arithmetic operators pad their last vector instead, and are not affected.)

`elementwise` calls an op so that every thread's run is a multiple of 64 elements wide (two vectors
of any dtype and SIMD width; in a tensor whose rows are strided, a run starts at a row's start or at
a multiple of 64 in it): one call over the largest prefix of rows that the kernel splits into equal
runs so (`_Split`: how many it makes of n elements), then what is left in calls too small for it to
split. The elements that take the scalar formula are then the ones a single thread gives them, and
the results equal one thread's to the bit (tested on 1 to 16 threads). The split is PyTorch's (an
OpenMP `parallel_for` over the elements, its grain 32,768 elements, or n / threads above 16,384 for
GELU's forward); tests/test_model.py checks it still holds. On one thread, or for a call too small
to split (a decoding step's), PyTorch's own call runs as it is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

_ALIGN = 64  # two AVX-512 vectors of bf16, four of float32: a multiple of every kernel's unrolled step
_GRAIN = 32_768  # at::internal::GRAIN_SIZE


class _Split:
    """How a kernel splits one call of n elements among the threads: TensorIterator's default, one
    run per 32,768 elements up to one a thread (and none below); GELU's forward, one run a thread
    above 16,384 elements."""

    def __init__(self, every_thread_above: int | None = None):
        self.every_thread_above = every_thread_above
        self.serial_up_to = every_thread_above or _GRAIN  # a call this small runs on one thread

    def team(self, n: int, threads: int) -> int:
        if n <= self.serial_up_to or threads == 1:
            return 1
        return threads if self.every_thread_above else min(threads, -(-n // _GRAIN))


_DEFAULT, _GELU = _Split(), _Split(every_thread_above=16_384)


def _plain() -> bool:
    return torch.compiler.is_compiling()


def elementwise(op: Callable[..., torch.Tensor], out: torch.Tensor, *inputs: torch.Tensor, split: _Split = _DEFAULT
                ) -> torch.Tensor:
    """op(*inputs, out=...) into `out` (inputs and out of one shape, each contiguous or strided by
    rows: what the model passes), so that its bits do not follow the thread count: one thread's
    bits. `split`: how the op's kernel splits a call. One thread, or a call too small to split
    (a decoding step's), goes whole."""
    n, threads = out.numel(), torch.get_num_threads()
    # (another layout, a transposed tensor's, is iterated in its memory order whole and row by row split: copied)
    inputs = tuple(t if t.is_contiguous() or _by_rows(t) else t.contiguous() for t in inputs)
    if split.team(n, threads) == 1:
        op(*inputs, out=out)
        return out
    flat = out.is_contiguous() and all(t.is_contiguous() for t in inputs)
    if flat:  # iterated as one run of elements: rows of 64, then the last n % 64 in a call of their own
        body = n - n % _ALIGN
        if body < n:
            op(*(t.reshape(-1)[body:] for t in inputs), out=out.view(-1)[body:])
        width = _ALIGN
        rows_of = [t.reshape(-1)[:body].view(-1, width) for t in (out, *inputs)]
    else:  # iterated row by row: each run ends at a row's end
        width = out.shape[-1]
        rows_of = [out.view(-1, width), *(t.reshape(-1, width) for t in inputs)]
    _split_rows(op, width, rows_of[0], rows_of[1:], split, threads)
    return out


def _by_rows(t: torch.Tensor) -> bool:
    """Whether t is rows of contiguous elements, strided (SwiGLU's gate, a half of each row)."""
    if t.dim() == 0 or t.stride(-1) != 1:
        return False
    try:
        t.view(-1, t.shape[-1])
    except RuntimeError:
        return False
    return True


def _split_rows(op, width: int, out: torch.Tensor, inputs: list[torch.Tensor], split: _Split, threads: int) -> None:
    """The largest prefix of rows that the kernel splits into equal runs, each a multiple of 64 elements
    and of the width, in one call; the rest in calls it runs on one thread."""
    rows = out.shape[0]
    unit_rows = math.lcm(_ALIGN, width) // width  # rows whose run ends at a multiple of 64 and of the width
    done = 0
    for team in range(split.team(rows * width, threads), 1, -1):
        prefix = rows // (team * unit_rows) * (team * unit_rows)
        if prefix and split.team(prefix * width, threads) == team:
            op(*(t[:prefix] for t in inputs), out=out[:prefix])
            done = prefix
            break
    if unit_rows * width <= split.serial_up_to:
        step = split.serial_up_to // (unit_rows * width) * unit_rows
        for start in range(done, rows, step):
            op(*(t[start:start + step] for t in inputs), out=out[start:start + step])
        return
    # wide rows: each row in column blocks of a multiple of 64, the last to the row's end
    block = split.serial_up_to // _ALIGN * _ALIGN
    for row in range(done, rows):
        for start in range(0, width, block):
            op(*(t[row, start:start + block] for t in inputs), out=out[row, start:start + block])


def _gelu_into(x, out):
    return torch.ops.aten.gelu.out(x, approximate="tanh", out=out)


def _gelu_backward_into(grad, x, out):
    return torch.ops.aten.gelu_backward.grad_input(grad, x, approximate="tanh", grad_input=out)


def _silu_into(x, out):
    return torch.ops.aten.silu.out(x, out=out)


def silu_backward_into(grad, x, out):
    """out = the gradient of silu at x times grad (out may be a strided view)."""
    if _as_is(out):
        return _silu_backward_into(grad, x, out)
    return elementwise(_silu_backward_into, out, grad, x)


def _silu_backward_into(grad, x, out):
    return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=out)


def _as_is(x: torch.Tensor, split: _Split = _DEFAULT) -> bool:
    """PyTorch's own call will do: not on a CPU, under torch.compile, or one thread's work anyway (a
    decoding step's, or on one thread: going through `elementwise` would cost a few microseconds) on
    a layout it iterates row by row as `elementwise` does."""
    if x.device.type != "cpu" or _plain() or x.numel() <= split.serial_up_to:  # (one thread at any count: no layout check)
        return True
    return torch.get_num_threads() == 1 and (x.is_contiguous() or _by_rows(x))


def silu(x: torch.Tensor) -> torch.Tensor:
    if _as_is(x):
        return F.silu(x)
    return elementwise(_silu_into, torch.empty(x.shape, dtype=x.dtype), x)


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return elementwise(_gelu_into, torch.empty(x.shape, dtype=x.dtype), x, split=_GELU)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return elementwise(_gelu_backward_into, torch.empty(x.shape, dtype=x.dtype), grad.contiguous(), x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (GPT-2's), as F.gelu(x, approximate="tanh") computes it."""
    if _as_is(x, _GELU):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _GeluTanh.apply(x)
    return elementwise(_gelu_into, torch.empty(x.shape, dtype=x.dtype), x, split=_GELU)
