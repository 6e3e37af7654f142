"""Accuracy, precision, recall and F1 (macro and per class) as an `evaluate.Metric`.

Written with numpy rather than calling scikit-learn, which llmkit does not depend on at run
time; the tests check every number against scikit-learn (`accuracy_score`, `f1_score`,
`precision_recall_fscore_support`, with its default zero_division, which gives 0) for exact
equality, its formulas included (F1 = 2·tp / (2·tp + fp + fn), not 2PR / (P + R)). Classes are
the sorted union of the labels seen in references and predictions, as scikit-learn does, but for
names that are whole numbers, sorted as the numbers (finetune's ids of integer labels: the macro
mean sums in that order, so it equals the fine-tune's val_f1 to the bit).

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
    from llmkit.scores import f1_per_class

    # sorted, integers' names as the integers (as finetune numbers integer labels: "2" before "10"), others as text
    seen = set(references.tolist()) | set(predictions.tolist())
    numeric = all(isinstance(label, str) and label.isdecimal() and label.isascii() for label in seen)
    classes = sorted(seen, key=int if numeric else None)
    results = {"accuracy": float(numpy.mean(predictions == references))}
    index = {label: i for i, label in enumerate(classes)}
    confusion = numpy.zeros((len(classes), len(classes)))
    numpy.add.at(confusion, ([index[r] for r in references.tolist()], [index[p] for p in predictions.tolist()]), 1)
    f1_of, _ = f1_per_class(confusion)  # (finetune's val_f1 too: eval of its predictions reproduces it exactly)
    precisions, recalls, f1s = [], [], []
    for i, label in enumerate(classes):
        true_positive, predicted, actual = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        precision = float(true_positive / predicted) if predicted else 0.0
        recall = float(true_positive / actual) if actual else 0.0
        f1 = float(f1_of[i])
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


def classification_intervals(predictions, references, n_bootstrap, normalized_predictions=None):
    """95% intervals of accuracy and macro F1 (`accuracy_ci95`, `f1_ci95`: half-widths), the
    examples resampled as sacrebleu resamples segments, with its seed; with `normalized_predictions`
    (multiple choice's length-normalised picks) `accuracy_norm_ci95` too, from the same resamples."""
    from llmkit.eval.metrics._refs import half_width, resample_slices
    from llmkit.scores import f1_per_class

    # the labels as codes, and every resample's confusion counts at once (classification_scores per
    # resample took 11-15 s for 10,000 examples and 1,000 resamples): the same scores (llmkit.scores)
    classes, codes = numpy.unique(numpy.concatenate([numpy.asarray(list(predictions)), numpy.asarray(list(references))]),
                                  return_inverse=True)
    k, n = len(classes), len(codes) // 2
    predicted_codes, gold_codes = codes[:n], codes[n:]
    norm_correct = None
    if normalized_predictions is not None:
        norm_correct = numpy.array([pick == gold for pick, gold in zip(normalized_predictions, references)])
    accuracy, macro_f1, accuracy_norm = [], [], []
    for part in resample_slices(n, n_bootstrap, cells_per_resample=k * k):  # (confusion counts: k² a resample)
        cells = (gold_codes[part] * k + predicted_codes[part]) + (numpy.arange(len(part)) * k * k)[:, None]
        confusion = numpy.bincount(cells.ravel(), minlength=len(part) * k * k).reshape(len(part), k, k).astype(float)
        true_positive = confusion.diagonal(axis1=1, axis2=2)
        f1, seen = f1_per_class(confusion)
        macro_f1 += [float(numpy.mean(row[mask])) for row, mask in zip(f1, seen)]  # (numpy's mean, as classification_scores')
        accuracy += (true_positive.sum(axis=1) / n).tolist()
        if norm_correct is not None:
            accuracy_norm += (norm_correct[part].sum(axis=1) / n).tolist()
    intervals = {"accuracy_ci95": half_width(accuracy), "f1_ci95": half_width(macro_f1)}
    if norm_correct is not None:
        intervals["accuracy_norm_ci95"] = half_width(accuracy_norm)
    return intervals
