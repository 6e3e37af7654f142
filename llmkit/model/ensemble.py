"""Several checkpoints read as one model: their next-token distributions mixed.

    model = Ensemble([lm_a, lm_b], weights=[0.5, 0.5], mode="prob")
    log_probs, loss = model(idx, targets)                  # [B, T, V], normalised
    cache = model.new_cache(B, max_len, pad_lengths)       # one KV cache per member

The ensemble answers the interface every stage uses of a language model (`forward` with an
optional cache, `new_cache`, `config`, `classify` for classifiers), so the generation engine,
rolling-window perplexity and multiple-choice scoring run on it unchanged. What it returns in
place of logits are log-probabilities: softmax and cross-entropy of normalised log-probabilities
are the probabilities themselves, so temperature, top-k, top-p and scoring need no special case.
The repetition penalty does (`next_token_log_probs`): it is a rule on a model's own logits.

Two ways to mix (`mode`):
  prob     p(x) = sum_k w_k p_k(x)                        the mixture (default; never worse in
                                                          NLL than the members' weighted mean NLL,
                                                          by Jensen's inequality)
  logprob  p(x) ∝ exp(sum_k w_k log p_k(x))              a product of experts (log-linear pool)
A classifier ensemble averages class probabilities the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("prob", "logprob")


class EnsembleCache:
    """One cache per member, advanced together; `pos` and `max_len` are the members' (all equal)."""

    def __init__(self, caches: list):
        self.caches = caches

    @property
    def pos(self) -> int:
        return self.caches[0].pos

    @pos.setter
    def pos(self, value: int) -> None:
        for cache in self.caches:
            cache.pos = value

    @property
    def max_len(self) -> int:
        return self.caches[0].max_len

    def reset(self) -> None:
        for cache in self.caches:
            cache.reset()

    def reorder(self, rows) -> None:
        for cache in self.caches:
            cache.reorder(rows)

    def adopt(self, row: int, source: EnsembleCache, source_row: int, n: int, end: int) -> None:
        for mine, theirs in zip(self.caches, source.caches):
            mine.adopt(row, theirs, source_row, n, end)


def _context_config(members: Sequence[nn.Module]):
    """The first member's config, with the context every member can take: the shortest one of
    the Transformers (an LSTM has none), and `arch` lstm only when no member has a limit."""
    configs = [m.config for m in members]
    limited = [c for c in configs if getattr(c, "arch", "gpt") != "lstm"]
    if not limited:
        return configs[0]
    first = limited[0]
    return dataclasses.replace(first, context_length=min(int(c.context_length) for c in limited))


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], mode: str = "prob"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(members) != len(weights) or not members:
            raise ValueError("one weight per member, at least one member")
        vocab = {int(m.config.vocab_size) for m in members}
        if len(vocab) != 1:
            raise ValueError(f"members have different vocabularies {sorted(vocab)}")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.mode = mode
        self.config = _context_config(members)

    def _mix(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalised log-probabilities from the members' logits (last dimension = classes)."""
        mixed = None
        for weight, logits in zip(self.weights, outputs):
            if weight == 0.0:
                continue
            logp = F.log_softmax(logits.float(), dim=-1)
            term = logp + math.log(weight) if self.mode == "prob" else logp * weight
            # A running reduction keeps one [B, T, V] buffer, not one per member.
            mixed = term if mixed is None else (torch.logaddexp(mixed, term) if self.mode == "prob" else mixed + term)
        return mixed if self.mode == "prob" else F.log_softmax(mixed, dim=-1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: EnsembleCache | None = None,
                return_logits: bool = True, last_only: bool = False):
        # (return_logits: GPT's contract; the log-probabilities are always returned)
        if last_only and targets is not None:
            raise ValueError("last_only gives the last position's log-probabilities and takes no targets")
        caches = cache.caches if cache is not None else [None] * len(self.members)
        # A generator: each member's logits are mixed in as they come, so one [B, T, V] buffer
        # is alive besides the running mixture, not K of them.
        outputs = ((m(idx, cache=c, last_only=last_only) if c is not None else m(idx, last_only=last_only))[0]
                   for m, c in zip(self.members, caches))
        log_probs = self._mix(outputs)
        if last_only:
            return log_probs, None
        loss = None
        if targets is not None:
            loss = F.nll_loss(log_probs.flatten(0, -2), targets.flatten(), ignore_index=-100)
        return log_probs, loss

    def next_token_log_probs(self, idx: torch.Tensor, *, cache: EnsembleCache,
                             adjust: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The mixture's log-probabilities [B, V] of the token after each row of `idx`, each member's
        logits there passed through `adjust` before they are mixed. Generation's repetition penalty
        (CTRL / HF: a seen token's positive logit divided, its negative one multiplied) is a rule on
        a model's own logits, not invariant to shifting them, so no rule on the mixed distribution
        is that rule for one model: it is applied to every member as to that model alone."""
        outputs = (adjust(m(idx, cache=c, last_only=True)[0][:, -1].float()) for m, c in zip(self.members, cache.caches))
        return self._mix(outputs)

    def new_cache(self, batch_size: int, max_len: int | None = None, pad_lengths=None) -> EnsembleCache:
        max_len = max_len if max_len is not None else int(self.config.context_length)
        return EnsembleCache([m.new_cache(batch_size, max_len, pad_lengths=pad_lengths) for m in self.members])


class ClassifierEnsemble(Ensemble):
    """An ensemble of classifiers: `classify` averages their class probabilities. `input_limits`:
    how many tokens of a text each member reads, as it was fine-tuned (`classifier_input_limit`;
    None: all of them); rows are right-padded, so a member's cut is a slice."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], mode: str = "prob",
                 input_limits: Sequence[int] | None = None):
        super().__init__(members, weights, mode)
        self.input_limits = list(input_limits) if input_limits is not None else None

    def classify(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mixed class log-probabilities [B, labels]."""
        limits = self.input_limits or [idx.shape[1]] * len(self.members)
        return self._mix(m.classify(idx[:, :limit], attention_mask=None if attention_mask is None else attention_mask[:, :limit])
                         for m, limit in zip(self.members, limits))


def classifier_input_limit(config, task) -> int:
    """How many tokens of a text a classifier reads: its context, or fewer where fine-tuning cut
    its texts (`--seq-len`), so that it reads a text as it learned to."""
    limit = int(config.context_length)
    return min(limit, task.max_tokens) if task is not None and task.max_tokens else limit


def ensemble_of(members: Sequence[nn.Module], weights: Sequence[float], mode: str = "prob",
                input_limits: Sequence[int] | None = None) -> Ensemble:
    """A classifier ensemble when every member classifies (each reading `input_limits` tokens), else
    a language-model ensemble."""
    if all(callable(getattr(m, "classify", None)) for m in members):
        return ClassifierEnsemble(members, weights, mode, input_limits)
    return Ensemble(members, weights, mode)


def load_ensemble(paths: Sequence, *, device, purpose: str | None, weights: Sequence[float] | None = None, mode: str = "prob"):
    """Load checkpoints as one model: a LoadedCheckpoint whose `model` is their ensemble (the
    checkpoint itself for one path), whose `members` are their artifacts and `member_weights` their
    normalised weights, in the order they are mixed: by fingerprint, then weight, whatever the order
    typed (a float32 running mixture of three or more rounds by its order; an eval records its
    inputs so, one artifact however they were typed). Members must share a tokenizer and a task (a
    one-line error otherwise)."""
    from llmkit import artifacts
    from llmkit.errors import UserError
    from llmkit.model.averaging import check_same_task, normalised, note_copies
    from llmkit.model.io import load_checkpoint

    if not paths:
        raise UserError("no checkpoint given")
    arts = [artifacts.load(path, kind="checkpoint") for path in paths]
    if len(arts) > 1:
        check_same_task(arts, "ensembled")
    normalised_weights = normalised(weights, len(arts))
    loaded = [load_checkpoint(path, device=device, purpose=purpose) for path in paths]
    if len(loaded) == 1:
        loaded[0].members, loaded[0].member_weights = [loaded[0].artifact], [1.0]
        return loaded[0]
    order = sorted(range(len(loaded)), key=lambda i: (loaded[i].artifact.fingerprint, normalised_weights[i]))
    loaded, normalised_weights = [loaded[i] for i in order], [normalised_weights[i] for i in order]
    sizes = {int(item.config.vocab_size) for item in loaded}
    if len(sizes) > 1:  # one tokenizer, but an import with its embeddings padded to a round size
        shown = ", ".join(f"{item.artifact.path} {int(item.config.vocab_size)}" for item in loaded)
        raise UserError(f"the checkpoints share a tokenizer but give scores over different numbers of tokens ({shown}); "
                        "an ensemble mixes distributions over one vocabulary: ensemble checkpoints of one vocabulary size")
    _check_same_document_start(loaded)
    note_copies(arts, paths, normalised(weights, len(arts)), "ensemble")  # (in the order typed, once accepted)
    # the first member that takes part speaks for the ensemble (a weight-0 member is left out)
    first = next(item for item, w in zip(loaded, normalised_weights) if w > 0)
    first.members, first.member_weights = [item.artifact for item in loaded], normalised_weights
    if any(item.sampling != first.sampling for item, w in zip(loaded, normalised_weights) if w > 0):
        from llmkit.console import note

        note("the members' generation_config.json recommend other sampling; the ensemble samples as the options say")
        first.sampling = None  # (members recommending other sampling: none is the ensemble's)
    # a member of weight 0 contributes nothing: left out, so it neither runs nor shortens the context
    kept = [(item, w) for item, w in zip(loaded, normalised_weights) if w > 0]
    if len(kept) > 1:  # one member alone is that model, its logits as they are
        contexts = {int(item.config.context_length) for item, _ in kept if getattr(item.config, "arch", "gpt") != "lstm"}
        first.model = ensemble_of([item.model for item, _ in kept], [w for _, w in kept], mode,
                                  [classifier_input_limit(item.config, item.task) for item, _ in kept]).eval()
        first.config = first.model.config
        if len(contexts) > 1 and not isinstance(first.model, ClassifierEnsemble):
            from llmkit.console import note

            note(f"the members' contexts differ ({', '.join(map(str, sorted(contexts)))} tokens); the ensemble reads "
                 f"{min(contexts)} at a time, every member with it (a member alone may score differently)")
    return first


def scoring_members(loaded) -> list:
    """(path, module) of each checkpoint `loaded` scores with: an ensemble's members of weight above
    0 (in its order, load_ensemble's), each by its path where several were given, else (None, the model)."""
    arts = getattr(loaded, "members", None) or [loaded.artifact]
    weights = getattr(loaded, "member_weights", None) or [1.0] * len(arts)
    kept = [art for art, weight in zip(arts, weights) if weight > 0]
    if len(kept) == 1:
        return [(kept[0].path if len(arts) > 1 else None, loaded.model)]
    return [(art.path, module) for art, module in zip(kept, loaded.model.members)]


def _check_same_document_start(loaded) -> None:
    """Every prompt and document is scored after one start token: members pretrained after
    different ones (`tokenize --add-bos` or not) cannot share it, and whichever member came first
    decided it (results changed with the members' order)."""
    from llmkit.inference.prompts import document_start_id, refuse_different_document_starts

    starts = {}
    for item in loaded:
        token = item.tokenizer.decode([document_start_id(item.tokenizer, item.artifact, item.task)])
        starts.setdefault(token, []).append(str(item.artifact.path))
    refuse_different_document_starts(starts, "ensemble")
