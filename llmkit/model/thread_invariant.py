"""GELU and SiLU on a CPU whose bits do not follow the thread count.

PyTorch's CPU kernels for these activations (and their backwards) split a tensor's elements into
one run per thread, compute each run in SIMD vectors, and compute the run's last few elements, too
few to fill two vectors, with the scalar formula, whose last bit can differ. So which elements take
the scalar formula follows the thread count: GELU at `gpt2-tiny`'s shape gave other logits on 3
threads than on 1 or 2, and a 4-step `gpt2-tiny` pretraining run on 3 threads another fingerprint.
(exp, tanh and the arithmetic operators pad their last vector instead, and are not affected.)

`elementwise` calls an op so that every thread's run is a multiple of 64 elements wide (two vectors
of any dtype and SIMD width; in a tensor whose rows are strided, a run starts at a row's start or at
a multiple of 64 in it): one call over the largest prefix of rows that splits so into as many runs
as the kernel makes (`_THREADS_SPLIT_ABOVE`), then whatever is left in calls too small for any
kernel to split. The elements that take the scalar formula are then the ones a single thread
gives them, at every thread count, and the results equal one thread's to the bit (tested on 1 to 16
threads). The split is PyTorch's (an OpenMP `parallel_for` over the elements, its grain 32,768
elements, or n / threads above 16,384 for GELU); tests/test_model.py checks it still holds.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

_ALIGN = 64  # two AVX-512 vectors of bf16, four of float32: a multiple of every kernel's unrolled step
_GRAIN = 32_768  # at::internal::GRAIN_SIZE: a kernel runs more threads only on more elements than this each
_SERIAL = 16_384  # at most this many elements: one thread whatever the kernel (GELU splits above 16,384)


def _plain() -> bool:
    return torch.compiler.is_compiling()


def elementwise(op: Callable[..., torch.Tensor], out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """op(*inputs, out=...) into `out` (inputs and out of one shape), so that its bits do not follow
    the thread count. Small calls, the decoding step's, go whole."""
    n = out.numel()
    if n <= _SERIAL:
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
    _split_rows(op, width, rows_of[0], rows_of[1:])
    return out


def _split_rows(op, width: int, out: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    rows = out.shape[0]
    unit_rows = math.lcm(_ALIGN, width) // width  # rows whose run ends at a multiple of 64 and of the width
    threads = torch.get_num_threads()
    done = 0
    if threads > 1:
        prefix = rows // (threads * unit_rows) * (threads * unit_rows)
        if prefix * width > (threads - 1) * _GRAIN:  # every kernel then makes one run a thread, equal and aligned
            op(*(t[:prefix] for t in inputs), out=out[:prefix])
            done = prefix
    if unit_rows * width <= _SERIAL:
        step = _SERIAL // (unit_rows * width) * unit_rows
        for start in range(done, rows, step):
            op(*(t[start:start + step] for t in inputs), out=out[start:start + step])
        return
    # wide rows: each row in column blocks of a multiple of 64, the last to the row's end
    block = _SERIAL // _ALIGN * _ALIGN
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
        return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=out)
    return elementwise(_silu_backward_into, out, grad, x)


def _silu_backward_into(grad, x, out):
    return torch.ops.aten.silu_backward.grad_input(grad, x, grad_input=out)


def _as_is(x: torch.Tensor) -> bool:
    """PyTorch's own call will do: not on a CPU, under torch.compile, or one thread's work anyway
    (a decoding step's; going through `elementwise` would cost it a few microseconds)."""
    return x.numel() <= _SERIAL or x.device.type != "cpu" or _plain()


def silu(x: torch.Tensor) -> torch.Tensor:
    if _as_is(x):
        return F.silu(x)
    return elementwise(_silu_into, torch.empty(x.shape, dtype=x.dtype), x)


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return elementwise(_gelu_into, torch.empty(x.shape, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return elementwise(_gelu_backward_into, torch.empty(x.shape, dtype=x.dtype), grad.contiguous(), x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (GPT-2's), as F.gelu(x, approximate="tanh") computes it."""
    if _as_is(x):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _GeluTanh.apply(x)
    return elementwise(_gelu_into, torch.empty(x.shape, dtype=x.dtype), x)
