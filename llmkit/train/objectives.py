"""Batch providers and losses for the training objectives.

A batch provider maps global sample indices to tensors; everything random in it (the MLM
masks) is drawn from a generator seeded by (seed, sample index), so a batch is the same on
any rank, in any world size and after any resume.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from llmkit.errors import UserError
from llmkit.model.gpt import IGNORE_INDEX


def sample_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


def mlm_mask(
    tokens: torch.Tensor,
    indices: Sequence[int],
    *,
    seed: int,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the non-special tokens; of those 80% become
    <|mask|>, 10% a random token, 10% stay. Targets are the originals there, IGNORE elsewhere."""
    inputs = tokens.clone()
    targets = torch.full_like(tokens, IGNORE_INDEX)
    special = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype)
    for row, index in enumerate(indices):
        g = sample_generator(seed, int(index))
        T = tokens.shape[1]
        pick = torch.rand(T, generator=g)
        how = torch.rand(T, generator=g)
        random_tokens = torch.randint(0, vocab_size, (T,), generator=g, dtype=tokens.dtype)
        maskable = ~torch.isin(tokens[row], special) if len(special) else torch.ones(T, dtype=torch.bool)
        chosen = (pick < probability) & maskable
        if not bool(chosen.any()) and bool(maskable.any()):  # never a row without a target: its loss would be NaN
            chosen[torch.where(maskable, pick, torch.full_like(pick, 2.0)).argmin()] = True
        targets[row, chosen] = tokens[row, chosen]
        inputs[row, chosen & (how < 0.8)] = mask_id
        swap = chosen & (how >= 0.8) & (how < 0.9)
        inputs[row, swap] = random_tokens[swap]
    return inputs, targets


def document_ids(tokens: torch.Tensor, document_end: int) -> torch.Tensor:
    """[B, T] the document each token belongs to within its window: the count of `document_end`
    tokens before it (a document's end token is its own last token, the next one starts another)."""
    ends = (tokens == document_end).to(torch.int32)
    return ends.cumsum(dim=1, dtype=torch.int32) - ends


class WindowBatches:
    """(x, y) windows from a WindowSampler; for MLM, masked inputs and targets instead. With
    `document_end` (--document-mask) a third tensor, each token's document (`document_ids` of the
    window as read, before any MLM masking), which the model's attention stays within."""

    def __init__(self, sampler, *, objective: str = "clm", seed: int = 0, mask_id: int | None = None,
                 vocab_size: int = 0, special_ids: Sequence[int] = (), mlm_probability: float = 0.15,
                 document_end: int | None = None):
        self.sampler = sampler
        self.objective = objective
        self.seed = seed
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.special_ids = list(special_ids)
        self.mlm_probability = mlm_probability
        self.document_end = document_end

    def __call__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        indices = list(indices)
        x, y = self.sampler.get(indices)
        top = int(torch.maximum(x.max(), y.max()))
        if self.vocab_size and top >= self.vocab_size:  # cheap beside the forward pass
            raise UserError(f"the token shards hold id {top}, outside the vocabulary of {self.vocab_size}; "
                            "the tokens artifact is damaged, rebuild it with llmkit tokenize")
        documents = (document_ids(x, self.document_end),) if self.document_end is not None else ()
        if self.objective == "clm":
            return (x, y, *documents)
        return (*mlm_mask(
            x, indices, seed=self.seed, mask_id=self.mask_id, vocab_size=self.vocab_size,
            special_ids=self.special_ids, probability=self.mlm_probability,
        ), *documents)


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens (next token, or masked tokens); a third
    tensor, each token's document, keeps attention within documents (--document-mask)."""
    inputs, targets = batch[0], batch[1]
    if len(batch) > 2:
        return model(inputs, targets, return_logits=False, documents=batch[2])[1]
    return model(inputs, targets, return_logits=False)[1]


# What a training loss is the mean of, declared on the loss (`loss.mean_over = "tokens"`): the
# loop weighs each micro-batch's mean by its count of them, and per-sequence gradients
# (--batch-invariant) seed the backward with it. A loss that declares nothing is taken as a mean
# over examples and gets no per-sequence gradients.
MeanOver = Literal["tokens", "examples"]


def mean_over(loss_fn) -> MeanOver | None:
    return getattr(loss_fn, "mean_over", None)


lm_loss.mean_over = "tokens"  # batches (inputs, targets with IGNORE_INDEX), the loss a mean over target tokens


def rows_per_example(loss_fn) -> int:
    """The batch rows one example takes (`loss.rows_per_example`): 1, or 2 for a preference pair
    (its chosen and rejected replies, adjacent rows), whose gradients per sequence then sit at
    rows' positions, not examples'."""
    return getattr(loss_fn, "rows_per_example", 1)


def targets_in(loss_fn, batch: Sequence[torch.Tensor]) -> int:
    """What `loss_fn`'s mean is over in `batch`: its target tokens for a language-model loss
    (mean_over "tokens"), else its examples (one label, or one preference pair, each)."""
    if mean_over(loss_fn) == "tokens":
        return int((batch[1] != IGNORE_INDEX).sum())
    return int(batch[0].shape[0]) // rows_per_example(loss_fn)
