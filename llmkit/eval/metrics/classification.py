"""Accuracy, precision, recall and F1 (macro and per class) as an `evaluate.Metric`.

Written with numpy rather than calling scikit-learn, which llmkit does not depend on at run
time; the tests check every number against scikit-learn (`accuracy_score`, `f1_score`,
`precision_recall_fscore_support`, with its default zero_division, which gives 0) for exact
equality, its formulas included (F1 = 2·tp / (2·tp + fp + fn), not 2PR / (P + R)). Classes are
the sorted union of the labels seen in references and predictions, as scikit-learn does.

One import per line: `evaluate.load` scans this file's import lines to check its dependencies.
"""

import datasets
import evaluate
import numpy

_DESCRIPTION = "Accuracy and macro / per-class precision, recall and F1 for single-label classification."

_INPUTS = """
Args:
    predictions: predicted labels (ints or strings).
    references: true labels, same type.
    label_names: optional {label: name} used to key the per-class results.
Returns:
    accuracy, precision, recall, f1 (macro averages), and per class
    precision_<name>, recall_<name>, f1_<name>, support_<name>.
"""


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, label_names=None):
        return classification_scores(predictions, references, label_names)


def classification_scores(predictions, references, label_names=None):
    predictions = numpy.asarray(list(predictions))
    references = numpy.asarray(list(references))
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise ValueError("no examples to score")
    classes = sorted(set(references.tolist()) | set(predictions.tolist()))
    results = {"accuracy": float(numpy.mean(predictions == references))}
    precisions, recalls, f1s = [], [], []
    for label in classes:
        true_positive = float(numpy.sum((predictions == label) & (references == label)))
        predicted = float(numpy.sum(predictions == label))
        actual = float(numpy.sum(references == label))
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        # scikit-learn's F1: 2·tp / (2·tp + fp + fn) = 2·tp / (predicted + actual), 0 when both are 0. The same
        # number as 2PR / (P + R) in exact arithmetic, but that form rounds an ulp away in about a quarter of label sets
        # (llmkit.finetune.stage.confusion_scores computes val_f1 the same way, so eval reproduces it exactly).
        f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
        name = (label_names or {}).get(label, label)
        results[f"precision_{name}"] = precision
        results[f"recall_{name}"] = recall
        results[f"f1_{name}"] = f1
        results[f"support_{name}"] = int(actual)
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
    results["precision"] = float(numpy.mean(precisions))
    results["recall"] = float(numpy.mean(recalls))
    results["f1"] = float(numpy.mean(f1s))
    return results


def classification_intervals(predictions, references, n_bootstrap):
    """95% intervals of accuracy and macro F1 (`accuracy_ci95`, `f1_ci95`: half-widths), the
    examples resampled as sacrebleu resamples segments, with its seed."""
    from llmkit.eval.metrics._refs import half_width, resamples

    predictions, references = numpy.asarray(list(predictions)), numpy.asarray(list(references))
    scored = [classification_scores(predictions[draw], references[draw]) for draw in resamples(len(references), n_bootstrap)]
    return {"accuracy_ci95": half_width([s["accuracy"] for s in scored]), "f1_ci95": half_width([s["f1"] for s in scored])}
