"""Preference pairs for `finetune --task dpo` (direct preference optimization, Rafailov et al. 2023):
records -> pairs of encoded replies -> batches, the starting model's log-probability of each
reply, and DPO's loss.

A record is a prompt and two replies to it, read as llmkit/data/preferences.py reads it (TRL's
shapes): each reply encoded as an SFT example with the run's template, the reply where the
response goes, and only the reply's own tokens scored (the template's end of turn with it).

The loss of a pair is TRL's sigmoid loss, -log sigmoid(beta x ((log pi(chosen) - log
ref(chosen)) - (log pi(rejected) - log ref(rejected)))), each log-probability summed over the
reply's tokens. The reference is the starting model, scored once before the first step (TRL's
`precompute_ref_log_probs`), each reply alone: no second copy of the model is held while training,
and the values do not depend on the batch, the process count or a resume.

A batch holds a pair's two replies in adjacent rows, chosen first (`rows_per_example = 2`, which
the training engine reads: under --batch-invariant a pair's rows take positions 2k and 2k + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from llmkit.console import note
from llmkit.data.preferences import encode_reply, last_reply_only, sft_records, why_it_prefers_nothing
from llmkit.data.templates import Encoded
from llmkit.errors import UserError
from llmkit.finetune.data import ExampleBatches, Examples, _places, shorten
from llmkit.model.gpt import IGNORE_INDEX


@dataclass
class PreferencePair:
    chosen: Encoded
    rejected: Encoded
    # each reply's log-probability under the starting model (reference_log_probs), once scored
    reference: tuple[float, float] | None = None

    @property
    def replies(self) -> tuple[Encoded, Encoded]:
        return self.chosen, self.rejected

    @property
    def ids(self) -> list[int]:
        """Both replies' tokens, apart (what repeats are told by, and the largest id is checked in)."""
        return [*self.chosen.ids, -1, *self.rejected.ids]

    @property
    def learn(self) -> list[bool]:
        return [*self.chosen.learn, False, *self.rejected.learn]


def _cut_together(encoded: list[Encoded], replies: tuple[dict, dict], template: dict, tokenizer, fits: int,
                  where: str) -> list[Encoded]:
    """A pair too long, cut to `fits` tokens with one prompt for both replies: the prompt as SFT cuts it
    for the longer reply (its oldest exchanges, the longest field's end first), then each reply after it,
    its own end cut where even that does not fit. Cut one reply at a time, the short reply kept the
    whole prompt the long one lost, and the pair compared two answers to different questions (a review)."""
    longer = max(range(2), key=lambda j: len(encoded[j].ids))
    cut = last_reply_only(shorten(template, replies[longer], encoded[longer], tokenizer, fits, where)[0])
    prompt = cut.ids[:cut.prompt_length]
    together = []
    for example in encoded:
        start = example.prompt_length
        ids, learn = prompt + example.ids[start:], [False] * len(prompt) + example.learn[start:]
        together.append(Encoded(ids[:fits], learn[:fits], example.unlearned_turns))
    return together


def preference_pairs(records: list[dict], template: dict, tokenizer, max_len: int, truncate: bool, name: str,
                     verbose: bool = True, places: Sequence[str] | None = None) -> Examples:
    """Encode preference records: each reply as an SFT example of at most max_len + 1 tokens (its
    last only predicted), cut to fit with --truncate as SFT cuts (the prompt gives way first, the
    same prompt for both replies: _cut_together), else refused. A pair with a blank reply, or the
    same reply twice, is left out and counted."""
    places = _places(records, name, places)
    fits = max_len + 1
    pairs, too_long, longest, longest_at, no_room, blank, same = [], 0, 0, 0, 0, 0, 0
    for i, record in enumerate(records):
        replies = sft_records(record, template, places[i])
        encoded = [encode_reply(template, reply, tokenizer, places[i]) for reply in replies]
        nothing = why_it_prefers_nothing(*encoded, tokenizer)
        if nothing is not None:
            blank, same = blank + (nothing == "blank"), same + (nothing == "same")
            continue
        length = max(len(e.ids) for e in encoded)
        if length > longest:
            longest, longest_at = length, i
        if length > fits:
            too_long += 1
            if not truncate:
                continue
            encoded = _cut_together(encoded, replies, template, tokenizer, fits, places[i])
        if not all(any(e.learn[1:]) for e in encoded):
            no_room += 1
            continue
        pairs.append(PreferencePair(*encoded))
    if too_long and not truncate:
        raise UserError(f"{too_long} of {len(records)} {name} preference pairs have a reply longer than {fits} tokens with its "
                        f"prompt (the longest, {places[longest_at]}, has {longest}): the model reads {max_len} of them (the "
                        "context length or --seq-len), the last being only predicted; pass --truncate to cut them, or use a "
                        "checkpoint with a longer context")
    if verbose and blank:
        note(f"{blank} of {len(records)} {name} preference pairs left out: a reply is empty or only whitespace; fill it in, "
             "or leave the pair out of the data")
    if verbose and same:
        note(f"{same} of {len(records)} {name} preference pairs left out: their two replies are the same, which prefers "
             "nothing; leave such pairs out of the data")
    if verbose and too_long:
        note(f"{too_long} of {len(records)} {name} preference pairs were cut to fit {max_len} positions (--truncate)"
             + (f"; {no_room} left out, a reply not fitting" if no_room else ""))
    if not pairs and name == "training":
        raise UserError(f"no {name} preference pair is left to train on ({blank} with a blank reply, {same} with the same "
                        f"reply twice, {no_room} whose reply does not fit); give pairs of two different replies")
    cut = too_long if truncate else 0
    return Examples(pairs, name, verbose, cut, {"records": len(records), "kept": len(pairs), "blank": blank,
                                               "same_replies": same, "truncated": cut, "no_room": no_room})


# -- batches -----------------------------------------------------------------------------------------

def _inputs_and_targets(reply: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """A reply's inputs and targets: its next tokens where the reply is, IGNORE_INDEX elsewhere."""
    ids = torch.tensor(reply.ids, dtype=torch.long)
    learn = torch.tensor(reply.learn[1:], dtype=torch.bool)
    return ids[:-1], torch.where(learn, ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))


class PreferenceBatches(ExampleBatches):
    """(inputs [2n, W], targets [2n, W], reference log-probabilities [n, 2], sample indices [n]) for n
    pairs, each pair's chosen reply in row 2k and its rejected one in row 2k + 1, right-padded."""

    def pad_width(self, indices: Sequence[int]) -> int:
        return max(len(reply.ids) for pair in self.rows(indices) for reply in pair.replies) - 1

    def tokens(self, indices: Sequence[int]) -> int:
        return sum(len(reply.ids) - 1 for pair in self.rows(indices) for reply in pair.replies)

    def __call__(self, indices: Sequence[int], width: int | None = None):
        pairs = self.rows(indices)
        if any(pair.reference is None for pair in pairs):
            raise RuntimeError("a preference pair was batched before the starting model scored it (reference_log_probs)")
        width = width or max(len(reply.ids) for pair in pairs for reply in pair.replies) - 1
        x = torch.full((2 * len(pairs), width), self.pad_id, dtype=torch.long)
        y = torch.full((2 * len(pairs), width), IGNORE_INDEX, dtype=torch.long)
        for k, pair in enumerate(pairs):
            for j, reply in enumerate(pair.replies):
                inputs, targets = _inputs_and_targets(reply)
                x[2 * k + j, :len(inputs)], y[2 * k + j, :len(targets)] = inputs, targets
        reference = torch.tensor([pair.reference for pair in pairs], dtype=torch.float32)
        return x, y, reference, torch.tensor(list(indices), dtype=torch.long)


# -- the reference model and the loss ------------------------------------------------------------

def reply_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[rows] each row's log-probability of its targets (IGNORE_INDEX positions left out), in fp32."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.view(targets.shape).sum(dim=1)


@torch.no_grad()
def reference_log_probs(model: torch.nn.Module, pair_sets: Sequence[Sequence[PreferencePair]], info, precision: str) -> None:
    """Score every reply under the model as it starts (the DPO reference), each alone, the work shared
    among the processes and summed (each value from one process: exact); sets each pair's `reference`."""
    from llmkit.train import distributed as dist_utils
    from llmkit.train.precision import autocast

    every = [pair for pairs in pair_sets for pair in pairs]
    if info.is_main:  # (a pause before the first step, two forwards a pair: said)
        note(f"scoring the {2 * len(every):,} replies of the {len(every):,} training and validation pairs under the "
             f"starting model (DPO's reference), each alone{f', shared by {info.world_size} processes' if info.distributed else ''}")
    values = torch.zeros(len(every), 2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for k in range(info.rank, len(every), info.world_size):
        for j, reply in enumerate(every[k].replies):
            inputs, targets = _inputs_and_targets(reply)
            with autocast(info.device, precision):
                logits = model(inputs[None].to(info.device))[0]
            values[k, j] = float(reply_log_probs(logits, targets[None].to(info.device))[0])
    values = dist_utils.all_reduce_sum(values.to(info.device), info).cpu()
    for pair, (chosen, rejected) in zip(every, values.tolist()):
        pair.reference = (chosen, rejected)
    model.train(was_training)


class PreferenceLoss:
    """DPO's sigmoid loss, a mean over pairs; during validation it also keeps each pair's rewards,
    beta x log(pi / ref) of its chosen and its rejected reply."""

    mean_over = "examples"
    rows_per_example = 2

    def __init__(self, beta: float):
        self.beta = beta
        self.by_sample: dict[int, tuple[float, float]] = {}  # sample index -> (chosen reward, rejected reward)

    def __call__(self, model, batch):
        x, y, reference, indices = batch
        logits = model(x)[0]
        ratios = reply_log_probs(logits, y).view(-1, 2) - reference  # [n, 2]: log pi/ref of the chosen, the rejected reply
        rewards = self.beta * ratios
        losses = -F.logsigmoid(rewards[:, 0] - rewards[:, 1])
        loss = losses.mean()
        if torch.is_grad_enabled():  # (each pair's own, for a logged loss that the split does not change)
            from llmkit.model.sequence_grads import record_sequence_loss

            for k, value in enumerate(losses.detach().tolist()):
                record_sequence_loss(2 * k, value)
        else:
            for k, (chosen, rejected) in zip(indices.tolist(), rewards.tolist()):
                self.by_sample[k] = (chosen, rejected)
        return loss


def reward_scores(rewards: torch.Tensor) -> dict[str, float]:
    """TRL's validation figures from the pairs' rewards [n, 2]: how often the chosen reply's reward
    is the higher (val_reward_accuracy), the mean margin between them, and each mean."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    return {"val_reward_accuracy": float((chosen > rejected).double().mean()),
            "val_reward_margin": float((chosen - rejected).mean()),
            "val_chosen_reward": float(chosen.mean()), "val_rejected_reward": float(rejected.mean())}
