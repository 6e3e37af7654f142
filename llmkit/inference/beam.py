"""Beam search: transformers' `generate(num_beams=N)` (its defaults: `early_stopping=False`,
`length_penalty=1.0`, one sequence back), on llmkit's batched, left-padded, KV-cached engine.

Each prompt keeps N running beams (the first alone at first: the others start at -1e9). A step
scores every beam's next tokens (log-softmax, then the repetition penalty and `min_new_tokens`
on those log-probabilities, as transformers' beam search applies its processors), adds each
beam's running score, and looks at the prompt's K likeliest continuations over all its beams
(K = N times the number of end tokens plus one, at least 2N). Of those, a continuation that ends
(an end token, or the last token `max_new_tokens` allows) and ranks among the first N is a
finished hypothesis, scored by its log-probability over its length (end token included) to the
power `length_penalty`; the N best finished ones are kept. The N likeliest that do not end are
the next running beams, whose caches are copied from their parents' rows. A prompt stops once no
running beam can beat its worst finished one (the best running score over the current length
to the power `length_penalty`: transformers' heuristic for `early_stopping=False`); the search
ends when every prompt has stopped or every continuation ends. The answer is each prompt's best
finished hypothesis, its end token dropped as generation drops it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from llmkit.errors import NotFinite, UserError
from llmkit.inference.engine import (GenerationParams, RowResult, _prompt_tokens_seen, _Window, context_limit, in_eval_mode,
                                     needs_window, token_logprobs)
from llmkit.inference.sampling import apply_repetition_penalty

UNLIKELY = -1.0e9  # transformers' score of a beam that is not there


@in_eval_mode
@torch.inference_mode()
def beam_search_ids(
    model,
    prompt_ids: list[list[int]],
    params: GenerationParams,
    *,
    pad_id: int,
    eos_ids: Sequence[int] = (),
    stop_ids: Sequence[int] = (),
    framing_ids: Sequence[int] = (),
    vocab_size: int | None = None,
    stops_text: Callable[[int, list[int]], bool] | None = None,
    logprobs: int | None = None,
) -> list[RowResult]:
    """The best beam of each prompt (one RowResult each), as `generate_ids` returns rows; the
    arguments are its (no seeds: the search draws nothing). `stops_text(prompt, tokens)`: whether a
    continuation's text (of prompt number `prompt`) holds a stop string (--stop), which ends it as an end token does (as
    transformers' StopStringCriteria ends a beam: its text cut there afterwards, by the caller).
    `logprobs`: as generate_ids' (the model's own log-probabilities of each answer's tokens, and
    each step's `logprobs` likeliest), read from one forward pass over each prompt and its answer."""
    if not prompt_ids:
        return []
    if any(len(p) == 0 for p in prompt_ids):
        raise UserError("an empty prompt has no token to continue from; give at least one character of prompt")
    B, N, new = len(prompt_ids), params.num_beams, params.max_new_tokens
    limit = context_limit(model)
    longest = max(len(p) for p in prompt_ids)
    if needs_window(longest, new, limit):
        raise UserError(f"beam search keeps the prompt ({longest} tokens) and --max-new-tokens ({new}) within the "
                        f"context ({limit} tokens), which they exceed; shorten the prompt or lower --max-new-tokens")
    if new == 0:
        return [RowResult([], "length") for _ in range(B)]
    device = next(model.parameters()).device
    rows = [prompt for prompt in prompt_ids for _ in range(N)]
    model_vocab = int(model.config.vocab_size)
    V = vocab_size if vocab_size is not None and vocab_size < model_vocab else model_vocab
    seen = _prompt_tokens_seen(rows, framing_ids, model_vocab, device) if params.repetition_penalty != 1.0 else None
    stops = sorted(set(stop_ids) | (set(eos_ids) if params.stop_at_eos else set()))
    stop_tensor = torch.tensor(stops, dtype=torch.long, device=device)
    adjust_members = None
    if seen is not None and callable(getattr(model, "next_token_log_probs", None)):
        # An ensemble's penalty acts on each member's logits, then the mixture is taken, as generate_ids applies it
        # (on the mixture's log-probabilities a review found 3 of 4 searches other than that); `seen` read as it is now
        def adjust_members(logits: torch.Tensor) -> torch.Tensor:
            return apply_repetition_penalty(logits, seen, params.repetition_penalty)
    window = _Window(model, pad_id, limit, budget=new, adjust_members=adjust_members)
    scores = window.prefill(rows)
    if not bool(torch.isfinite(scores).all()):
        raise NotFinite()

    K = min(max(2, 1 + len(stops)) * N, N * V)
    among_first = torch.arange(K, device=device) < N
    running = torch.zeros(B, N, device=device)
    running[:, 1:] = UNLIKELY
    running_tokens = torch.full((B, N, new), pad_id, dtype=torch.long, device=device)
    finished = torch.full((B, N), UNLIKELY, device=device)
    finished_tokens = running_tokens.clone()
    finished_length = torch.zeros(B, N, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, N, dtype=torch.bool, device=device)
    by_stop = torch.zeros(B, N, dtype=torch.bool, device=device)  # (a finished hypothesis ended by a stop string)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    offsets = torch.arange(B, device=device)[:, None] * N
    for step in range(new):
        log_probs = scores[:, :V].float().log_softmax(dim=-1)
        if seen is not None and adjust_members is None:
            log_probs = apply_repetition_penalty(log_probs, seen[:, :V], params.repetition_penalty)
        if step < params.min_new_tokens and stops:
            log_probs = log_probs.index_fill(-1, stop_tensor, float("-inf"))
        total = (log_probs.view(B, N, V) + running[:, :, None]).view(B, N * V)
        top, index = total.topk(K, dim=-1)
        parents, tokens = index // V, index % V
        stopped = torch.zeros_like(tokens, dtype=torch.bool)
        if stops_text is not None:  # (each candidate's text, decoded: K a prompt, a step)
            histories, picked, made = running_tokens[:, :, :step].tolist(), tokens.tolist(), parents.tolist()
            stopped = torch.tensor([[stops_text(b, histories[b][parent] + [token]) for parent, token in zip(made[b], picked[b])]
                                    for b in range(B)], dtype=torch.bool, device=device)
        ends = torch.isin(tokens, stop_tensor) | stopped | (step == new - 1)
        # the N best that end, among the first N continuations, join the finished ones
        length_score = top / float(step + 1) ** params.length_penalty
        length_score = length_score + (~improvable).float() * UNLIKELY + (~(ends & among_first)).float() * UNLIKELY
        merged = torch.cat((finished, length_score), dim=1)
        keep = merged.topk(N, dim=-1).indices
        finished = merged.gather(1, keep)
        # (the kept ones' histories alone: a kept candidate's is its parent's and its token; copying all K a step cost 2.3x
        # with a Llama-3-sized set of special tokens, a review measured)
        fresh = keep >= N
        candidate = (keep - N).clamp(min=0)
        from_parent = torch.gather(running_tokens, 1, parents.gather(1, candidate)[:, :, None].expand(-1, -1, new)).clone()
        from_parent[:, :, step] = tokens.gather(1, candidate)
        finished_tokens = torch.where(fresh[:, :, None], from_parent,
                                      finished_tokens.gather(1, keep.clamp(max=N - 1)[:, :, None].expand(-1, -1, new)))
        finished_length = torch.cat((finished_length, torch.full_like(length_score, step + 1, dtype=torch.long)), dim=1).gather(1, keep)
        is_finished = torch.cat((is_finished, ends & among_first), dim=1).gather(1, keep)
        by_stop = torch.cat((by_stop, stopped), dim=1).gather(1, keep)
        # the N likeliest that go on are the running beams
        going_on = (top + ends.float() * UNLIKELY).topk(N, dim=-1).indices
        running = (top + ends.float() * UNLIKELY).gather(1, going_on)
        running_tokens = torch.gather(running_tokens, 1, parents.gather(1, going_on)[:, :, None].expand(-1, -1, new)).clone()
        running_tokens[:, :, step] = tokens.gather(1, going_on)
        parent_rows = (parents.gather(1, going_on) + offsets).view(-1)
        chosen = tokens.gather(1, going_on).view(-1)
        best_possible = running[:, :1] / float(step + 1) ** params.length_penalty
        worst_finished = torch.where(is_finished, finished.min(dim=1, keepdim=True).values, torch.full_like(finished, UNLIKELY))
        improvable = improvable & (best_possible > worst_finished).any(dim=-1, keepdim=True)
        if not bool(improvable.any()) or bool(ends.all()) or step == new - 1:
            break
        window.cache.reorder(parent_rows)
        if seen is not None:
            seen = seen.index_select(0, parent_rows)
            seen[torch.arange(B * N, device=device), chosen] = True
        scores = window.step(chosen)
    results = []
    stop_set = set(stops)
    for b in range(B):
        tokens = finished_tokens[b, 0, : int(finished_length[b, 0])].tolist()
        if tokens and tokens[-1] in stop_set:
            results.append(RowResult(tokens[:-1], "eos"))
        else:
            results.append(RowResult(tokens, "stop" if bool(by_stop[b, 0]) else "length"))
    if logprobs is not None:
        for prompt, result in zip(prompt_ids, results):
            result.logprobs, result.top_logprobs = _answer_logprobs(model, prompt, result.token_ids, logprobs, V, device)
    return results


def _answer_logprobs(model, prompt: list[int], answer: list[int], top: int, vocab: int, device):
    """Each answer token's log-probability after the prompt and the answer before it, and each step's
    `top` likeliest (id, log-probability), over the first `vocab` rows: one uncached forward pass."""
    if not answer:
        return [], []
    logits, _ = model(torch.tensor([prompt + answer[:-1]], device=device))
    log_probs = logits[0, len(prompt) - 1 :, :vocab].float().log_softmax(dim=-1)
    return token_logprobs(log_probs, torch.tensor(answer, device=device), top)
