"""Log-likelihood of token continuations under a causal LM, batched.

Shared by perplexity (rolling windows) and multiple-choice scoring. A request is a token
sequence `seq` and a count `n`: the log-probabilities of the last `n` tokens of `seq`, each
conditioned on everything before it in `seq`. Requests in a batch are right-padded, which a
causal model cannot see (a position attends only to earlier ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass
class Request:
    seq: list[int]  # inputs = seq[:-1]; targets = seq[1:]
    n: int  # score the last n targets


def _batches(requests: list[Request], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of requests, longest first, grouped so a batch stays under max_tokens."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].seq))
    batch: list[int] = []
    for i in order:
        width = len(requests[batch[0]].seq) if batch else len(requests[i].seq)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.inference_mode()
def token_logprobs(
    model, requests: list[Request], *, pad_id: int, batch_size: int = 8, max_logits: int = 1 << 26, progress=None
) -> list[torch.Tensor]:
    """Per request, a float64 tensor [n] of log p(target | preceding tokens), in input order.

    A batch holds at most `batch_size` requests and about `max_logits` logits (rows x length x
    vocabulary; 2^26 floats = 256 MB), so a large vocabulary shrinks the batch instead of
    running out of memory; a single request always runs.
    """
    results: list[torch.Tensor | None] = [None] * len(requests)
    device = next(model.parameters()).device
    max_tokens = max(1, max_logits // int(model.config.vocab_size))
    for batch in _batches(requests, batch_size, max_tokens):
        width = max(len(requests[i].seq) for i in batch) - 1
        idx = torch.full((len(batch), width), pad_id, dtype=torch.long)
        tgt = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq = requests[i].seq
            idx[row, : len(seq) - 1] = torch.tensor(seq[:-1], dtype=torch.long)
            tgt[row, : len(seq) - 1] = torch.tensor(seq[1:], dtype=torch.long)
        nll = _token_nll(model, idx.to(device), tgt.to(device))
        for row, i in enumerate(batch):
            length, n = len(requests[i].seq) - 1, requests[i].n
            results[i] = -nll[row, length - n : length].double().cpu()
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]


def _token_nll(model, idx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """[B, T] cross-entropy of each position (0 where the target is -100): the model's own
    scoring where it has one (a GPT's skips the [B, T, V] logits on a CPU)."""
    from llmkit.model.fused_loss import logits_nll

    if hasattr(model, "token_nll"):
        return model.token_nll(idx, tgt)
    return logits_nll(model(idx)[0], tgt)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
