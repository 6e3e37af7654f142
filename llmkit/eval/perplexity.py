"""Perplexity and bits per byte, with lm-evaluation-harness's rolling windows.

Each document is scored token by token exactly once. Windows follow lm-evaluation-harness's
`loglikelihood_rolling` (`get_rolling_token_windows` + `make_disjoint_window`): the first window
predicts the first `L` tokens (L = the model's context length) after a prefix token (BOS here,
lm-eval uses its EOT); every later window predicts the next disjoint chunk of up to
`L - context_len + 1` tokens, conditioned on the `L` tokens before its end. With lm-eval's
default `context_len=1` the chunks are L tokens long; a larger `context_len` gives every chunk at
least that many tokens of context (more compute, lower perplexity).

Counting rules (docs/eval.md):
  tokens   the scored tokens; special tokens (UTF-8 length 0 in token_bytes.npy) are context
           only, never scored. A tokens artifact's documents (`<|bos|> text <|eos|>`) are scored
           after their BOS, without their closing EOS, so they give the same numbers as the raw text
  words    whitespace-separated words of the original text (`len(text.split())`)
  bytes    UTF-8 bytes of the original text; for a tokens artifact, the summed byte lengths of
           the scored tokens (equal for llmkit's lossless byte-level tokenizers)
  perplexity = exp(NLL / tokens), word_perplexity = exp(NLL / words),
  byte_perplexity = exp(NLL / bytes), bpb = NLL / (bytes * ln 2) = log2(byte_perplexity)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from llmkit.eval.loglik import Request, token_logprobs


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int = 1) -> Iterator[Request]:
    """lm-eval's rolling windows as (seq, n) requests: score the last n tokens of seq."""
    if not 1 <= context_len <= max_seq_len:
        raise ValueError(f"context_len must be in [1, {max_seq_len}], got {context_len}")
    tokens = list(tokens)
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    yield Request([prefix_token] + tokens[:first], first)
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        yield Request(tokens[end - max_seq_len - 1 : end], n)
        predicted += n


@dataclass
class Document:
    tokens: list[int]
    words: int | None = None  # None: not known (a tokens artifact without decoding)
    bytes: int | None = None  # None: sum of token_bytes over the scored tokens
    index: int | None = None  # its record's place in the input (empty records are not scored); None: its place here
    # Which tokens are scored (a fine-tune's examples: what it learned to write); None: every token but the special ones
    learned: list[bool] | None = None
    # The token each window starts with (None: the run's prefix token): a conversation in a model's own chat
    # template starts with its own first token (ChatML's <|im_start|>), not a start-of-text one
    prefix: int | None = None


_MAX_EXPONENT = math.log(1e300)
CLUSTERS = 30  # documents from which the bootstrap resamples documents, not windows (PerplexityResult.units)


def _exp(value: float) -> float:
    return math.exp(min(value, _MAX_EXPONENT))


@dataclass
class PerplexityResult:
    nll: float = 0.0  # nats, summed over scored tokens
    tokens: int = 0
    words: int = 0
    bytes: int = 0
    documents: int = 0
    per_document: list[dict] = field(default_factory=list)
    # (nll, tokens, bytes, words) of each scored window, and the document each is of: what --bootstrap resamples
    windows: list[tuple[float, int, float, float]] = field(default_factory=list)
    window_documents: list[int] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        out = {"perplexity": _exp(self.nll / self.tokens)}
        # Text without spaces between words (Chinese, Japanese) has a handful of whitespace
        # "words" per page, so exp(NLL / words) can exceed any float: left out, bpb says it all.
        if self.words and self.nll / self.words < _MAX_EXPONENT:
            out["word_perplexity"] = math.exp(self.nll / self.words)
        out["byte_perplexity"] = _exp(self.nll / self.bytes)
        out["bpb"] = self.nll / (self.bytes * math.log(2))
        return out

    def units(self) -> list[tuple[float, ...]]:
        """What the bootstrap resamples: the documents (each its windows' sums) where there are at least
        CLUSTERS of them, as a document's windows share its style and topic (resampled as if apart, the
        intervals of DialogSum's 200 dialogues of ~5 windows each came out 28% narrow: a review); else
        the windows themselves, so that one book, or a few, still gets an interval (a block bootstrap:
        blocks of up to the context's length of tokens)."""
        if len(set(self.window_documents)) < CLUSTERS:
            return self.windows
        sums: dict[int, list[float]] = {}
        for window, document in zip(self.windows, self.window_documents):
            sums[document] = [a + b for a, b in zip(sums.get(document, [0.0] * len(window)), window)]
        return [tuple(values) for values in sums.values()]

    def intervals(self, n_bootstrap: int) -> dict[str, float]:
        """95% intervals (half-widths) of perplexity, word_perplexity, byte_perplexity and bpb: the
        `units` resampled (the documents, or a few documents' windows), with sacrebleu's seed. A
        window's words (and bytes) are its document's in proportion to the bytes it scored."""
        from llmkit.eval.metrics._refs import half_width, interval, resampled_sums

        def exp_scale(name: str, samples: list[float]) -> dict[str, float]:
            low, high = interval(samples)
            return {f"{name}_ci95": half_width(samples), f"{name}_ci95_low": low, f"{name}_ci95_high": high}

        units = self.units()
        if len(units) < 2:  # every resample the same window: an interval of 0 would look exact
            from llmkit.console import note

            note("no interval for perplexity: the text was scored in one window, and the bootstrap resamples windows; "
                 "give more text (or more documents)")
            return {}
        nll, tokens, n_bytes, words = resampled_sums(list(zip(*units)), n_bootstrap)
        tokens, n_bytes = np.maximum(tokens, 1), np.maximum(n_bytes, 1)  # (a resample of windows without a scored token)
        exponent = np.minimum(nll / tokens, _MAX_EXPONENT)
        intervals = exp_scale("perplexity", np.exp(exponent).tolist())
        if "word_perplexity" in self.metrics:  # (left out where it overflows: text without spaces)
            per_word = np.minimum(nll / np.maximum(words, 1e-12), _MAX_EXPONENT)
            intervals |= exp_scale("word_perplexity", np.exp(per_word).tolist())
        intervals |= exp_scale("byte_perplexity", np.exp(np.minimum(nll / n_bytes, _MAX_EXPONENT)).tolist())
        intervals["bpb_ci95"] = half_width((nll / (n_bytes * math.log(2))).tolist())
        return intervals


def document_from_text(text: str, tokenizer) -> Document:
    return Document(tokenizer.encode(text), words=len(text.split()), bytes=len(text.encode("utf-8")))


def score_documents(
    model,
    documents: Sequence[Document],
    *,
    prefix_token: int,
    token_bytes: np.ndarray,
    pad_id: int,
    context_len: int = 1,
    batch_size: int = 8,
    progress=None,
) -> PerplexityResult:
    """Rolling-window log-likelihood of every document; counts and per-document records."""
    max_seq_len = int(model.config.context_length)
    requests: list[Request] = []
    owners: list[int] = []
    for d, doc in enumerate(documents):
        for request in rolling_windows(doc.tokens, prefix_token if doc.prefix is None else doc.prefix, max_seq_len, context_len):
            requests.append(request)
            owners.append(d)
    logprobs = token_logprobs(model, requests, pad_id=pad_id, batch_size=batch_size, progress=progress)
    nll = [0.0] * len(documents)
    counted = [0] * len(documents)
    scored_bytes = [0] * len(documents)
    predicted = [0] * len(documents)  # a document's windows predict its tokens in order, each once
    scored = token_bytes > 0
    windows = []
    for request, lp, d in zip(requests, logprobs, owners):
        targets = np.asarray(request.seq[-request.n :], dtype=np.int64)
        learned = documents[d].learned
        keep = scored[targets] if learned is None else np.asarray(learned[predicted[d] : predicted[d] + request.n], dtype=bool)
        predicted[d] += request.n
        window = (-float(lp.numpy()[keep].sum()), int(keep.sum()), int(token_bytes[targets][keep].sum()))
        windows.append(window)
        nll[d] += window[0]
        counted[d] += window[1]
        scored_bytes[d] += window[2]
    result = PerplexityResult()
    # a window's bytes in the document's own count (its text's, where known: what bpb divides by), and
    # its words the document's in the same proportion (a word count is a document's: words span windows)
    result.windows, result.window_documents = [], list(owners)
    for (nll_w, tokens_w, bytes_w), d in zip(windows, owners):
        share = bytes_w / scored_bytes[d] if scored_bytes[d] else 0.0
        result.windows.append((nll_w, tokens_w, documents[d].bytes * share if documents[d].bytes is not None and scored_bytes[d]
                               else bytes_w, (documents[d].words or 0) * share))
    for d, doc in enumerate(documents):
        n_bytes = doc.bytes if doc.bytes is not None else scored_bytes[d]
        record = {"document": d if doc.index is None else doc.index, "tokens": counted[d], "bytes": n_bytes, "nll": nll[d]}
        if doc.words is not None:
            record["words"] = doc.words
            result.words += doc.words
        result.per_document.append(record)
        result.nll += nll[d]
        result.tokens += counted[d]
        result.bytes += n_bytes
        result.documents += 1
    return result
