"""Turning next-token logits into tokens: repetition penalty, temperature, top-k, top-p.

The order and the meaning of each setting follow Hugging Face `generate()` (repetition penalty,
then temperature, then top-k, then top-p), so the same flags mean the same thing in both tools.
Every row draws from its own seeded CPU `torch.Generator` (the draw is made on the CPU whatever
the model's device): a row's text depends only on its seed, not on which other prompts share
its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches top_p (nucleus)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        # a temperature that rounds to 0 in float32 (2^-150 and below) is 0 to the fp32 scores (0/0 made NaN): its
        # limit, greedy
        return self.temperature <= 2.0**-150


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A well-mixed 63-bit seed for one (prompt, sample) row, independent of batching."""
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as in HF): positive logits of seen tokens are divided, negative multiplied.
    Kept within the float range: a penalty near 0 or huge would make inf, and sampling's shift by
    the largest score then inf - inf = NaN."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    limit = torch.finfo(logits.dtype).max
    return torch.where(seen, penalised.clamp(-limit, limit), logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))
    threshold = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


# How many of the likeliest tokens top-p looks at first, then next, before it sorts the whole vocabulary:
# a trained model's nucleus is a few tokens, and a sort of every token cost 5 ms a token at 50k tokens
# (GPT-2's), 22 ms at 128k (Llama 3's) on one core: more than a small model's whole decode step.
TOP_P_CANDIDATES = (64, 512)


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep each row's smallest set of likeliest tokens whose probability reaches p: a token is
    dropped when the tokens ranked above it already reach p (the top token always stays), and a
    token as likely as the least likely one kept is kept too. (Ties are common in bf16 logits, and
    a sort and a top-k order tied tokens each its own way: keeping them all makes a row's nucleus
    the same whichever path its batch took, so a row's text does not depend on its batch.)"""
    probs = logits.softmax(dim=-1)
    top, looked = None, 0
    for k in TOP_P_CANDIDATES:
        if k >= probs.size(-1):
            break
        # the k likeliest reach p only where those looked at and k - 1 - looked more, none likelier than the
        # least of them, can: a flat row's nucleus of thousands skips straight to the sort
        if top is not None and bool((top.sum(dim=-1) + (k - 1 - looked) * top[..., -1] < p).any()):
            continue
        top, _ = probs.topk(k, dim=-1)
        looked = k
        drop = (top.cumsum(dim=-1) - top) >= p
        if bool(drop[..., -1].all()):  # every row's nucleus ends within its k likeliest: the rest are dropped too
            return _keep_as_likely_as(logits, probs, top, drop)
    ranked, _ = probs.sort(dim=-1, descending=True)
    return _keep_as_likely_as(logits, probs, ranked, (ranked.cumsum(dim=-1) - ranked) >= p)


def _keep_as_likely_as(logits: torch.Tensor, probs: torch.Tensor, ranked: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """`logits` with every token less likely than each row's least likely kept one dropped; `ranked`
    is the row's likeliest probabilities in order and `drop` which of them top-p drops. (The ranked
    values, and so their sums and the count kept, are the same in the top-k and in the sort.)"""
    least = ranked.gather(-1, ((~drop).sum(dim=-1, keepdim=True) - 1))
    return logits.masked_fill(probs < least, float("-inf"))


def next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    generators: list[torch.Generator] | None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits [B, V] -> LongTensor [B]."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    # Shifted first so that a tiny temperature cannot overflow the scores to inf (and softmax to NaN).
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    if params.top_k is not None:
        logits = filter_top_k(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1.0:
        logits = filter_top_p(logits, params.top_p)
    return draw(logits.softmax(dim=-1), generators)


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.LongTensor:
    """One token per row of `probs` [B, V], row b drawn with `generators[b]`, on the device of `probs`.

    The draw is made on the CPU, where the rows' generators are: a CUDA or MPS multinomial refuses
    a CPU generator, and a generator of the model's device would draw other numbers from the same
    seed on each kind of device. One copy of [B, V] probabilities a step, next to the model's work.
    """
    on_cpu = probs.to("cpu", torch.float32)
    picks = [torch.multinomial(on_cpu[b], 1, generator=generators[b]) for b in range(on_cpu.size(0))]
    return torch.cat(picks).to(probs.device)
