"""The inference engine: batched, left-padded, KV-cached token generation.

Public surface (also used by `llmkit eval`):

    Generator.for_checkpoint(load_checkpoint(path)).complete(prompts, GenerationParams(...)) -> list[Completion]
    generate_ids(model, prompt_ids, params, ...) -> list[RowResult]   (token level)

How a batch runs. Prompts are LEFT-padded to a common length and the model is told how much
padding each row has (`model.new_cache(B, max_len, pad_lengths)`), so padded positions are
invisible and each row behaves exactly as if it ran alone. One forward pass over the padded
prompts fills the preallocated cache (prefill); after that every step feeds only the B newly
chosen tokens: the prefix is never recomputed. The LSTM's "cache" is its recurrent state.

Context length (Transformers only; an LSTM has no limit). A prompt plus its continuation may not
fit in `config.context_length` positions. With `context_overflow="slide"` (the default) the
engine keeps a sliding window per row: prompts are cut from the left to leave room for the new
tokens, and when a row's window is full its oldest tokens are dropped and its newest half of the
context is re-encoded once, after which cached decoding continues. A row slides exactly when it
would alone: when the batch's cache is full, the rows whose own window is full are re-encoded
(together, one prefill), and the others keep their cached keys and values, moved into a new cache
that ends where the next token goes. With "error" such a request fails with a message naming the
lengths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from llmkit.errors import NotFinite, UserError
from llmkit.inference.options import OVERFLOW_POLICIES
from llmkit.inference.sampling import SamplingParams, apply_repetition_penalty, next_tokens, row_seed


@dataclass
class GenerationParams(SamplingParams):
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # before this many, no end token (nor a chat's role token) may end a completion
    stop: Sequence[str] = ()  # stop strings: the text is cut before the first one found
    stop_at_eos: bool = True
    seed: int = 0
    context_overflow: str = "slide"  # "slide" | "error" (see the module docstring)
    num_beams: int = 1  # above 1: beam search (llmkit/inference/beam.py), which draws nothing
    length_penalty: float = 1.0  # beam search: a finished beam's log-probability over its length to this power

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), got "
                             f"{self.min_new_tokens}")
        if self.context_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"context_overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")


@dataclass
class RowResult:
    token_ids: list[int]  # generated tokens (without the prompt, without the stopping EOS)
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: list[float] | None = None  # each token's log-probability (generate_ids' `logprobs`)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # each step's likeliest (id, log-probability)


@dataclass
class TokenLogprobs:
    """A completion's tokens' log-probabilities under the model: each token's, and the `top`
    likeliest tokens' at each step (ids, log-probabilities), read before the repetition penalty,
    temperature, top-k and top-p, which change the draw, not the model."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]


@dataclass
class Completion:
    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_index: int = 0
    sample_index: int = 0
    prompt_tokens: int = 0
    seed: int = 0
    logprobs: TokenLogprobs | None = None  # (asked for: Generator.complete's `logprobs`)


def token_logprobs(log_probs: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Rows of log-probabilities [n, V] and a token each [n]: each token's log-probability, and each
    row's `top` likeliest (id, log-probability) (empty lists for 0): what --logprobs records."""
    chosen = log_probs.gather(1, tokens[:, None]).squeeze(1).tolist()
    if not top:
        return chosen, [[] for _ in chosen]
    best = log_probs.topk(min(top, log_probs.size(-1)), dim=-1)
    return chosen, [list(zip(ids, values)) for ids, values in zip(best.indices.tolist(), best.values.tolist())]


def prepare_for_decoding(model) -> None:
    """Lay every CPU linear weight out transposed in memory: the same shape and values, column-major.

    The product's kernel for a few rows is then faster: 8 rows x 768 -> 3072 took 0.45 ms against
    1.05 ms on one thread with MKL (an Intel machine), 0.27 against 0.36 ms with the oneDNN
    products of llmkit/model/cpu_gemm.py (an AMD Zen 5, which uses them from 2 rows). One row
    times a weight of 1 MB or more takes numpy's OpenBLAS there, as fast with either layout; any
    other row MKL's kernels (cpu_gemm._one_row), the faster column-major (a 50,257 x 768 head on
    one thread: 6.9 against 8.1 ms, an Intel Xeon). Results agree to float
    rounding, as with any change of kernel (oneDNN's from 2 rows: to the bit). For a model that only generates:
    training reads the weights the other way round, so the training stages never call this.
    """
    # A weight shared with an embedding (a tied output head) stays: the lookup of one row would
    # then read a column of scattered values, which costs more than the head gains. bf16 weights
    # stay too: oneDNN's bf16 kernel is the faster one row-major (0.33 against 0.43 ms at 8 rows).
    embeddings = {m.weight.untyped_storage().data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, torch.nn.Linear) and weight.untyped_storage().data_ptr() not in embeddings
                    and weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
                    and weight.is_contiguous() and min(weight.shape) > 1):
                weight.data = weight.data.t().contiguous().t()


def in_eval_mode(function: Callable) -> Callable:
    """`function(model, ...)` run with the model in eval mode (no dropout), each module's own mode
    put back afterwards: a model handed over straight from training would otherwise generate, or
    score, with dropout on, noisy and different on every call."""
    @functools.wraps(function)
    def run(model, *args, **kwargs):
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            return function(model, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training
    return run


def context_limit(model) -> int | None:
    """How many positions a model can attend to at once; None for a recurrent model."""
    config = model.config
    return None if getattr(config, "arch", "gpt") == "lstm" else int(config.context_length)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            idx[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
    pad_lengths = torch.tensor([width - len(r) for r in rows], dtype=torch.long)
    return idx.to(device), pad_lengths.to(device)


class _Window:
    """Prefill (or re-prefill after a slide) for a batch; returns next-token scores [B, V] (logits,
    or an ensemble's log-probabilities)."""

    def __init__(self, model, pad_id: int, limit: int | None, budget: int, decoder=None, adjust_members=None):
        self.model = model
        self.decoder = decoder  # a CompiledDecoder (--compile) or None: the model's own forward
        self.pad_id = pad_id
        self.limit = limit
        self.budget = budget  # how many more tokens may still be fed after the prefill
        self.adjust_members = adjust_members  # an ensemble's: applied to each member's logits before mixing
        self.cache = None

    def _next_token_scores(self, idx: torch.Tensor) -> torch.Tensor:
        if self.adjust_members is not None:
            return self.model.next_token_log_probs(idx, cache=self.cache, adjust=self.adjust_members)
        logits, _ = self.model(idx, cache=self.cache, last_only=True)
        return logits[:, -1]

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        idx, pad_lengths = _left_pad(rows, self.pad_id, next(self.model.parameters()).device)
        max_len = idx.size(1) + self.budget
        if self.limit is not None:
            max_len = min(max_len, self.limit)
        if self.decoder is not None:
            max_len = self.decoder.cache_length(max_len, self.limit)
        self.cache = self.model.new_cache(idx.size(0), max_len, pad_lengths=pad_lengths)
        return self._next_token_scores(idx)

    def slide(self, windows: list[list[int]], sliding: list[bool]) -> torch.Tensor:
        """Scores after the cache filled: the rows in `sliding` encode their new window (rows of
        one length in one prefill, without padding, as alone), the others keep what they have
        cached. Both go into a new cache, each row's slots ending where the next token goes, so
        only a row whose own window is full is re-encoded: re-encoding the whole batch made a
        batch whose rows fill at different steps re-encode it once per row. `windows[b]` is row
        b's window; its newest token is not fed yet (the step this ends with feeds it)."""
        fed = [len(w) - 1 for w in windows]
        width, B = max(fed), len(windows)
        device = next(self.model.parameters()).device
        max_len = min(width + 1 + self.budget, self.limit)
        if self.decoder is not None:
            max_len = self.decoder.cache_length(max_len, self.limit)
        old = self.cache
        self.cache = self.model.new_cache(B, max_len, pad_lengths=torch.tensor([width - n for n in fed], device=device))
        for b in range(B):
            if not sliding[b] and fed[b]:
                self.cache.adopt(b, old, b, fed[b], end=width)
        old = None  # (let go before the prefills: two caches at most, as the whole batch's re-encoding held)
        by_length: dict[int, list[int]] = {}
        for b in range(B):
            if sliding[b] and fed[b]:
                by_length.setdefault(fed[b], []).append(b)
        for n, rows in by_length.items():
            idx = torch.tensor([windows[b][:-1] for b in rows], dtype=torch.long, device=device)
            if len(rows) == B:  # every row slides: encode straight into the new cache (no padding)
                self.model(idx, cache=self.cache, last_only=True)
                continue
            encoded = self.model.new_cache(len(rows), n)
            self.model(idx, cache=encoded, last_only=True)
            for i, b in enumerate(rows):
                self.cache.adopt(b, encoded, i, n, end=width)
        self.cache.pos = width
        return self.step(torch.tensor([w[-1] for w in windows], dtype=torch.long, device=device))

    @property
    def full(self) -> bool:
        return self.cache.pos >= self.cache.max_len

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder.step(tokens, self.cache)
        return self._next_token_scores(tokens[:, None])


def needs_window(longest: int, new: int, limit: int | None) -> bool:
    # The last new token is never fed to the model: prompt + new - 1 positions are attended to.
    return limit is not None and longest + new - 1 > limit


def prompt_keep(limit: int, new: int) -> int:
    """How many of a prompt's newest tokens the window keeps beside `new` new tokens: what they
    leave of the context, but at least half of it, so that a reply longer than the context still
    starts from some of its prompt (the window slides later on)."""
    return max(limit - new + 1, limit // 2, 1)


def check_fits(longest: int, new: int, limit: int | None, overflow: str) -> None:
    """Under --context-overflow error, refuse a prompt that leaves no room for the reply."""
    if limit is not None and needs_window(longest, new, limit) and overflow == "error":
        raise UserError(
            f"prompt ({longest} tokens) + --max-new-tokens ({new}) exceed the model's context length ({limit}); "
            "shorten the prompt, lower --max-new-tokens or use --context-overflow slide"
        )


def _ends_inside_a_character(tokenizer, ids: list[int]) -> bool:
    """Whether the tokens' bytes end part way into a UTF-8 character (decoded, one U+FFFD); a whole
    U+FFFD the model wrote is no such end."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(b"".join(bytes(tokenizer.id_to_bytes(i)) for i in ids[-4:]))  # (a character is at most 4 bytes)
    return bool(decoder.getstate()[0])


def _prompt_tokens_seen(prompt_ids: list[list[int]], framing_ids: Sequence[int], vocab: int, device) -> torch.Tensor:
    """[B, vocab] bools: the tokens each prompt holds, for the repetition penalty; its framing
    (`framing_ids`) left out."""
    seen = torch.zeros(len(prompt_ids), vocab, dtype=torch.bool, device=device)
    framing = set(framing_ids)
    for b, row in enumerate(prompt_ids):
        seen[b, torch.tensor([t for t in row if t not in framing], dtype=torch.long, device=device)] = True
    return seen


def _slid_windows(prompt_ids: list[list[int]], outputs: list[list[int]], alive: list[bool], starts: list[int],
                  limit: int) -> tuple[list[list[int]], list[bool]]:
    """Each row's window once the cache is full, and whether it slid. Only a row whose own window is
    full slides (keeps its newest half; `starts` moves); the others go on from what they have
    cached, as they would alone."""
    windows, sliding = [], []
    for b, output in enumerate(outputs):
        row = prompt_ids[b] + output
        slides = alive[b] and len(row) - starts[b] > limit
        if slides:
            starts[b] = len(row) - max(limit // 2, 1)  # (a context of 1 keeps its newest token)
        windows.append(row[starts[b] :] if alive[b] else row[-1:])  # (a finished row is only fed padding now)
        sliding.append(slides)
    return windows, sliding


@in_eval_mode
@torch.inference_mode()
def generate_ids(
    model,
    prompt_ids: list[list[int]],
    params: GenerationParams,
    *,
    pad_id: int,
    eos_ids: Sequence[int] = (),
    seeds: Sequence[int] | None = None,
    on_step: Callable[[list[int | None]], Sequence[int] | None] | None = None,
    decoder=None,
    stop_ids: Sequence[int] = (),
    framing_ids: Sequence[int] = (),
    vocab_size: int | None = None,
    logprobs: int | None = None,
) -> list[RowResult]:
    """Generate for one batch of token prompts (one row each), left-padded together.

    A token of `eos_ids` ends a row unless `params.stop_at_eos` is off; one of `stop_ids` ends it
    in any case (a chat's role tokens: past one, the model writes the next turn). `seeds` gives
    each row its own sampling seed (default: derived from params.seed and the row).
    `on_step(tokens)` is called after every step with the token each row produced (None for a
    finished row); it may return the indices of rows to stop now (a stop string appeared).
    `decoder` (llmkit.inference.compiled.CompiledDecoder) runs the decode steps compiled.
    `framing_ids` (the tokenizer's special tokens: a document start, a chat's roles) are the prompt's
    framing, not its text: the repetition penalty leaves them alone (the document start is often
    <|eos|>, which penalised from the first step made every completion run longer).
    `vocab_size` (the tokenizer's): a model with more output rows than that (an imported, padded
    vocabulary) never picks the rows past it, which no text stands for.
    `logprobs`: None, or record each token's log-probability and, at each step, the `logprobs`
    likeliest tokens' (0: none), from the model's scores before the ban of end tokens
    (`min_new_tokens`), the repetition penalty, temperature, top-k and top-p (vLLM's raw logprobs).
    """
    if not prompt_ids:
        return []
    if any(len(p) == 0 for p in prompt_ids):
        raise UserError("an empty prompt has no token to continue from; give at least one character of prompt")
    B = len(prompt_ids)
    limit = context_limit(model)
    new = params.max_new_tokens
    longest = max(len(p) for p in prompt_ids)
    check_fits(longest, new, limit, params.context_overflow)
    seeds = list(seeds) if seeds is not None else [row_seed(params.seed, b, 0) for b in range(B)]
    generators = None if params.greedy else [torch.Generator().manual_seed(s) for s in seeds]

    device = next(model.parameters()).device
    seen = _prompt_tokens_seen(prompt_ids, framing_ids, int(model.config.vocab_size), device) \
        if params.repetition_penalty != 1.0 else None
    adjust_members = None
    if seen is not None and callable(getattr(model, "next_token_log_probs", None)):
        # An ensemble's scores are mixed log-probabilities: the penalty acts on its members' logits.
        def adjust_members(logits: torch.Tensor) -> torch.Tensor:
            return apply_repetition_penalty(logits, seen, params.repetition_penalty)
    window = _Window(model, pad_id, limit, budget=new, decoder=decoder, adjust_members=adjust_members)
    # Where each row's window starts, as it would alone. Prompts are cut from the left so that as
    # many new tokens as possible fit beside them.
    starts = [0] * B
    if needs_window(longest, new, limit):
        keep = prompt_keep(limit, new)
        starts = [max(0, len(p) - keep) for p in prompt_ids]
    if new == 0:
        return [RowResult([], "length") for _ in range(B)]
    logits = window.prefill([p[s:] for p, s in zip(prompt_ids, starts)])
    if not bool(torch.isfinite(logits).all()):  # one check a call: sampling would fail on it, greedy print noise
        raise NotFinite()  # (worded by the command, which knows the checkpoints: NotFinite.explained)

    outputs: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    chosen_logprobs: list[list[float]] = [[] for _ in range(B)]
    top_logprobs: list[list[list[tuple[int, float]]]] = [[] for _ in range(B)]
    # Row bookkeeping stays in Python lists: one tolist() per step, no small tensor ops.
    stop_ids = set(stop_ids) | (set(eos_ids) if params.stop_at_eos else set())
    alive = [True] * B
    words = vocab_size if vocab_size is not None and vocab_size < int(model.config.vocab_size) else None
    # (transformers' min_new_tokens: the end tokens' scores -inf until then, so another token is drawn)
    banned = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if params.min_new_tokens and stop_ids else None
    for step in range(new):
        if logprobs is not None:
            log_probs = (logits[:, :words] if words is not None else logits).float().log_softmax(dim=-1)
        if banned is not None and step < params.min_new_tokens:
            logits = logits.index_fill(-1, banned, float("-inf"))
        if words is not None:
            logits, penalised = logits[:, :words], (seen[:, :words] if seen is not None else None)
        else:
            penalised = seen
        tokens = next_tokens(logits, params, generators, penalised if adjust_members is None else None)
        picked = tokens.tolist()
        if logprobs is not None:
            step_logprobs, step_top = token_logprobs(log_probs, tokens, logprobs)
        was_alive = alive
        reported: list[int | None] = [None] * B
        alive = list(alive)
        for b in range(B):
            if not was_alive[b]:
                picked[b] = pad_id  # a finished row is fed padding
            elif picked[b] in stop_ids:
                reasons[b] = "eos"
                alive[b] = False
            else:
                outputs[b].append(picked[b])
                reported[b] = picked[b]
                if logprobs is not None:
                    chosen_logprobs[b].append(step_logprobs[b])
                    top_logprobs[b].append(step_top[b])
        if not all(was_alive):
            tokens = torch.tensor(picked, dtype=torch.long, device=device)
        if seen is not None:
            seen[torch.arange(B, device=device), tokens] |= torch.tensor(alive, device=device)
        if on_step is not None:
            stopped = on_step(reported)
            for b in stopped or ():
                if alive[b]:
                    reasons[b] = "stop"
                    alive[b] = False
        if not any(alive) or step == new - 1:
            break
        if window.full:
            window.budget = new - step - 1
            logits = window.slide(*_slid_windows(prompt_ids, outputs, alive, starts, limit))
        else:
            logits = window.step(tokens)
    if logprobs is None:
        return [RowResult(o, r) for o, r in zip(outputs, reasons)]
    return [RowResult(o, r, lp, top) for o, r, lp, top in zip(outputs, reasons, chosen_logprobs, top_logprobs)]


def tokens_of_text(decode: Callable[[list[int]], str], ids: list[int], text: str) -> list[int]:
    """The fewest leading `ids` whose decoding holds all of `text` (a stopped completion's tokens: those
    past its stop string dropped). Counted by length, a character's first bytes (one U+FFFD) passed
    for the character, and its tokens went; a token across the stop string's start stays, as it must."""
    while ids and decode(ids[:-1]).startswith(text):
        ids = ids[:-1]
    return ids


class _TextTracker:
    """One row's decoded output: stop-string search and streaming of text as it becomes final.

    Searching and streaming read the text at every token. Decoding all the ids each time made that
    quadratic (a 4,000-token completion with --stop spent 0.5 ms a token on it, 25 % more CPU than
    without; 70 % at 8,000): the text of all but the last `SETTLE` to 2 x `SETTLE` ids is kept, and only
    the rest is decoded again, as text that follows text (`decode_after_text`: a SentencePiece
    decoder keeps the first word's space there). The split is checked against one whole decoding
    each time it moves, so it holds for whatever tokenizer (a byte-level BPE's splits at a whole
    character); where the two ever differ, the whole is decoded at every token, as before."""

    SETTLE = 64

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str], streaming: bool,
                 decode_after_text: Callable[[list[int]], str] | None = None):
        self.decode = decode
        self.decode_after_text = decode_after_text or decode
        self._settled = 0  # the first ids, whose text is _settled_text
        self._settled_text = ""
        self._settle_at = 2 * self.SETTLE  # when the split moves next (None: never, whole decodings only)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.eager = bool(self.stop) or streaming  # else decode once, at the end
        self.ids: list[int] = []
        self._text = ""
        self._decoded = 0  # len(ids) when _text was made
        self.cut: int | None = None  # where a stop string begins
        self.searched = 0  # stop strings cannot start before this
        self.emitted = 0

    @property
    def text(self) -> str:
        if self._decoded != len(self.ids):
            if self._settle_at is not None and len(self.ids) >= self._settle_at:
                self._settle()
            rest = self.ids[self._settled:]
            self._text = self._settled_text + self.decode_after_text(rest) if self._settled else self.decode(rest)
            self._decoded = len(self.ids)
        return self._text

    def _settle(self) -> None:
        """Keep the text of all but the last SETTLE ids, if the whole decodes as it and the rest after it."""
        whole, at = self.decode(self.ids), len(self.ids) - self.SETTLE
        head = self.decode(self.ids[:at])
        if whole == head + self.decode_after_text(self.ids[at:]):
            self._settled, self._settled_text, self._settle_at = at, head, len(self.ids) + self.SETTLE
        elif self._settled and whole != self._settled_text + self.decode_after_text(self.ids[self._settled:]):
            self._settled, self._settled_text, self._settle_at = 0, "", None  # (never seen: whole decodings from now on)
        else:
            self._settle_at = len(self.ids) + self.SETTLE  # (mid-character, say: later)

    def add(self, token: int) -> bool:
        """Append a token; True when a stop string has appeared."""
        self.ids.append(token)
        if not self.eager:
            return False
        if self.stop:
            text = self.text
            found = [i for i in (text.find(s, self.searched) for s in self.stop) if i >= 0]
            if found:
                self.cut = min(found)
                return True
            # A new match must end in text still to come, so it starts at most hold characters
            # back; a few more for a trailing half-decoded character that may still change.
            self.searched = max(0, len(text) - self.hold - 4)
        return False

    @property
    def final_text(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]

    def pop_stream(self, finished: bool = False) -> str:
        """Text that can be shown now: never a half-decoded character or a possible stop string."""
        text = self.final_text
        end = len(text)
        if not finished and self.cut is None:
            # A byte-level token may end inside a multi-byte character: wait for the rest. Only
            # then the stop-string margin, or it would be spent on the half character.
            while end > self.emitted and text[end - 1] == "\ufffd":
                end -= 1
            end -= self.hold
        if end <= self.emitted:
            return ""
        piece = text[self.emitted : end]
        self.emitted = end
        return piece


class Generator:
    """Text in, text out: tokenization, batching, seeds, stop strings and streaming.

    Text prompts are encoded after `start_id`, the token documents follow in the model's training
    data (see prompts.document_start_id; default BOS), so an empty prompt samples a document's start.
    """

    def __init__(self, model, tokenizer, start_id: int | None = None, compile: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.start_id = tokenizer.bos_id if start_id is None else start_id
        self.decoder = None
        if compile:
            from llmkit.inference.compiled import CompiledDecoder

            self.decoder = CompiledDecoder(model)  # which packs the weights its own way
        else:
            prepare_for_decoding(model)

    @classmethod
    def for_checkpoint(cls, loaded, compile: bool = False) -> Generator:
        """The generator of a loaded checkpoint (llmkit.model.io.load_checkpoint, or an ensemble's
        load_ensemble), as `llmkit generate` and `llmkit eval` make it: text prompts start after the
        token the checkpoint's documents followed in training, which for a model pretrained on
        default shards is `<|eos|>`, a token the default start `<|bos|>` is not."""
        from llmkit.inference.prompts import document_start_id

        start_id = document_start_id(loaded.tokenizer, loaded.artifact, loaded.task)
        return cls(loaded.model, loaded.tokenizer, start_id, compile=compile)

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.start_id] + (self.tokenizer.encode(prompt) if prompt else [])

    def _decoder_for(self, prompt: list[int]) -> Callable[[list[int]], str]:
        # After a special token (a document start, a chat role) the completion begins a text, and
        # decodes as one; after text it goes on mid-text, where a "▁word" token's space is written.
        if prompt[-1] in self.tokenizer.special_ids.values():
            return self.tokenizer.decode
        return self.tokenizer.decode_continuation

    def _decoders(self, prompt: list[int], params: GenerationParams) -> tuple[Callable[[list[int]], str], Callable[[list[int]], str]]:
        """(decode the completion, decode a part of it that follows text). Past the end of a text
        (--ignore-eos) the end-of-text and document-start tokens it goes through are left out of the
        text, as transformers' skip_special_tokens and vLLM's ignore_eos leave them: their literal
        names (`<|eos|>`) were read back as words by eval and fine-tuning. They stay in the ids."""
        whole, after_text = self._decoder_for(prompt), self.tokenizer.decode_continuation
        if params.stop_at_eos:
            return whole, after_text
        boundaries = {*self.tokenizer.end_ids, self.start_id}

        def without(decode: Callable[[list[int]], str]) -> Callable[[list[int]], str]:
            return lambda ids: decode([i for i in ids if i not in boundaries])

        return without(whole), without(after_text)

    def complete(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: GenerationParams,
        *,
        num_samples: int = 1,
        batch_size: int = 8,
        on_text: Callable[[int, str], None] | None = None,
        extra_stop_ids: Sequence[int] | None = None,
        prompt_offset: int = 0,
        on_batch: Callable[[list[Completion]], None] | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """Every prompt `num_samples` times; results in order (prompt 0 samples, prompt 1, ...).

        A prompt is text (encoded after `start_id`) or a list of token ids used as given (chat prompts,
        see llmkit.data.templates.encode_chat_prompt). `on_text(row, piece)` streams text as it is decided, `row`
        being the index in the result list. Row seeds derive from (params.seed, prompt_offset +
        prompt index, sample index), so a prompt's text does not depend on how calls are split.
        `extra_stop_ids` end a completion as the end-of-text token does, even with
        `params.stop_at_eos` off (a chat's: prompts.chat_stop_ids); None is a text's (prompts.text_stop_ids).
        `on_batch(completions)` gets each batch's completions as it ends (a prompt's samples may span batches).
        `logprobs`: None, or give each completion its tokens' log-probabilities and each step's
        `logprobs` likeliest tokens' (generate_ids).
        """
        if num_samples < 1:
            raise UserError(f"--num-samples must be at least 1, got {num_samples}")
        rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
        encoded = [self.encode_prompt(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        if extra_stop_ids is None:
            from llmkit.inference.prompts import text_stop_ids

            extra_stop_ids = text_stop_ids(self.tokenizer, self.start_id, past_eos=not params.stop_at_eos)
        results: list[Completion] = []
        for start in range(0, len(rows), max(1, batch_size)):
            done = len(results)
            chunk = rows[start : start + batch_size]
            trackers = []
            for p, _ in chunk:
                whole, after_text = self._decoders(encoded[p], params)
                trackers.append(_TextTracker(whole, params.stop, streaming=on_text is not None, decode_after_text=after_text))
            seeds = [row_seed(params.seed, prompt_offset + p, s) for p, s in chunk]

            def on_step(tokens, trackers=trackers, start=start):
                stopped = []
                for b, token in enumerate(tokens):
                    if token is None:
                        continue
                    if trackers[b].add(token):
                        stopped.append(b)
                    if on_text is not None:
                        piece = trackers[b].pop_stream()
                        if piece:
                            on_text(start + b, piece)
                return stopped

            if params.num_beams > 1:  # (the best beam is known at the end: its tokens are then read as they came)
                from llmkit.inference.beam import beam_search_ids

                stops = [s for s in params.stop if s]
                row_results = beam_search_ids(
                    self.model, [encoded[p] for p, _ in chunk], params, pad_id=pad_id, eos_ids=self.tokenizer.end_ids,
                    stop_ids=extra_stop_ids, framing_ids=tuple(self.tokenizer.special_ids.values()),
                    vocab_size=self.tokenizer.vocab_size, logprobs=logprobs,
                    stops_text=(lambda b, ids: any(s in trackers[b].decode(ids) for s in stops)) if stops else None)
                for b, res in enumerate(row_results):
                    for token in res.token_ids:
                        trackers[b].add(token)
            else:
                row_results = generate_ids(
                    self.model, [encoded[p] for p, _ in chunk], params, pad_id=pad_id, eos_ids=self.tokenizer.end_ids, seeds=seeds,
                    on_step=on_step, decoder=self.decoder, stop_ids=extra_stop_ids,
                    framing_ids=tuple(self.tokenizer.special_ids.values()), vocab_size=self.tokenizer.vocab_size,
                    logprobs=logprobs,
                )
            for b, ((p, s), res) in enumerate(zip(chunk, row_results)):
                tracker = trackers[b]
                # cut by the length inside a character: its bytes so far are no character the model wrote
                cut_inside = res.finish_reason == "length" and _ends_inside_a_character(self.tokenizer, res.token_ids)
                if on_text is not None:
                    piece = tracker.pop_stream(finished=True)
                    piece = piece.removesuffix("\ufffd") if cut_inside else piece
                    if piece:
                        on_text(start + b, piece)
                ids = res.token_ids
                if tracker.cut is not None:  # drop the tokens past the stop string
                    ids = tokens_of_text(tracker.decode, ids, tracker.final_text)
                results.append(
                    Completion(
                        prompt=prompts[p] if isinstance(prompts[p], str) else self.tokenizer.decode(encoded[p]),
                        text=tracker.final_text.removesuffix("\ufffd") if cut_inside else tracker.final_text,
                        token_ids=ids,
                        finish_reason=res.finish_reason,
                        prompt_index=prompt_offset + p,
                        sample_index=s,
                        prompt_tokens=len(encoded[p]),
                        seed=seeds[b],
                        logprobs=None if res.logprobs is None else TokenLogprobs(res.logprobs[: len(ids)], res.top_logprobs[: len(ids)]),
                    )
                )
            if on_batch is not None:
                on_batch(results[done:])
        return results
