"""BLEU, chrF, ROUGE and SQuAD's answer scores over predictions and references, through llmkit's evaluate metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from llmkit.errors import UsageError, UserError
from llmkit.eval.metrics import ROUGE_TYPES, instance
from llmkit.eval.metrics._refs import half_width, resampled_sums
from llmkit.eval.metrics.bleu import TOKENIZERS as BLEU_TOKENIZERS
from llmkit.eval.metrics.rouge_tokenizers import NAMES as ROUGE_TOKENIZERS
from llmkit.eval.names import SQUAD


@dataclass
class TextScores:
    metrics: dict[str, float] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    formatted: dict[str, str] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)


def check_options(bleu_tokenize: str, rouge_tokenize: str) -> None:
    # (--bleu-tokenize's names are sacrebleu's, known once it is imported: checked here, not as the option's choices)
    if bleu_tokenize not in BLEU_TOKENIZERS:
        raise UsageError(f"unknown --bleu-tokenize {bleu_tokenize!r}; choose one of {', '.join(BLEU_TOKENIZERS)}")
    if rouge_tokenize not in ROUGE_TOKENIZERS:
        raise UsageError(f"unknown --rouge-tokenize {rouge_tokenize!r}; choose one of {', '.join(ROUGE_TOKENIZERS)}")
    _check_bleu_tokenizer_runs(bleu_tokenize)


def _check_bleu_tokenizer_runs(name: str) -> None:
    """Some of sacrebleu's tokenizers need more than sacrebleu (flores: sentencepiece and a model it
    downloads; ja-mecab/ko-mecab: MeCab and a dictionary): said before scoring, in one line."""
    from sacrebleu.metrics.bleu import BLEU

    try:
        BLEU(tokenize=name)
    except (ImportError, RuntimeError, OSError, ValueError) as exc:
        needs = {"flores101": "sentencepiece and a download of its model", "flores200": "sentencepiece and a download of "
                 "its model", "ja-mecab": "pip install 'sacrebleu[ja]'", "ko-mecab": "pip install 'sacrebleu[ko]'"}
        raise UserError(f"--bleu-tokenize {name} cannot run here ({' '.join(str(exc).split())}); it needs "
                        f"{needs.get(name, 'more than sacrebleu')}, or pick another tokenizer (13a, intl, zh, char)") from exc


def score_text(
    names: list[str],
    predictions: list[str],
    references: list[list[str]],
    *,
    bleu_tokenize: str = "13a",
    lowercase: bool = False,
    rouge_tokenize: str = "default",
    stemmer: bool = False,
    bootstrap: int = 0,
) -> TextScores:
    """`bootstrap` resamples: each metric's 95% interval too, as `NAME_ci95` (its half-width;
    sacrebleu's own bootstrap for BLEU and chrF, the same draws for ROUGE's mean)."""
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions but {len(references)} references; they must pair up one to one")
    if not predictions:
        raise UserError("no predictions to score")
    check_options(bleu_tokenize, rouge_tokenize)
    widths = {len(r) for r in references}
    if len(widths) > 1 and any(n in names for n in ("bleu", "chrf", "chrf++")):
        raise UserError("BLEU/chrF need the same number of references for every segment; give every segment equally many")
    scores = TextScores()
    if bootstrap and len(predictions) < 2:
        bootstrap = 0
        note_one_example()
    if "bleu" in names:
        result = instance("bleu").compute(
            predictions=predictions, references=references, tokenize=bleu_tokenize, lowercase=lowercase, n_bootstrap=bootstrap
        )
        scores.metrics["bleu"] = result["score"]
        if bootstrap:
            scores.metrics["bleu_ci95"] = result["ci95"]
        scores.signatures["bleu"] = result["signature"]
        scores.formatted["bleu"] = result["formatted"]
    for name, word_order in (("chrf", 0), ("chrf++", 2)):
        if name in names:
            result = instance("chrf").compute(
                predictions=predictions, references=references, word_order=word_order, lowercase=lowercase,
                n_bootstrap=bootstrap,
            )
            scores.metrics[name] = result["score"]
            if bootstrap:
                scores.metrics[f"{name}_ci95"] = result["ci95"]
            scores.signatures[name] = result["signature"]
            scores.formatted[name] = result["formatted"]
    rouge_types = list(ROUGE_TYPES) if "rouge" in names else [n for n in names if n in ROUGE_TYPES]
    if rouge_types:
        per_segment = instance("rouge").compute(
            predictions=predictions,
            references=references,
            rouge_types=rouge_types,
            use_stemmer=stemmer,
            tokenizer=rouge_tokenize,
            use_aggregator=False,
        )
        for rouge_type in rouge_types:
            values = [float(value) for value in per_segment[rouge_type]]  # (rouge_score gives an int 0 for an empty text)
            scores.metrics[rouge_type] = float(numpy.mean(values))
            scores.per_example[rouge_type] = values
            if bootstrap:
                [sums] = resampled_sums([values], bootstrap)
                scores.metrics[f"{rouge_type}_ci95"] = half_width((sums / len(values)).tolist())
        scores.signatures["rouge"] = f"tokenizer:{rouge_tokenize}|stemmer:{'yes' if stemmer else 'no'}|agg:mean-f"
    squad = list(SQUAD) if "squad" in names else [n for n in names if n in SQUAD]
    if squad:
        per_answer = instance("squad").compute(predictions=predictions, references=references, use_aggregator=False)
        for name in squad:
            values = per_answer["f1" if name == "squad_f1" else name]
            scores.metrics[name] = 100.0 * float(numpy.mean(values))
            scores.per_example[name] = values
            if bootstrap:
                [sums] = resampled_sums([values], bootstrap)
                scores.metrics[f"{name}_ci95"] = half_width((100.0 * sums / len(values)).tolist())
        scores.signatures["squad"] = "normalize:squad|empty:squad-v2|refs:max|agg:mean"
    return scores


def note_one_example() -> None:
    """Said where --bootstrap meets one example: every resample is that example, and an interval
    of 0 would look exact (perplexity's windows say the same in llmkit/eval/perplexity.py)."""
    from llmkit.console import note

    note("no intervals: one example was scored, and the bootstrap resamples examples; give more examples")
