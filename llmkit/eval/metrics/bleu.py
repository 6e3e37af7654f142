"""Corpus BLEU as an `evaluate.Metric`, computed by sacrebleu (offline: no hub script).

    import evaluate
    bleu = evaluate.load("path/to/llmkit/eval/metrics/bleu.py")   # or llmkit.eval.metrics.Bleu()
    bleu.compute(predictions=[...], references=[[...], ...], tokenize="13a")

One import per line: `evaluate.load` scans this file's import lines to check its dependencies.
"""

import datasets
import evaluate
import sacrebleu
from sacrebleu.metrics.bleu import _TOKENIZERS

from llmkit.eval.metrics._refs import corpus_score_with_interval, result_interval

TOKENIZERS = tuple(_TOKENIZERS)

_DESCRIPTION = "Corpus-level BLEU (Papineni et al. 2002) as computed by sacrebleu, with its reproducibility signature."

_INPUTS = """
Args:
    predictions: list of hypothesis strings, one per segment.
    references: one reference string per prediction, or a list of references per prediction
        (the same number for every prediction).
    tokenize: sacrebleu tokenizer: 13a (default), zh, intl, char, none, flores101, flores200, ...
    lowercase: case-insensitive BLEU.
    smooth_method / smooth_value / force / use_effective_order: as sacrebleu.metrics.BLEU.
Returns:
    score (0-100), counts, totals, precisions, bp, sys_len, ref_len, signature, formatted
    (sacrebleu's own one-line rendering).
"""


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018",
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
        tokenize="13a",
        lowercase=False,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        use_effective_order=False,
        n_bootstrap=1,
    ):
        if tokenize not in TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenizer {tokenize!r}; choose one of {', '.join(TOKENIZERS)}")
        bleu = sacrebleu.metrics.BLEU(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            effective_order=use_effective_order,
        )
        result = corpus_score_with_interval(bleu, predictions, references, n_bootstrap)
        return {
            "score": result.score,
            "counts": result.counts,
            "totals": result.totals,
            "precisions": result.precisions,
            "bp": result.bp,
            "sys_len": result.sys_len,
            "ref_len": result.ref_len,
            "ci95": result_interval(result, bleu, n_bootstrap),
            "signature": str(bleu.get_signature()),
            "formatted": str(result),
        }
