"""Reference handling shared by the text-overlap metrics (BLEU, chrF, ROUGE).

Kept free of `evaluate` so the metric modules stay one class each: `evaluate.load(path)` picks
the first metric class it finds in a module.
"""

from __future__ import annotations

from typing import Sequence


def text_features() -> list:
    """The inputs of a metric of texts against references, for `evaluate.MetricInfo`: each
    prediction with a list of references, or with one (ROUGE's and SQuAD's)."""
    import datasets

    return [
        datasets.Features({"predictions": datasets.Value("string", id="sequence"),
                           "references": datasets.Sequence(datasets.Value("string", id="sequence"))}),
        datasets.Features({"predictions": datasets.Value("string", id="sequence"),
                           "references": datasets.Value("string", id="sequence")}),
    ]


def as_reference_lists(references: Sequence) -> list[list[str]]:
    """Each prediction's references as a list: a bare string becomes a one-element list."""
    return [[ref] if isinstance(ref, str) else list(ref) for ref in references]


def transpose_references(references: Sequence) -> list[list[str]]:
    """sacrebleu wants one stream per reference set: [[ref1 of seg1, ref1 of seg2, ...], ...]."""
    per_segment = as_reference_lists(references)
    counts = {len(refs) for refs in per_segment}
    if len(counts) > 1:
        raise ValueError("sacrebleu needs the same number of references for every prediction")
    width = counts.pop() if counts else 1
    return [[refs[i] for refs in per_segment] for i in range(width)]


# The seed of every bootstrap (sacrebleu's own default, SACREBLEU_SEED): the same resamples on every
# run, so an eval with --bootstrap is one artifact, whatever the machine.
BOOTSTRAP_SEED = 12345
SLICE_CELLS = 10_000_000  # indices (or per-resample cells) held at once: ~80 MB


def corpus_score_with_interval(metric, predictions: Sequence[str], references: Sequence, n_bootstrap: int):
    """sacrebleu's corpus score; with n_bootstrap > 1, also its 95% interval, from sacrebleu's own
    bootstrap over the segments (it reads its seed from the environment: set here, then restored)."""
    import os

    if n_bootstrap <= 1:
        return metric.corpus_score(list(predictions), transpose_references(references))
    saved = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(BOOTSTRAP_SEED)
    try:
        return metric.corpus_score(list(predictions), transpose_references(references), n_bootstrap=n_bootstrap)
    finally:
        if saved is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = saved


def result_interval(result, metric, n_bootstrap: int) -> float | None:
    """The half-width of the 95% interval sacrebleu estimated (None without a bootstrap; 0 where
    every resample scored 0, which sacrebleu leaves unsaid)."""
    import json

    if n_bootstrap <= 1:
        return None
    # (at 17 decimals the JSON holds the double itself: at width 6, the intervals of BLEU and chrF alone were
    # rounded, 1.922662 for 1.9226616725720334)
    shown = result.format(width=17, signature=str(metric.get_signature()), is_json=True)
    return json.loads(shown).get("confidence_var", 0.0)


def half_width(samples: Sequence[float]) -> float:
    """Half the width of the 95% interval of bootstrap samples, as sacrebleu measures it (its
    Score.estimate_ci: the 1/40 and 39/40 order statistics)."""
    low, high = interval(samples)
    return 0.5 * (high - low)


def interval(samples: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of bootstrap samples itself (the order statistics half_width spans): a skewed
    score's (a perplexity, exp of a mean) is not centred on it, so `score ± half-width` misplaces both ends."""
    ordered = sorted(samples)
    low = len(ordered) // 40
    return ordered[low], ordered[len(ordered) - low - 1]


def resample_slices(count: int, n_bootstrap: int, cells_per_resample: int = 0):
    """The bootstrap's resampled indices, drawn as sacrebleu draws them (`default_rng(seed).choice(count,
    size=(n_bootstrap, count))`), yielded a slice of rows at a time: arrays [rows, count] whose
    concatenation is exactly that draw (numpy draws the rows in order), each slice within ~80 MB of
    indices or of the `cells_per_resample` a caller builds per row, however many units and resamples
    (100,000 resamples of 10,000 units at once would be 8 GB)."""
    import numpy

    rng = numpy.random.default_rng(BOOTSTRAP_SEED)
    step = max(1, SLICE_CELLS // max(count, cells_per_resample, 1))
    for start in range(0, n_bootstrap, step):
        yield rng.choice(count, size=(min(step, n_bootstrap - start), count), replace=True)


def resampled_sums(columns: Sequence[Sequence[float]], n_bootstrap: int) -> list:
    """Each column (a value per unit: an example, a scored window) summed over each of `n_bootstrap`
    resamples of the units: arrays [n_bootstrap]."""
    import numpy

    values = [numpy.asarray(column, dtype=numpy.float64) for column in columns]
    sums: list[list] = [[] for _ in values]
    for draws in resample_slices(len(values[0]), n_bootstrap):
        for parts, column in zip(sums, values):
            parts.append(column[draws].sum(axis=1))
    return [numpy.concatenate(parts) for parts in sums]
