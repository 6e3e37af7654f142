"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores such tasks.

Each choice is scored as a continuation of the context: the sum of log p(choice tokens |
context), the choice behind lm-eval's target delimiter " " (`continuation`). `acc` takes the
choice with the highest sum; `acc_norm` divides each sum by the choice's length in characters
first, the delimiter not counted (lm-eval's `acc_norm`), which removes the bias towards short
answers. Trailing spaces of the context move to the continuation and the continuation's tokens
are the ones the tokenizer gives for context + continuation beyond those of the context alone,
as in lm-eval's `_encode_pair`. Labels scored zero-shot (`as_read`) differ where the two encodings
part before the context's end: a context ending in ".\n" (eval's default label template "{text}\n"
after a sentence) encodes "." + "\n", but with the label after it llmkit's tokenizers write ".\n"
as one token; lm-eval's split then scored the label after the "." alone, a text the model never
reads, so there the tokens from where the two part are scored (the same ".\n" for every label: its
log-probability, common to all, moves no argmax). Multiple choice keeps lm-eval's split: its
acc_norm divides each sum by the choice's length, which a common term would skew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmkit.errors import NotFinite
from llmkit.eval.loglik import Request, token_logprobs


def continuation(context: str, choice: str) -> str:
    """A choice as lm-eval scores it after its context: behind the target delimiter, unless the
    context already ends in whitespace or the choice starts with it (data written with its own
    spaces keeps them as they are)."""
    from llmkit.eval.benchmarks import TARGET_DELIMITER

    if not context or context[-1:].isspace() or choice[:1].isspace():
        return choice
    return TARGET_DELIMITER + choice


@dataclass
class ChoiceScores:
    logliks: list[float]
    lengths: list[int]  # characters per choice as given, the delimiter before it not counted (what acc_norm divides by)

    @property
    def prediction(self) -> int:
        return int(np.argmax(self.logliks))

    @property
    def prediction_norm(self) -> int:
        return int(np.argmax(np.asarray(self.logliks) / np.maximum(np.asarray(self.lengths), 1)))


def context_cut_note(count: int, total: int, limit: int, items: str = "questions", shots: bool = True) -> str:
    """What a run says of the prompts that lost their start to the model's context (a score of
    other questions than the whole ones: silent before)."""
    one = count == 1
    return (f"{count} of {total} {items} did not fit in the model's context ({limit} tokens) with an answer: the start of "
            f"{'its' if one else 'their'} prompt{' (the first demonstrations first)' if shots else ''} was left out, as "
            f"lm-eval cuts {'it' if one else 'them'}; a model with a longer context{', or fewer --shots,' if shots else ''} "
            f"scores {'it' if one else 'them'} whole")


def encode_pair(tokenizer, context: str, continuation: str, as_read: bool = False) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context) if context else []
    if not as_read:
        return context_ids, whole[len(context_ids) :]
    shared = 0  # (where the context's own tokens stop being those of the whole: at its end, almost always)
    while shared < min(len(context_ids), len(whole)) and context_ids[shared] == whole[shared]:
        shared += 1
    return whole[:shared], whole[shared:]


def score_pairs(
    model, tokenizer, pairs: list[tuple[str, str] | tuple[list[int], list[int]]], *, prefix_token: int, pad_id: int,
    batch_size: int = 8, progress=None, cut: list[int] | None = None, context_cut: list[int] | None = None,
    greedy: list[bool] | None = None, as_read: bool = False,
) -> list[float]:
    """log p(continuation | context) for each (context, continuation), conditioned on the
    document-start token before the context; cut from the left to the model's context length
    (as lm-eval does). A pair of token ids (a fine-tune's own format: a chat prompt, a template's)
    is scored as given, its context holding its own start. A continuation longer than the context
    alone is scored on its last tokens only; `cut`, where given, gets the indices of such pairs
    (lm-eval leaves the case undefined), and `context_cut` those of the others whose context lost
    its start (to say so). `greedy`, where given, gets whether each continuation is the model's
    greedy one, token by token (loglik.greedy_matches)."""
    limit = int(model.config.context_length)
    requests: list[Request] = []
    for index, (context, continuation) in enumerate(pairs):
        if isinstance(context, list):
            continuation_ids = list(continuation)
            whole = context + continuation_ids
        else:
            context_ids, continuation_ids = encode_pair(tokenizer, context, continuation, as_read)
            whole = [prefix_token] + context_ids + continuation_ids
        seq = whole[-(limit + 1) :]
        requests.append(Request(seq, min(len(continuation_ids), limit)))
        if cut is not None and len(continuation_ids) > limit:
            cut.append(index)
        elif context_cut is not None and len(whole) > limit + 1:
            context_cut.append(index)
    scored = [float(lp.sum()) for lp in token_logprobs(model, requests, pad_id=pad_id, batch_size=batch_size, progress=progress)]
    if not all(math.isfinite(x) for x in scored):  # NaN loses every comparison: each answer would fall to the first choice
        raise NotFinite()
    if greedy is not None:
        from llmkit.eval.loglik import greedy_matches

        greedy.extend(greedy_matches(model, requests, pad_id=pad_id, batch_size=batch_size))
    return scored


def score_choices(
    model, tokenizer, examples: list[tuple[str | list[int], list[str]]], *, prefix_token: int, pad_id: int, batch_size: int = 8,
    progress=None, cut: list[int] | None = None, context_cut: set[int] | None = None, encode_choice=None,
    as_read: bool = False,
) -> list[ChoiceScores]:
    """Each (context, choices) scored, each choice as written behind its context's delimiter
    (`continuation`), or, for a context of token ids, as `encode_choice(index, choice)` gives the
    pair (a fine-tune's prompt and reply); acc_norm's lengths are the choices' own. `cut`: as score_pairs', over the
    choices in order; `context_cut` gets the examples whose context lost its start for a choice. `as_read`: labels,
    split where the encodings part (encode_pair)."""
    pairs = [(context, continuation(context, choice)) if isinstance(context, str) else encode_choice(index, choice)
             for index, (context, choices) in enumerate(examples) for choice in choices]
    owners = [index for index, (_, choices) in enumerate(examples) for _ in choices]
    cut_pairs: list[int] = []
    logliks = iter(score_pairs(model, tokenizer, pairs, prefix_token=prefix_token, pad_id=pad_id, batch_size=batch_size,
                               progress=progress, cut=cut, context_cut=cut_pairs, as_read=as_read))
    if context_cut is not None:
        context_cut.update(owners[i] for i in cut_pairs)
    return [ChoiceScores([next(logliks) for _ in choices], [len(c) for c in choices]) for _, choices in examples]
