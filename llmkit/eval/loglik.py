"""Log-likelihood of token continuations under a causal LM, batched.

Shared by perplexity (rolling windows) and multiple-choice scoring. A request is a token
sequence `seq` and a count `n`: the log-probabilities of the last `n` tokens of `seq`, each
conditioned on everything before it in `seq`. Requests in a batch are right-padded, which a
causal model cannot see (a position attends only to earlier ones).

A request's numbers do not depend on its batch (so `eval --batch-size` changes no bit): on a
CPU the kernels' summation order follows the shapes they are given, so every request runs at
shapes that depend only on itself.
- Its width: its length rounded up to a multiple of `WIDTH_STEP` (at most the context), and a
  batch holds only requests of one width. Scored at the width of its longest batch-mate, as
  before, a request's log-likelihoods changed in the last bits with that width (measured: at 27
  of 53 pairs of a request of 5 to 200 tokens and a wider width; docs/eval.md, "Batching").
- Its rows: a Transformer's products have a row per position, at least WIDTH_STEP per request,
  where a row's bits do not depend on the rows beside it (measured to the bit at 1 to 8
  requests a batch). A recurrent model's (an LSTM's) products have one row per sequence, and a
  single row took another kernel: it runs `MIN_ROWS` sequences a forward (more with a larger
  batch size), filled with empty rows where fewer requests are left.
- The head and loss (`GPT.token_nll`) run one request at a time, so their chunks of positions
  start at the request's first position instead of wherever the batch's flattened positions put them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from llmkit.inference.engine import in_eval_mode
from llmkit.model.sequence_grads import MIN_ROWS

WIDTH_STEP = 16  # a request's padded width is its length rounded up to this (MIN_ROWS: products of >= 16 rows)


@dataclass
class Request:
    seq: list[int]  # inputs = seq[:-1]; targets = seq[1:]
    n: int  # score the last n targets


def padded_width(length: int, limit: int) -> int:
    """The width a request of `length` input positions runs at: a function of the request alone."""
    return max(length, min(-(-length // WIDTH_STEP) * WIDTH_STEP, limit))


def batches_by_width(widths: list[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of requests, widest first, grouped so a batch has one width and stays under max_tokens."""
    order = sorted(range(len(widths)), key=lambda i: -widths[i])
    batch: list[int] = []
    for i in order:
        if batch and (widths[i] != widths[batch[0]] or len(batch) >= batch_size or (len(batch) + 1) * widths[i] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def recurrent(model) -> bool:
    """Whether the model's products have a row per sequence (an LSTM, or an ensemble with one)."""
    return any(isinstance(module, torch.nn.RNNBase) for module in model.modules())


def forward_batches(model, widths: list[int], batch_size: int, max_tokens: int) -> Iterator[tuple[list[int], int]]:
    """(indices, rows): batches_by_width's, each run as a forward of `rows` sequences, the batch's and
    filler rows after them: an LSTM's products have a row per sequence, and a single row took another
    kernel, so it runs MIN_ROWS sequences a forward at least."""
    min_rows = MIN_ROWS if recurrent(model) else 1
    for batch in batches_by_width(widths, max(batch_size, min_rows), max_tokens):
        yield batch, max(len(batch), min_rows)


@in_eval_mode
@torch.inference_mode()
def token_logprobs(
    model, requests: list[Request], *, pad_id: int, batch_size: int = 8, max_logits: int = 1 << 26, progress=None
) -> list[torch.Tensor]:
    """Per request, a float64 tensor [n] of log p(target | preceding tokens), in input order.

    A batch holds at most `batch_size` requests and about `max_logits` logits (rows x length x
    vocabulary; 2^26 floats = 256 MB), so a large vocabulary shrinks the batch instead of
    running out of memory; a single request always runs. The values are the same whatever
    `batch_size` and the other requests (module docstring).
    """
    results: list[torch.Tensor | None] = [None] * len(requests)
    device = next(model.parameters()).device
    max_tokens = max(1, max_logits // int(model.config.vocab_size))
    limit = int(model.config.context_length)
    widths = [padded_width(len(r.seq) - 1, limit) for r in requests]
    for batch, rows in forward_batches(model, widths, batch_size, max_tokens):
        width = widths[batch[0]]
        idx = torch.full((rows, width), pad_id, dtype=torch.long)
        tgt = torch.full((rows, width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq = requests[i].seq
            idx[row, : len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
            tgt[row, : len(seq) - 1] = torch.tensor(seq[1:], dtype=torch.long)
        # one copy to the host per batch (a copy per row was a device sync per row on a GPU)
        nll = _token_nll(model, idx.to(device), tgt.to(device)).double().cpu()
        for row, i in enumerate(batch):
            length, n = len(requests[i].seq) - 1, requests[i].n
            results[i] = -nll[row, length - n : length]  # (a new tensor: not a view that keeps the batch alive)
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


@in_eval_mode
@torch.inference_mode()
def greedy_matches(model, requests: list[Request], *, pad_id: int, batch_size: int = 8, max_logits: int = 1 << 26) -> list[bool]:
    """Per request, whether each of its `n` scored tokens is the model's likeliest next token there
    (lm-eval's is_greedy: LAMBADA's accuracy), batched as token_logprobs batches."""
    results: list[bool] = [False] * len(requests)
    device = next(model.parameters()).device
    max_tokens = max(1, max_logits // int(model.config.vocab_size))
    limit = int(model.config.context_length)
    widths = [padded_width(len(r.seq) - 1, limit) for r in requests]
    for batch, rows in forward_batches(model, widths, batch_size, max_tokens):
        idx = torch.full((rows, widths[batch[0]]), pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            seq = requests[i].seq
            idx[row, : len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
        likeliest = model(idx.to(device))[0].argmax(dim=-1).cpu()
        for row, i in enumerate(batch):
            seq, n = requests[i].seq, requests[i].n
            length = len(seq) - 1
            results[i] = likeliest[row, length - n : length].tolist() == seq[len(seq) - n :]
    return results


def _token_nll(model, idx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """[B, T] cross-entropy of each position (0 where the target is -100): the model's own
    scoring where it has one (a GPT's skips the [B, T, V] logits on a CPU, one row at a time)."""
    from llmkit.model.fused_loss import logits_nll

    if hasattr(model, "token_nll"):
        return model.token_nll(idx, tgt)
    return logits_nll(model(idx)[0], tgt)

