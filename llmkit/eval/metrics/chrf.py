"""Corpus chrF / chrF++ as an `evaluate.Metric`, computed by sacrebleu (offline: no hub script).

One import per line: `evaluate.load` scans this file's import lines to check its dependencies.
"""

import datasets
import evaluate
import sacrebleu

from llmkit.eval.metrics._refs import corpus_score_with_interval, result_interval

_DESCRIPTION = "Character n-gram F-score (Popovic 2015; chrF++ with word_order=2) as computed by sacrebleu."

_INPUTS = """
Args:
    predictions: list of hypothesis strings.
    references: one reference string per prediction, or a list of references per prediction.
    char_order (6), word_order (0; 2 gives chrF++), beta (2), lowercase, whitespace, eps_smoothing:
        as sacrebleu.metrics.CHRF.
Returns:
    score (0-100), char_order, word_order, beta, signature, formatted.
"""


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, WMT 2015",
            inputs_description=_INPUTS,
            homepage="https://github.com/mjpost/sacrebleu",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order=6,
        word_order=0,
        beta=2,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
        n_bootstrap=1,
    ):
        chrf = sacrebleu.metrics.CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        result = corpus_score_with_interval(chrf, predictions, references, n_bootstrap)
        return {
            "score": result.score,
            "char_order": char_order,
            "word_order": word_order,
            "beta": beta,
            "ci95": result_interval(result, chrf, n_bootstrap),
            "signature": str(chrf.get_signature()),
            "formatted": str(result),
        }
