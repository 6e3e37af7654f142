"""`eval -m preference`: a model scored on preference pairs, a prompt and the reply preferred
(`chosen`) beside another (`rejected`), read as `finetune --task dpo` reads them
(llmkit/data/preferences.py) and encoded in the checkpoint's own template (a base model's: the
plain one).

Each reply's log-probability is summed over its own tokens (the end of its turn with it), after
the prompt, on eval's scoring path (llmkit/eval/loglik.py: each sequence at shapes of its own, so
--batch-size changes no bit):

  preference_accuracy  the share of pairs whose chosen reply is the likelier (strictly)
  preference_margin    the mean of log p(chosen) - log p(rejected)

With `--reference CKPT` (a DPO run's starting checkpoint) each reply's log-ratio to that model,
log pi - log ref, as DPO's implicit reward (without beta: TRL's rewards and finetune's
val_reward_* are beta times these; the accuracy is the same at any beta):

  reward_accuracy      the share of pairs whose chosen reply has the higher reward
  reward_margin        the mean of the chosen reply's reward minus the rejected one's
"""

from __future__ import annotations

import numpy as np

from llmkit.errors import UserError
from llmkit.eval.sources import load_records
from llmkit.eval.textio import place

RECORDED = ("chosen_logprob", "rejected_logprob")


def _context_and_reply(example) -> tuple[list[int], list[int]]:
    """An encoded reply as (everything before the reply, the reply through its last learned token)."""
    learned = [i for i, flag in enumerate(example.learn) if flag]
    if not learned:
        raise UserError("a reply has no token of its own once encoded; give a non-empty reply")
    return example.ids[: learned[0]], example.ids[learned[0] : learned[-1] + 1]


def encoded_pairs(records: list[dict], template: dict, tokenizer) -> tuple[list[int], list[tuple[tuple, tuple]]]:
    """The records that prefer something (their indices), and their two replies, (context ids, reply ids)
    each, chosen first; a pair with a blank reply or the same reply twice is left out, said, as finetune
    leaves it out (a tie counted against the model)."""
    from llmkit.data.preferences import encode_reply, sft_records, why_it_prefers_nothing

    kept, pairs, left_out = [], [], {"blank": 0, "same": 0}
    for i, record in enumerate(records):
        where = place(records, i)
        replies = [encode_reply(template, reply, tokenizer, where) for reply in sft_records(record, template, where)]
        nothing = why_it_prefers_nothing(*replies, tokenizer)
        if nothing is not None:
            left_out[nothing] += 1
            continue
        kept.append(i)
        pairs.append(tuple(_context_and_reply(reply) for reply in replies))
    if any(left_out.values()):
        from llmkit.console import note

        note(f"{left_out['blank'] + left_out['same']} of {len(records)} pairs left out, as finetune --task dpo leaves them "
             f"out: {left_out['blank']} with a blank reply, {left_out['same']} with the same reply twice (they prefer nothing)")
    if not pairs:
        raise UserError("no pair of two different replies to score; give pairs whose replies differ")
    return kept, pairs


def _log_probs(loaded, pairs: list, batch_size: int) -> np.ndarray:
    """[pairs, 2] each reply's summed log-probability under `loaded`'s model."""
    from llmkit.console import note
    from llmkit.eval.choice import score_pairs
    from llmkit.eval.model_tasks import _pad_id, start_id

    flat = [reply for pair in pairs for reply in pair]
    cut: list[int] = []
    scores = score_pairs(loaded.model, loaded.tokenizer, flat, prefix_token=start_id(loaded), pad_id=_pad_id(loaded.tokenizer),
                         batch_size=batch_size, cut=cut)
    if cut:
        note(f"{len(cut)} of {len(flat)} replies are longer than {loaded.artifact.path}'s context: scored on their last "
             "tokens only")
    return np.asarray(scores, dtype=np.float64).reshape(-1, 2)


def _template(loaded) -> dict:
    from llmkit.data.templates import check_tokenizer, resolve_template

    task = loaded.task
    template = task.template if task is not None and task.template else resolve_template("plain")
    check_tokenizer(template, loaded.tokenizer, fix="evaluate another checkpoint")
    return template


def preferences(loaded, cfg, reference=None) -> tuple[dict[str, float], list[dict], np.ndarray]:
    """(metrics, prediction records, per-pair columns for the bootstrap) of --data's preference pairs."""
    records = load_records(cfg.data, cfg.split, cfg.limit)
    if not records:
        raise UserError(f"{cfg.data} holds no preference pairs")
    kept, pairs = encoded_pairs(records, _template(loaded), loaded.tokenizer)
    policy = _log_probs(loaded, pairs, cfg.batch_size)
    margins = policy[:, 0] - policy[:, 1]
    columns = {"preference_accuracy": (margins > 0).astype(np.float64), "preference_margin": margins}
    out = [{"task": "preference", "index": i, "chosen_logprob": float(c), "rejected_logprob": float(r),
            "prefers_chosen": bool(c > r)} for i, (c, r) in zip(kept, policy.tolist())]
    if reference is not None:
        if reference.tokenizer.hf.to_str() != loaded.tokenizer.hf.to_str():
            raise UserError(f"--reference {reference.artifact.path} has another tokenizer than {loaded.artifact.path}; the "
                            "rewards compare one reply's tokens under both: give the checkpoint the model was fine-tuned from")
        starting = _log_probs(reference, pairs, cfg.batch_size)
        rewards = policy - starting
        reward_margins = rewards[:, 0] - rewards[:, 1]
        columns |= {"reward_accuracy": (reward_margins > 0).astype(np.float64), "reward_margin": reward_margins}
        for record, (c, r), margin in zip(out, starting.tolist(), reward_margins.tolist()):
            record.update(chosen_reference_logprob=c, rejected_reference_logprob=r, rewards_chosen=bool(margin > 0))
    if reference is not None and reference.artifact.fingerprint == loaded.artifact.fingerprint:
        from llmkit.console import note

        note(f"--reference is {loaded.artifact.path} itself: every reward is 0, so no chosen reply's is the higher")
    metrics = {name: float(values.mean()) for name, values in columns.items()}
    return metrics, out, np.stack(list(columns.values()))


def intervals(names: list[str], columns: np.ndarray, n_bootstrap: int) -> dict[str, float]:
    """95% half-widths of each mean: the pairs resampled, sacrebleu's seed and order statistics."""
    from llmkit.eval.metrics._refs import half_width, resampled_sums

    sums = resampled_sums(list(columns), n_bootstrap)
    count = columns.shape[1]
    return {f"{name}_ci95": half_width((total / count).tolist()) for name, total in zip(names, sums)}
