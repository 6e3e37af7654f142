"""fp32 matrix products on x86 CPUs: oneDNN's where the CPU has AVX-512 (and on any CPU not known to be AMD's),
PyTorch's own (MKL) on AMD's AVX2 CPUs; one row in products whose bits do not follow the thread count.

PyTorch's CPU `F.linear` and `mm` call MKL's sgemm for fp32. On an AMD EPYC Zen 5 (AVX-512) oneDNN's
product is about twice as fast at the shapes of a training step (4,096 × 256 → 768: 4.6 ms against
11.8 ms on 2 threads) and of batched decoding (8 × 768 → 3,072: 0.26 against 0.51 ms), presumably
because MKL picks its code path by CPU vendor (no AVX-512 on AMD) and oneDNN by instruction set.
On an AMD Zen 3 (AVX2 only) the two are close shape by shape (MKL's time 0.66x to 1.34x oneDNN's)
and a whole training step is MKL's: 1.10x the tokens per CPU-second (benchmarks/pretrain.py,
paired median of 4 rounds, 2026-12-04). So `auto` (the default of `LLMKIT_CPU_GEMM`) takes oneDNN
where PyTorch dispatches AVX-512 kernels and PyTorch's own otherwise, on AMD CPUs. On Intel CPUs
it is oneDNN's whatever the instruction set: MKL's row bits depend on the rows beside it there
(below); their speeds were not compared. PyTorch sends fp32 products to oneDNN only when asked to lower
their precision (`torch.backends.mkldnn.matmul.fp32_precision`), so the op is called here
directly: `torch.ops.mkldnn._linear_pointwise`, the one inductor's CPU code calls. It sums in fp32
(tested against the fp32 rounding bound, which bf16 or tf32 inputs would break by far).

The per-sequence gradients (llmkit/model/sequence_grads.py) need a row of a product to keep its
bits whatever the rows beside it and the thread count. oneDNN holds both from 2 rows on
(measured at the presets' product shapes, 2 to 4,096 rows, 1 and 2 threads, on AMD and Intel;
tested), MKL on AMD CPUs from 8 (AVX-512) or 16 (AVX2) rows; the callers pad to MIN_ROWS (16)
anyway. On an Intel Xeon (AVX-512, MKL 2024.2) MKL's row differed from the same row among 4,096 at
up to 128 rows (1,024 -> 256) and 256 rows (3,072 -> 768) on 2 threads, presumably its threads
splitting the sum of short products; on 1 thread it held from 16 rows.

A single row with no gradient to record (decoding one sequence) is a matrix-vector product, which
reads every weight once: its speed is how fast the weights stream from memory. On an AMD CPU (Zen 5)
numpy's OpenBLAS does that fastest, with either layout (a `mini` decode step's products: 2.9 ms, against 4.1
ms for MKL with column-major weights and oneDNN for the row-major tied head; a plain sum of the
same bytes takes 1.9 ms), so there such a row goes to it, on one thread, when the weight holds 1 MB
or more (`_one_row`). Elsewhere a weight of 2 MB or more with an even number of outputs is read
as two halves by one batched product (`_in_two_halves`: MKL's batched sgemm, which runs each half
on a thread of its own): on an Intel Xeon (AVX-512, 2 cores) batch-1 decoding of `small` ran 1.5x
faster on two threads than through one product on one thread, and 0.9x on one thread (2026-12-06).
Every other single row takes PyTorch's own product (MKL) held to one thread for the call: on that
Xeon MKL on one thread beat OpenBLAS (batch-1 decoding 1.05-1.16x from `mini` to `small`) and
oneDNN's one-row product (25-34 us against 5-11 at 384 x 384 and like). Both keep a row's bits
whatever the thread count (tested from 1 to 16 threads in one process, and in processes started on
1 and on 2 threads: a process's first product with the bias inside took other bits on 2, so the
bias is added apart), where MKL's own product on more threads splits its sums by thread (a review:
5 of 5 `small` forwards differed between 1 and 2 threads, by up to 3e-4; `tiny`'s logits by 5e-7),
so a completion's tokens stay the same on any number of cores
(until 2026-12-06 the products under 1 MB took MKL on the process's threads, and a `tiny` model's
tokens could change with them). The one thread is MKL's own setting for the calling thread
(`_mkl_threads_here`), which leaves the process's thread count, and other Python threads, alone.
OpenBLAS's and MKL's one-row bits differ from the same row among others, which only batching changes.

Where: every Linear of the GPT model (`Linear` below) and of LoRA, the per-sequence Linear and
weight gradients, the fused head and loss, eval's per-token scoring. Elsewhere it is PyTorch's
own: bf16 (under autocast, which PyTorch already sends to oneDNN), another CPU architecture, a
CUDA tensor, a DTensor (tensor parallelism), code being compiled (inductor chooses its own
kernels), forward-mode AD and torch.func transforms, shapes F.linear would broadcast. A backward
pass that is itself differentiated (`create_graph=True`) uses PyTorch's products, which have
derivatives. The choice depends only on the platform, the dtypes, the shapes and, for a single
row, whether its gradient is recorded, the weight's size and, on an AMD CPU, whether numpy carries
its own OpenBLAS (its wheels do; a numpy built on another BLAS leaves the row to PyTorch's product
on one thread), so a run's bits do not change from one run to the next.
`LLMKIT_CPU_GEMM=onednn` takes oneDNN for two rows and more on any x86 CPU, `mkl` keeps PyTorch's
own everywhere, one row included (benchmarks/pretrain.py times both); on an Intel CPU a row's bits
then depend on the rows beside it (see `_enabled`).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.overrides import handle_torch_function, has_torch_function_variadic

from llmkit.errors import UsageError

_ONEDNN = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_X86 = platform.machine().lower() in ("x86_64", "amd64")
_AVAILABLE = _ONEDNN is not None and _X86
_CHOICES = ("auto", "onednn", "mkl")


@functools.cache
def _choice() -> str:
    """LLMKIT_CPU_GEMM: auto (the default), onednn or mkl (PyTorch's own products everywhere). Read
    on first use, so that a wrong value is the running command's one-line error, not an import's
    traceback."""
    given = os.environ.get("LLMKIT_CPU_GEMM", "")
    choice = given.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise UsageError(f"LLMKIT_CPU_GEMM={given!r} is not one of {', '.join(_CHOICES)}; unset it for the platform's "
                         "faster products, or set onednn or mkl (PyTorch's own) to choose")
    return choice


def _avx512() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _amd() -> bool:
    """An AMD CPU (or Hygon's, a Zen design, on which MKL takes the same paths); False where it
    cannot be told (no /proc/cpuinfo), which keeps oneDNN's bits."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("vendor_id") and ("AuthenticAMD" in line or "HygonGenuine" in line) for line in cpuinfo)
    except OSError:
        return False


@functools.cache
def _enabled() -> bool:
    """Whether products of two rows and more go through oneDNN: asked for, or (auto) on a CPU with
    AVX-512 or not made by AMD. With AVX-512 oneDNN measured twice MKL's speed (AMD Zen 5: MKL does
    not use AVX-512 on AMD); on an AMD AVX2 CPU (Zen 3) MKL was the faster: a training step 1.10x the
    tokens per CPU-second (benchmarks/pretrain.py, paired median of 4 rounds), products from 0.66x to
    1.34x shape by shape. On Intel CPUs MKL takes its own code paths, and on 2 threads their bits
    per row depend on the rows beside it (an Intel Xeon with AVX-512: up to 256 rows at 3,072 -> 768),
    which the per-sequence gradients cannot have; oneDNN's do not."""
    choice = _choice()
    return _AVAILABLE and (choice == "onednn" or (choice == "auto" and (_avx512() or not _amd())))


_PLAIN = (torch.Tensor, nn.Parameter)  # not a DTensor (tensor parallelism) or another subclass


def _transformed() -> bool:
    """Inside forward-mode AD or a torch.func transform, which the oneDNN op has no rules for."""
    return forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


def _plain_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """x [..., I] times weight [O, I] plus bias [O] or None: plain fp32 CPU tensors, outside
    autocast and function transforms. Anything else is PyTorch's own, with its broadcasting rules
    and its messages. (The callers ask their cheaper questions first.)"""
    # written out, not a loop over the three: this runs for every product of a decode step, and the
    # loop (with `device.type`) cost about 1 us more a call
    return (type(x) in _PLAIN and type(weight) in _PLAIN and x.is_cpu and weight.is_cpu
            and x.dtype == weight.dtype == torch.float32
            and weight.dim() == 2 and 0 < x.shape[-1] == weight.shape[1] and weight.shape[0] > 0
            and (bias is None or (type(bias) in _PLAIN and bias.is_cpu and bias.dtype == torch.float32
                                  and tuple(bias.shape) == (weight.shape[0],)))
            and not torch.is_autocast_enabled("cpu") and not _transformed())


def _takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """oneDNN's product: x [..., I] of 2 rows or more, or 1 with a row-major weight (a plain product)."""
    # cheapest refusals first: a decode step of one row asks this for every layer. One row takes
    # oneDNN only with a row-major (contiguous) weight: with a column-major one
    # (prepare_for_decoding) MKL's matrix-vector kernel is the faster. oneDNN reads the bias as
    # dense, so a strided one (a view) is PyTorch's. Compilation is asked first: dynamo would
    # trace the cached _enabled and warn about it.
    return (not torch.compiler.is_compiling() and _enabled() and x.dim() >= 1
            and x.numel() >= (1 if weight.is_contiguous() else 2) * x.shape[-1]
            and (bias is None or bias.is_contiguous()) and _plain_product(x, weight, bias))


def library() -> str:
    """What computes fp32 CPU products here: "onednn", or "pytorch" (its own, MKL on x86)."""
    return "onednn" if _enabled() else "pytorch"


def takes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a @ b (a [..., K], b [K, N]) goes through oneDNN here (else it is PyTorch's own)."""
    return b.dim() == 2 and _takes(a, b.t())


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    return _ONEDNN(rows, weight, bias, "none", [], "").reshape(*x.shape[:-1], weight.shape[0])


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # only what the backward reads: a frozen weight's layer (LoRA's base) keeps no input alive
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        x_rows = x.reshape(-1, x.shape[-1]) if x is not None else None
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiated (the op has no formula)
            grad_x = grad @ weight if ctx.needs_input_grad[0] else None
            grad_weight = rows.t() @ x_rows if ctx.needs_input_grad[1] else None
        else:
            grad_x = _product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
            grad_weight = _product(rows.t(), x_rows.t(), None) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., I], weight [O, I]. Overridable like a torch function
    (llmkit/model/sequence_grads.py gives it per-sequence weight gradients)."""
    if has_torch_function_variadic(x, weight, bias):
        return handle_torch_function(linear, (x, weight, bias), x, weight, bias)
    if _one_row_takes(x, weight, bias):
        return _one_row(x, weight, bias)
    if not _takes(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _Linear.apply(x, weight, bias)
    return _product(x, weight, bias)


@functools.cache
def _numpy_openblas() -> bool:
    """Whether numpy's matmul runs on its own OpenBLAS, which is then held to one thread.

    One thread: a decode step alternates these products with PyTorch's ops, and OpenBLAS's idle
    threads would spin beside PyTorch's; one thread also keeps a row's bits whatever the thread
    count. The limit holds for numpy's BLAS in the whole process (nothing else here is numpy-BLAS
    bound)."""
    from threadpoolctl import ThreadpoolController

    own = Path(np.__file__).resolve().parent.parent / "numpy.libs"  # where numpy's wheels keep their OpenBLAS
    numpys = [lib for lib in ThreadpoolController().lib_controllers
              if lib.internal_api == "openblas" and Path(lib.filepath).resolve().parent == own]
    for lib in numpys:
        lib.set_num_threads(1)
    return bool(numpys)


ONE_ROW_MIN_WEIGHTS = 2**18  # 1 MB of fp32: below it numpy's call costs more than its faster read saves


def _one_row_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """One row with no gradient to record (decoding one sequence), plain fp32 CPU tensors, on x86."""
    return (x.dim() >= 1 and x.numel() == x.shape[-1] and _X86 and not torch.compiler.is_compiling() and _choice() != "mkl"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and _plain_product(x, weight, bias))


@functools.cache
def _rows_to_openblas() -> bool:
    """Whether one-row products of 1 MB weights and more go to numpy's OpenBLAS: on AMD CPUs, where
    its kernel streamed the weights fastest (Zen 5), or where PyTorch has no MKL to hold to one
    thread; and where numpy carries its own OpenBLAS."""
    return (_amd() or _mkl_threads_here() is None) and _numpy_openblas()


def _one_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One row, in products whose bits do not follow the thread count (the module's docstring):
    numpy's OpenBLAS (AMD, 1 MB weights and more), else two halves of the outputs in one batched
    product (2 MB and more), else PyTorch's own product (MKL) held to one thread for the call."""
    if weight.numel() >= ONE_ROW_MIN_WEIGHTS and _rows_to_openblas():
        return _openblas_row(x, weight, bias)
    set_threads = _mkl_threads_here()
    if set_threads is None:  # (a PyTorch without MKL: its own kernel, on its threads)
        return F.linear(x, weight, bias)
    # One contiguous [1, I] row whatever x's rank and strides: a strided x took another kernel whose bits
    # followed the thread count, and a 1-D x the matrix-vector one, whose first call did (a review)
    shape, row = (*x.shape[:-1], weight.shape[0]), x.reshape(1, x.shape[-1]).contiguous()
    halves = _halves(weight) if weight.numel() >= ONE_ROW_HALVES_MIN_WEIGHTS else None
    if halves is not None:  # (on MKL's threads: its batched product gives each half one of them)
        return _in_two_halves(row, halves, bias).reshape(shape)
    before = set_threads(1)
    try:
        out = F.linear(row, weight).reshape(shape)
    finally:
        set_threads(before)
    # (the bias apart: inside the product, a process's first such call's bits followed its threads)
    return out if bias is None else out.add_(bias)


ONE_ROW_HALVES_MIN_WEIGHTS = 2**19  # 2 MB of fp32: below it two threads' start costs what the second saves


def _halves(weight: torch.Tensor) -> torch.Tensor | None:
    """Weight [O, I] as [2, I, O/2], the transposes of its two halves of outputs, a view of either
    layout; None for an odd O or another layout (a slice), which would be copied."""
    outputs, inputs = weight.shape
    if outputs % 2:
        return None
    if weight.stride() == (1, outputs):  # column-major (prepare_for_decoding): each half's transpose is row-major
        return weight.t().view(inputs, 2, outputs // 2).permute(1, 0, 2)
    if weight.is_contiguous():
        return weight.view(2, outputs // 2, inputs).transpose(1, 2)
    return None


def _in_two_halves(x: torch.Tensor, halves: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One contiguous row x [1, I] times weight [O, I] as two products of O/2 outputs each, in one
    batched product (`torch.bmm`, MKL's batched sgemm), which runs the two on two threads at once, each on one:
    the weight streams from memory at two cores' speed, and the row's bits are those of two
    one-thread products, whatever the thread count (1 to 16 threads, 50 shapes, tested). MKL's own
    one-row product on two threads is as fast but splits its sums by thread. The halves are views
    of the weight (`_halves`)."""
    inputs, outputs = halves.shape[1], 2 * halves.shape[2]
    out = torch.bmm(x.reshape(1, 1, inputs).expand(2, 1, inputs), halves).reshape(1, outputs)
    return out if bias is None else out.add_(bias)


@functools.cache
def _mkl_threads_here():
    """MKL's thread count for the calling thread alone (MKL_Set_Num_Threads_Local, which returns the
    setting it replaces; 0 = none, the process's), from PyTorch's library; None where it has no MKL.

    Per thread, not torch.set_num_threads: that one is the process's, which a Python thread started
    meanwhile copies and keeps (a review: 297 of 300 threads started beside a decoding loop that
    toggled it ran on one thread for good). The pair of calls costs well under a microsecond."""
    import ctypes

    folder = Path(torch.__file__).resolve().parent / "lib"
    for name in ("libtorch_cpu.so", "torch_cpu.dll", "libtorch_cpu.dylib"):
        try:
            # (C's by-value int; the lower-case symbol is Fortran's, by pointer: passed an int, it crashed)
            setter = ctypes.CDLL(str(folder / name)).MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


def _openblas_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., I] holding one row times weight [O, I] (+ bias) through numpy's OpenBLAS.

    Its matrix-vector kernel streams the weight from memory faster than MKL's or oneDNN's here:
    a decode step's products of the `mini` preset (50 MB, out of cache) took 2.9 ms against 4.1 ms
    (MKL with the column-major weights of prepare_for_decoding, oneDNN for the row-major tied head;
    one thread, AMD Zen 5), where reading the same bytes (a sum) takes 1.9 ms. Either layout works:
    numpy hands BLAS a column-major matrix as the transposed row-major one. The call costs about
    3.5 µs more than PyTorch's, so a small weight, which the caches hold, stays there (384 x 384:
    12.0 against 8.2 µs in cache; 2,048 x 384: 43 against 58 µs)."""
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32)
    with np.errstate(all="ignore"):  # an inf or nan is the result, as from PyTorch's products, not a warning
        np.matmul(weight.detach().numpy(), x.detach().reshape(-1).numpy(), out=out.view(-1).numpy())
    return out if bias is None else out.add_(bias)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a [..., K], b [K, N] (no gradient)."""
    return _product(a, b.t(), None) if takes(a, b) else a @ b


class Linear(nn.Linear):
    """nn.Linear whose product is `linear` above (the same parameters, state-dict keys and init)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
