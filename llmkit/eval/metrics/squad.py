"""SQuAD's exact match and token F1 as an `evaluate.Metric` (offline: no hub script).

Each answer is normalised as the official SQuAD evaluation script does (lower case, ASCII
punctuation dropped, the articles a/an/the dropped, whitespace collapsed); exact match asks for
equal normal forms, F1 compares their words as bags. An empty answer (after normalising) scores
1 against an empty reference and 0 against any other, the SQuAD 2.0 script's rule (its 1.1 script
scored an empty pair 0). With several references a prediction takes its best score over them; the
corpus score is the mean over predictions, times 100, as both scripts report it. Written out
rather than imported: torchmetrics holds the same functions privately, and tests check these
against its public `squad()`.

One import per line: `evaluate.load` scans this file's import lines to check its dependencies.
"""

import re
import string
from collections import Counter

import evaluate
import numpy

from llmkit.eval.metrics._refs import as_reference_lists, text_features

_DESCRIPTION = "SQuAD exact match and token F1 (Rajpurkar et al. 2016), best over references, averaged over predictions."

_INPUTS = """
Args:
    predictions: list of predicted answers.
    references: one reference answer per prediction, or a list of them per prediction.
    use_aggregator: True -> mean scores (0-100); False -> per-prediction lists (0-1).
Returns:
    exact_match, f1.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normal form: lower case, no ASCII punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, EMNLP 2016",
            inputs_description=_INPUTS,
            homepage="https://rajpurkar.github.io/SQuAD-explorer/",
            features=text_features(),
        )

    def _compute(self, predictions, references, use_aggregator=True):
        per_prediction = {"exact_match": [], "f1": []}
        for prediction, refs in zip(predictions, as_reference_lists(references)):
            refs = refs or [""]  # (SQuAD 2.0's unanswerable question: its official script scores it against "")
            per_prediction["exact_match"].append(max(exact_match(prediction, ref) for ref in refs))
            per_prediction["f1"].append(max(token_f1(prediction, ref) for ref in refs))
        if not use_aggregator:
            return per_prediction
        return {name: 100.0 * float(numpy.mean(values)) if values else 0.0 for name, values in per_prediction.items()}
