"""ROUGE-1/2/L/Lsum F-measures as an `evaluate.Metric`, computed by rouge-score (offline).

Aggregation: the mean over segments of each segment's F-measure (rouge-score's per-pair
`Score.fmeasure`); with several references per segment, the best-scoring reference per ROUGE
type, as `RougeScorer.score_multi` picks it. (The hub `rouge` metric's default bootstrap
aggregator resamples randomly; a plain mean is deterministic and equals its mid value closely.)

`tokenizer` selects how text becomes tokens; rouge-score's `default` drops every non-Latin
character, `unicode` and `char` keep them (see rouge_tokenizers.py).

One import per line: `evaluate.load` scans this file's import lines to check its dependencies.
"""

import evaluate
import numpy
from rouge_score import rouge_scorer

from llmkit.eval.metrics._refs import as_reference_lists, text_features
from llmkit.eval.metrics.rouge_tokenizers import make_tokenizer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_DESCRIPTION = "ROUGE F-measures (Lin 2004) as computed by Google's rouge-score, averaged over segments."

_INPUTS = """
Args:
    predictions: list of predicted summaries; for rougeLsum, sentences are separated by newlines.
    references: one reference per prediction, or a list of references per prediction.
    rouge_types: subset of rouge1, rouge2, rougeL, rougeLsum (also rouge3..rouge9).
    use_stemmer: Porter-stem tokens longer than 3 characters.
    tokenizer: default (rouge-score's, Latin only) | unicode | char.
    use_aggregator: True -> mean F-measure per type; False -> per-segment lists.
Returns:
    {rouge_type: mean F-measure (0-1)} (or lists per segment without the aggregator).
"""


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004",
            inputs_description=_INPUTS,
            homepage="https://github.com/google-research/google-research/tree/master/rouge",
            features=text_features(),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False, tokenizer="default", use_aggregator=True):
        rouge_types = list(rouge_types or ROUGE_TYPES)
        scorer = rouge_scorer.RougeScorer(rouge_types, tokenizer=make_tokenizer(tokenizer, use_stemmer))
        per_segment = {t: [] for t in rouge_types}
        for prediction, refs in zip(predictions, as_reference_lists(references)):
            scores = scorer.score_multi(refs, prediction) if len(refs) > 1 else scorer.score(refs[0], prediction)
            for t in rouge_types:
                per_segment[t].append(scores[t].fmeasure)
        if not use_aggregator:
            return per_segment
        return {t: float(numpy.mean(v)) if v else 0.0 for t, v in per_segment.items()}
