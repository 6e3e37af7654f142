"""Classification scores from confusion counts, shared by finetune (its validation `val_f1`) and eval
(`f1`, and its bootstrap intervals), so that `llmkit eval` of a classifier's validation predictions
reproduces the figure its fine-tune recorded, to the bit.

scikit-learn's conventions, without importing it: F1 of a class is 2·tp / (predicted + actual) (the
same number as 2PR / (P + R) in exact arithmetic, but that form rounds an ulp away in about a quarter
of label sets), and the macro mean runs over the classes seen in labels or predictions.
"""

from __future__ import annotations

import numpy as np


def f1_per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F1 of each class, whether it was seen) from counts [..., actual, predicted] (a batch of
    confusion matrices too); a class neither present nor predicted has no F1 (0, and not seen)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = confusion.diagonal(axis1=-2, axis2=-1)
    both = confusion.sum(axis=-2) + confusion.sum(axis=-1)  # predicted + actual
    seen = both > 0
    return np.where(seen, 2 * true_positive / np.where(seen, both, 1), 0.0), seen


def accuracy_and_macro_f1(confusion: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 of one confusion matrix [actual, predicted]."""
    confusion = np.asarray(confusion, dtype=np.float64)
    f1, seen = f1_per_class(confusion)
    return float(confusion.trace()) / float(confusion.sum()), float(np.mean(f1[seen]))


def one_class_answer(confusion: np.ndarray, names: list[str], who: str = "the classifier") -> str | None:
    """Where every prediction (of several) is one class, from confusion counts [gold, predicted] over
    classes `names`: what accuracy then measures, that class's share of the examples, not skill.
    Said by finetune's validation line and eval alike."""
    predicted = confusion.sum(axis=0)
    if confusion.sum() < 2 or int((predicted > 0).sum()) != 1:
        return None
    only = int(predicted.argmax())
    share = float(confusion[only].sum() / confusion.sum())
    return f"every prediction is {names[only]!r}, whose share of these examples is {share:.4f}: {who} answers one class whatever the text"
