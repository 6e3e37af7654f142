"""Metric names accepted by `llmkit eval --metric` and the families they belong to."""

from __future__ import annotations

from llmkit.errors import UsageError, UserError, did_you_mean

TEXT = ("bleu", "chrf", "chrf++", "rouge", "rouge1", "rouge2", "rougeL", "rougeLsum", "squad", "exact_match", "squad_f1")
SQUAD = ("exact_match", "squad_f1")  # (`squad` asks for both)
LM = ("perplexity", "word_perplexity", "byte_perplexity", "bpb")
CLASSIFICATION = ("accuracy", "accuracy_norm", "precision", "recall", "f1")
PREFERENCE = ("preference",)  # (preference_accuracy and _margin; with --reference, reward_accuracy and _margin)
ALL = TEXT + LM + CLASSIFICATION + PREFERENCE
NORM_NEEDS_CHOICES = ("accuracy_norm scores multiple-choice records ('choices': each answer's log-likelihood per "
                      "character); for labels use --metric accuracy")


def parse_metrics(values: list[str]) -> list[str]:
    """`--metric bleu --metric rouge` or `--metric bleu,rouge`, in one order whatever the order typed
    (ALL's: a set of metrics, recorded in the config, is one artifact), duplicates dropped."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part not in ALL:
                raise UsageError(f"unknown metric {part!r}; {did_you_mean(part, ALL)}choose from: {', '.join(ALL)}")
            name = part
            if name not in names:
                names.append(name)
    if not names:
        raise UserError(f"no metric given; pass --metric NAME (one of: {', '.join(ALL)})")
    return sorted(names, key=ALL.index)


def no_answer_allowed(text: list[str]) -> bool:
    """Whether a record's empty list of references reads as "no answer" (SQuAD 2.0's unanswerable
    questions, scored against the empty answer): where SQuAD's scores are the only text metrics."""
    return bool(text) and all(name in ("squad", *SQUAD) for name in text)


def family(names: list[str], members: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in members]

