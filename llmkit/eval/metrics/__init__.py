"""llmkit's metrics: `evaluate.Metric` subclasses defined in the package, so they load offline.

    from llmkit.eval.metrics import Bleu
    Bleu().compute(predictions=hyps, references=refs, tokenize="13a")

or through evaluate's own API with the module's path (no hub access):

    evaluate.load(llmkit.eval.metrics.module_path("bleu"))

Each module holds exactly one metric class (evaluate.load takes the first one it finds).
"""

from __future__ import annotations

from pathlib import Path

from llmkit.eval.metrics.bleu import Bleu
from llmkit.eval.metrics.chrf import Chrf
from llmkit.eval.metrics.classification import Classification, classification_scores
from llmkit.eval.metrics.rouge import ROUGE_TYPES, Rouge
from llmkit.eval.metrics.squad import Squad

__all__ = ["Bleu", "Chrf", "Rouge", "Squad", "Classification", "classification_scores", "ROUGE_TYPES", "module_path", "instance"]

_CLASSES = {"bleu": Bleu, "chrf": Chrf, "rouge": Rouge, "squad": Squad, "classification": Classification}


def module_path(name: str) -> str:
    """File path of a metric module, for `evaluate.load(path)`."""
    if name not in _CLASSES:
        raise KeyError(f"no llmkit metric module {name!r}; choose one of {', '.join(_CLASSES)}")
    return str(Path(__file__).with_name(f"{name}.py"))


def instance(name: str):
    """An in-memory metric instance (no cache files written)."""
    return _CLASSES[name](keep_in_memory=True)
