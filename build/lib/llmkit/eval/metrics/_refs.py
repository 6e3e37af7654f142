"""Reference handling shared by the text-overlap metrics (BLEU, chrF, ROUGE).

Kept free of `evaluate` so the metric modules stay one class each: `evaluate.load(path)` picks
the first metric class it finds in a module.
"""

from __future__ import annotations

from typing import Sequence


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
