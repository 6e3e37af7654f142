"""The output head and the cross-entropy in one pass over chunks of tokens, never the whole logits.

    loss = linear_cross_entropy(hidden [N, C], weight [V, C], targets [N])   # = F.cross_entropy(hidden @ weight.T, targets)

The usual head writes a [N, V] logits tensor, the loss a [N, V] log-softmax, and backward a
[N, V] gradient: for a batch of 16 x 256 tokens and 4096 words, three 67 MB tensors a step. On a
CPU those exceed glibc's largest mmap threshold, so every step maps them fresh and page-faults
them in (~65,000 faults), and each pass over them is memory-bound. Here each chunk of tokens
computes its logits, its loss and, because the loss is the last operation of the step, its
gradients right away (softmax minus one-hot, times the weight for the hidden states, times the
hidden states for the weight); backward only scales them by the incoming gradient. The same
FLOPs, no [N, V] tensor: the head plus loss measured 0.30 CPU-s against 0.40 for the usual pair
(4,096 tokens, 256 -> 4096, 2 threads). The values agree with F.cross_entropy to float rounding.

Only tokens with a target reach the head: in SFT the prompt's tokens (IGNORE_INDEX) have no loss
and no gradient, so their logits are never made, and a frozen head (LoRA) gets no gradient
computed. In benchmarks/finetune.py's DialogSum batches 1,119 of 16,352 positions have a target.

Used by GPT.forward(..., return_logits=False) on a CPU (llmkit/train/objectives.py), in fp32 or
under bf16 autocast (`--precision bf16`: the products in bf16, the softmax in fp32); not under
tensor parallelism (vocabulary-sharded DTensor heads) or torch.compile (which fuses the usual
pair itself). `token_nll` is the per-token form, without gradients, that eval scores with (through
`GPT.token_nll`, llmkit/eval/loglik.py).
"""

from __future__ import annotations


import torch
from torch.overrides import handle_torch_function, has_torch_function_variadic

from llmkit.model import cpu_gemm
from llmkit.model.sequence_grads import MIN_ROWS
from llmkit.runtime import is_dtensor

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MB in fp32, so a chunk stays in cache-sized, reused memory


def chunk_tokens(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab_size)


def _exp_in_place(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-sum-exp by hand, in place: logits [n, V] become exp(logits - row max) without another
    [n, V] buffer. Returns the row maxima [n], those exps and their row sums [n]."""
    top = logits.amax(dim=-1, keepdim=True)
    exps = logits.sub_(top).exp_()
    return top[:, 0], exps, exps.sum(dim=-1)


def _with_zero_rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, C] with zero rows appended up to MIN_ROWS."""
    return torch.cat([x, x.new_zeros(MIN_ROWS - x.shape[0], x.shape[1])])


def _chunk(h: torch.Tensor, t: torch.Tensor, r: torch.Tensor, head: torch.Tensor, low: torch.dtype | None,
           grad_rows: torch.Tensor | None, grad_weight: torch.Tensor | None, fresh: bool = False) -> torch.Tensor:
    """One chunk of rows: returns its summed loss; writes the rows' hidden-state gradients into
    `grad_rows` and adds the head's gradient to `grad_weight` (writes it, if `fresh`; either may be None).

    Fewer than MIN_ROWS rows (an SFT response of a few tokens) are padded with zero rows for the
    products: MKL picks kernels by thread count below that, so the same run gave other bits on
    1 and 2 threads (and so under --nproc 2); oneDNN (llmkit/model/cpu_gemm.py) needs 2 rows.
    Zero rows add exact zeros to the head's gradient."""
    rows = len(t)
    short = rows < MIN_ROWS
    if low is not None:
        h = h.to(low)
    if short:
        h = _with_zero_rows(h)
    onednn = low is None and cpu_gemm.takes(h, head.t())
    logits = cpu_gemm.matmul(h, head.t()) if onednn else h @ head.t()
    if short:
        logits = logits[:rows]
    if low is not None:
        logits = logits.float()
    picked = logits[r, t]
    top, exps, sums = _exp_in_place(logits)
    loss = (top + sums.log() - picked).sum()
    if grad_rows is None and grad_weight is None:
        return loss
    probs = exps.mul_((torch.ones_like(sums) / sums)[:, None])  # softmax (as a product: the bits of earlier releases)
    probs[r, t] -= 1
    if low is not None:
        probs = probs.to(low)
    if short:
        probs = _with_zero_rows(probs)
        if grad_rows is not None:
            grad_rows.copy_(cpu_gemm.matmul(probs, head)[:rows])  # (oneDNN's where it takes products: bits by row)
            grad_rows = None
    if onednn:  # (oneDNN writes no `out=` and adds into nothing: the results are copied/added)
        if grad_rows is not None:
            grad_rows.copy_(cpu_gemm.matmul(probs, head))
        if grad_weight is not None and grad_weight.t().is_contiguous():
            # a buffer laid out [C, V] (run_accumulator's transposed): the product made transposed,
            # so that oneDNN copies h^T [C, rows] into rows, not probs^T [V, rows] (the same bits, tested)
            target = grad_weight.t()
            product = cpu_gemm.matmul(h.t(), probs)
            target.copy_(product) if fresh else target.add_(product)
        elif grad_weight is not None:
            product = cpu_gemm.matmul(probs.t(), h)
            grad_weight.copy_(product) if fresh else grad_weight.add_(product)
        return loss
    if grad_rows is not None and low is None:
        torch.mm(probs, head, out=grad_rows)
    elif grad_rows is not None:
        grad_rows.copy_(probs @ head)
    if grad_weight is not None and low is None:
        torch.mm(probs.t(), h, out=grad_weight) if fresh else grad_weight.addmm_(probs.t(), h)
    elif grad_weight is not None:
        grad_weight.copy_(probs.t() @ h) if fresh else grad_weight.add_(probs.t() @ h)
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
        # `low`: autocast's dtype where the caller runs under autocast. The two matrix products per
        # chunk then run in it (as autocast would run the head), the softmax in fp32, and the
        # gradients accumulate in the parameters' dtype; autocast itself is off in here so the
        # dtypes are the ones written.
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy._forward(ctx, hidden, weight, targets, low)

    @staticmethod
    def _forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.rows = hidden.shape[0]
        valid = targets != IGNORE_INDEX
        count = valid.sum()
        kept = None
        if int(count) < hidden.shape[0]:
            # Only tokens with a target reach the head (in SFT the prompt's do not): the others'
            # loss and gradients are zero, so their logits are never made.
            kept = valid.nonzero().squeeze(1)
            hidden, targets = hidden.index_select(0, kept), targets.index_select(0, kept)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        chunk = chunk_tokens(weight.shape[0])
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        head = weight if low is None else weight.to(low)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            h = hidden[start:stop]
            grad_rows = grad_hidden[start:stop] if need_hidden else None
            total += _chunk(h, targets[start:stop], rows[: stop - start], head, low, grad_rows, grad_weight)
        if need_hidden or need_weight:
            ctx.save_for_backward(grad_hidden, grad_weight, count, kept)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, count, kept = ctx.saved_tensors
        scale = grad_output / count
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale
            if kept is not None:
                grad_hidden = grad_hidden.new_zeros((ctx.rows, grad_hidden.shape[1])).index_copy_(0, kept, grad_hidden)
        return grad_hidden, None if grad_weight is None else grad_weight * scale, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX: no target); under
    autocast the products run in its dtype, as the head's would. Overridable like a torch function
    (llmkit/model/sequence_grads.py gives it per-sequence weight gradients)."""
    if has_torch_function_variadic(hidden, weight, targets):
        return handle_torch_function(linear_cross_entropy, (hidden, weight, targets), hidden, weight, targets)
    if not torch.is_grad_enabled():  # validation: needs_input_grad ignores no_grad, the gradients would be made for nothing
        hidden, weight = hidden.detach(), weight.detach()
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), _autocast_dtype(hidden))


@torch.no_grad()
def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's cross-entropy of `hidden @ weight.T` [N, V] against `targets` [N] (0 where
    IGNORE_INDEX), at least float32, a chunk of rows at a time: scoring (llmkit/eval/loglik.py) without the
    [N, V] logits, their float copy and their log-softmax (for a 128k vocabulary and 2,048 tokens,
    three 1 GB tensors). Under autocast the product runs in its dtype, the softmax in fp32."""
    low = _autocast_dtype(hidden)
    head = weight if low is None else weight.to(low)
    out = torch.empty(hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    chunk = chunk_tokens(weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = cpu_gemm.matmul(h, head.t()) if low is None else h.to(low) @ head.t()
            if low is not None:
                logits = logits.float()
            valid = t != IGNORE_INDEX
            picked = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
            top, _, sums = _exp_in_place(logits)
            out[start : start + chunk] = torch.where(valid, top + sums.log() - picked, 0.0)
    return out


def logits_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """token_nll from whole logits [B, T, V]: [B, T], 0 where IGNORE_INDEX (a model without the chunked path)."""
    import torch.nn.functional as F

    # over [rows x positions, vocabulary]: on the transposed [B, V, T] view the softmax runs strided, 6x slower
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none").view(targets.shape)


def _autocast_dtype(hidden: torch.Tensor) -> torch.dtype | None:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class _PerSequenceLinearCrossEntropy(torch.autograd.Function):
    """linear_cross_entropy over [B, T, C] whose chunks never span two sequences, so every number
    is the same whatever the batch; the head's gradient accumulates chunk by chunk, in position
    order, into one [V, C] matrix per run of sequences of the micro-batch's SequenceTree. The
    tree's gradients are sums of each token's own gradient: the backward must be seeded with the
    target count (then the scale is exactly 1)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, low, where):
        with torch.autocast(hidden.device.type, enabled=False):
            need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            valid = targets != IGNORE_INDEX
            count = valid.sum()
            grad_hidden = None
            if need_hidden:  # rows without a target get no gradient
                grad_hidden = torch.empty_like(hidden) if int(count) == valid.numel() else torch.zeros_like(hidden)
            total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
            head = weight if low is None else weight.to(low)
            chunk = chunk_tokens(weight.shape[0])
            # the head's gradient accumulates [C, V] where oneDNN makes its products (see _chunk)
            transposed = low is None and cpu_gemm.takes(hidden[0, :MIN_ROWS], head.t())
            for b in range(hidden.shape[0]):
                every = bool(valid[b].all())
                kept = None if every else valid[b].nonzero().squeeze(1)
                h, t = (hidden[b], targets[b]) if every else (hidden[b].index_select(0, kept), targets[b].index_select(0, kept))
                rows = torch.arange(min(chunk, len(t)), device=hidden.device)
                grad_rows = None if not need_hidden else grad_hidden[b] if every else torch.empty_like(h)
                grad_weight, fresh = (where.tree.run_accumulator(weight, "head", where.first + b, transposed=transposed)
                                      if need_weight else (None, False))
                if fresh and not len(t):  # a sequence without targets adds nothing, and a new run starts from zero
                    grad_weight.zero_()
                sequence_total = torch.zeros_like(total)
                for start in range(0, len(t), chunk):
                    stop = min(start + chunk, len(t))
                    part = grad_rows[start:stop] if need_hidden else None
                    sequence_total += _chunk(h[start:stop], t[start:stop], rows[: stop - start], head, low, part, grad_weight,
                                             fresh=fresh and start == 0)
                total += sequence_total
                where.sequence_losses[where.first + b] = float(sequence_total)
                if need_hidden and not every:
                    grad_hidden[b].index_copy_(0, kept, grad_rows)
                if need_weight:
                    where.tree.end_sequence(weight, "head", where.first + b)
        ctx.pushed = need_weight
        ctx.save_for_backward(grad_hidden, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, count = ctx.saved_tensors
        scale = grad_output / count
        if ctx.pushed and not bool(scale == 1):
            raise RuntimeError("per-sequence gradients need the loss's backward seeded with its target count")
        if grad_hidden is not None and not bool(scale == 1):
            grad_hidden = grad_hidden * scale
        return grad_hidden, None, None, None, None


def per_sequence_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, where) -> torch.Tensor:
    """linear_cross_entropy for hidden [B, T, C], targets [B, T], the head's gradient per sequence into `where.tree`."""
    if not torch.is_grad_enabled():  # no gradients to make (nor to push into the tree)
        hidden, weight = hidden.detach(), weight.detach()
    return _PerSequenceLinearCrossEntropy.apply(hidden, weight, targets, _autocast_dtype(hidden), where)


def applies(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where the fused path is used: a plain CPU tensor (fp32 or under bf16 autocast), eager."""
    return hidden.device.type == "cpu" and not is_dtensor(weight) and not torch.compiler.is_compiling()
