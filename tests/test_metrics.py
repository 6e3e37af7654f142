"""llmkit's metrics equal the reference libraries: sacrebleu, rouge-score, scikit-learn."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmkit.eval.metrics import Bleu, Chrf, Classification, Rouge, module_path
from llmkit.eval.metrics.rouge_tokenizers import CharTokenizer, UnicodeTokenizer
from llmkit.eval.text_scores import score_text


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def translation(shared_data):
    rows = _jsonl(shared_data / "translation" / "test.jsonl")
    sources = [r["source"] for r in rows]
    targets = [r["target"] for r in rows]
    shuffled = targets[:]
    random.Random(0).shuffle(shuffled)
    return sources, targets, shuffled


@pytest.fixture(scope="module")
def summarization(shared_data):
    rows = _jsonl(shared_data / "summarization" / "test.jsonl")
    lead2 = ["\n".join(r["document"].split("\n")[:2]) for r in rows]
    return lead2, [r["summary"] for r in rows]


@pytest.mark.parametrize("baseline", ["copy_source", "shuffled_reference"])
def test_bleu_and_chrf_equal_sacrebleu(translation, baseline):
    sources, targets, shuffled = translation
    hyps = sources if baseline == "copy_source" else shuffled
    ours = Bleu(keep_in_memory=True).compute(predictions=hyps, references=targets)
    bleu = sacrebleu.metrics.BLEU()
    ref = bleu.corpus_score(hyps, [targets])
    assert ref.score == sacrebleu.corpus_bleu(hyps, [targets]).score
    assert ours["score"] == ref.score
    assert ours["formatted"] == str(ref)  # every printed digit
    assert ours["signature"] == str(bleu.get_signature())
    chrf = Chrf(keep_in_memory=True).compute(predictions=hyps, references=targets)
    ref_chrf = sacrebleu.corpus_chrf(hyps, [targets])
    assert chrf["score"] == ref_chrf.score and chrf["formatted"] == str(ref_chrf)
    chrfpp = Chrf(keep_in_memory=True).compute(predictions=hyps, references=targets, word_order=2)
    assert chrfpp["score"] == sacrebleu.corpus_chrf(hyps, [targets], word_order=2).score
    assert ours["score"] > 0


def test_bleu_multi_reference_and_tokenizers(translation, shared_data):
    sources, targets, shuffled = translation
    ours = score_text(["bleu"], sources, [[t, s] for t, s in zip(targets, shuffled)])
    assert ours.metrics["bleu"] == sacrebleu.corpus_bleu(sources, [targets, shuffled]).score
    assert "nrefs:2" in ours.signatures["bleu"]
    lines = [l for l in (shared_data / "chinese.txt").read_text(encoding="utf-8").splitlines() if l.strip()][:200]
    hyps, refs = lines[:100], lines[100:200]
    for tok in ("zh", "char", "intl"):
        ours = score_text(["bleu"], hyps, [[r] for r in refs], bleu_tokenize=tok)
        ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok)
        assert ours.metrics["bleu"] == ref.score
        assert f"tok:{tok}" in ours.signatures["bleu"]


def test_rouge_equals_rouge_score(summarization):
    lead2, summaries = summarization
    for stemmer in (False, True):
        ours = Rouge(keep_in_memory=True).compute(predictions=lead2, references=summaries, use_stemmer=stemmer)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stemmer)
        scores = [scorer.score(ref, pred) for pred, ref in zip(lead2, summaries)]
        for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert ours[rouge_type] == float(np.mean([s[rouge_type].fmeasure for s in scores]))
        assert 0.05 < ours["rouge1"] < 0.9
    # Lsum uses the newline between the two lead lines: it differs from L somewhere
    assert ours["rougeLsum"] != ours["rougeL"]


@pytest.mark.parametrize("stemmer", [False, True])
def test_rouge_unicode_tokenizer_matches_default_on_english(summarization, stemmer):
    lead2, summaries = summarization
    default = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=stemmer)._tokenizer
    unicode = UnicodeTokenizer(use_stemmer=stemmer)
    for text in lead2 + summaries:
        assert unicode.tokenize(text) == default.tokenize(text)
    # the scores too, against rouge-score itself (its stemmer is NLTK's PorterStemmer(), whose
    # NLTK_EXTENSIONS mode stems "dying" to "die" and "skies" to "sky"; ORIGINAL_ALGORITHM does not)
    ours = Rouge(keep_in_memory=True).compute(predictions=lead2, references=summaries, use_stemmer=stemmer,
                                              tokenizer="unicode")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stemmer)
    scores = [scorer.score(ref, pred) for pred, ref in zip(lead2, summaries)]
    for rouge_type in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[rouge_type] == float(np.mean([s[rouge_type].fmeasure for s in scores]))
    if stemmer:
        assert unicode.tokenize("The old cat is dying; birds fly in the skies") == default.tokenize(
            "The old cat is dying; birds fly in the skies") == ["the", "old", "cat", "is", "die", "bird", "fly", "in", "the", "sky"]


def test_rouge_unicode_and_char_tokenizers_keep_combining_marks():
    """Python's re counts a combining mark as no letter: किताब ("book") and कातिब ("scribe") both
    became क त ब (ROUGE-1 1.0), and an accent typed as its own character cut a word in two."""
    book, scribe = "किताब", "कातिब"
    for name in ("unicode", "char"):
        score = Rouge(keep_in_memory=True).compute(predictions=[book], references=[scribe], tokenizer=name)["rouge1"]
        assert score < 1.0, name
    assert UnicodeTokenizer().tokenize("मैं किताब पढ़ता हूँ") == ["मैं", "किताब", "पढ़ता", "हूँ"]
    assert UnicodeTokenizer().tokenize("كَتَبَ الوَلَدُ") == ["كَتَبَ", "الوَلَدُ"]
    assert CharTokenizer().tokenize("कि का क") == ["कि", "का", "क"]
    assert CharTokenizer().tokenize("می\u200cخواهم a\u200db") == ["م", "ی", "خ", "و", "ا", "ه", "م", "a", "b"]  # ZWNJ/ZWJ: no token
    # an accent typed as its own character (NFD) is the same word as the composed one (NFC)
    assert UnicodeTokenizer().tokenize("nai\u0308ve cafe\u0301") == UnicodeTokenizer().tokenize("naïve café") == ["naïve", "café"]
    assert Rouge(keep_in_memory=True).compute(predictions=["cafe\u0301 noir"], references=["café noir"],
                                              tokenizer="unicode")["rouge1"] == 1.0


class _Whitespace:
    def tokenize(self, text):
        return text.split()


def test_chinese_rouge_per_character(shared_data):
    # default rouge-score drops every Chinese character: all zeros
    zero = Rouge(keep_in_memory=True).compute(predictions=["我爱北京"], references=["我爱上海"])
    assert zero["rouge1"] == 0.0
    # by hand: 2 of 4 characters shared -> P = R = F = 0.5; bigram 我爱 shared of 3 -> 1/3
    char = Rouge(keep_in_memory=True).compute(predictions=["我爱北京。"], references=["我爱上海"], tokenizer="char")
    assert char["rouge1"] == pytest.approx(0.5)
    assert char["rouge2"] == pytest.approx(1 / 3)
    assert char["rougeL"] == pytest.approx(0.5)
    # on real text: equals rouge-score fed the same characters separated by spaces
    lines = [l.strip() for l in (shared_data / "chinese.txt").read_text(encoding="utf-8").splitlines() if l.strip()][:120]
    hyps, refs = lines[:60], lines[60:120]
    ours = Rouge(keep_in_memory=True).compute(predictions=hyps, references=refs, tokenizer="char")
    spaced = lambda t: " ".join(CharTokenizer().tokenize(t))  # noqa: E731
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Whitespace())
    expected = [scorer.score(spaced(r), spaced(h)) for h, r in zip(hyps, refs)]
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        assert ours[rouge_type] == pytest.approx(float(np.mean([e[rouge_type].fmeasure for e in expected])), abs=1e-12)
    assert ours["rouge1"] > 0.1
    unicode = Rouge(keep_in_memory=True).compute(predictions=hyps, references=refs, tokenizer="unicode")
    assert unicode["rouge1"] == pytest.approx(ours["rouge1"])  # Chinese: one token per character either way


def test_rouge_notes_references_its_default_tokenizer_cannot_read_and_label_is_no_text_reference(cli, shared_data, tmp_path):
    lines = [l.strip() for l in (shared_data / "chinese.txt").read_text(encoding="utf-8").splitlines() if l.strip()][:20]
    (tmp_path / "hyp.txt").write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(lines[10:19] + ["an English line"]) + "\n", encoding="utf-8")
    result = cli("eval", "-m", "rouge", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "ref.txt", "-o", tmp_path / "r")
    assert result.exit_code == 0 and "note: 9 of 10 references hold letters ROUGE's default tokenizer drops (it keeps " \
        "a-z and 0-9 only: über is scored as ber), 9 of them with none it keeps" in " ".join(result.output.split()), result.output
    # a reference that keeps a few tokens (a number, a Latin name) is scored on them alone: two unrelated Chinese
    # sentences with the same year scored 1.0, unsaid
    (tmp_path / "h2.txt").write_text("林黛玉2019年没去上海\n", encoding="utf-8")
    (tmp_path / "r2.txt").write_text("贾宝玉2019年去了北京\n", encoding="utf-8")
    result = cli("eval", "-m", "rouge1", "--predictions", tmp_path / "h2.txt", "-r", tmp_path / "r2.txt", "-o", tmp_path / "r2")
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and "note: 1 of 1 references hold letters ROUGE's default tokenizer drops" in flat, flat
    assert "with none it keeps" not in flat
    # BLEU's 13a on Chinese counts whole clauses as words: noted, as sacrebleu does only when told the language
    bleu = cli("eval", "-m", "bleu", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "ref.txt", "-o", tmp_path / "bleu-13a")
    assert bleu.exit_code == 0 and "--bleu-tokenize zh scores Chinese" in " ".join(bleu.output.split()), bleu.output
    zh = cli("eval", "-m", "bleu", "--bleu-tokenize", "zh", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "ref.txt",
             "-o", tmp_path / "bleu-zh")
    assert zh.exit_code == 0 and "note:" not in zh.output
    quiet = cli("eval", "-m", "rouge", "--rouge-tokenize", "char", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "ref.txt",
                "-o", tmp_path / "c")
    assert quiet.exit_code == 0 and "note:" not in quiet.output
    # a labelled file's `label` is a reference for classification metrics only
    rows = [json.loads(l) for l in (shared_data / "sentiment" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    (tmp_path / "sst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "sst-hyp.txt").write_text("".join(f"{r['label']}\n" for r in rows), encoding="utf-8")
    bleu = cli("eval", "-m", "bleu", "--predictions", tmp_path / "sst-hyp.txt", "-r", tmp_path / "sst.jsonl", "-o", tmp_path / "b")
    assert bleu.exit_code != 0 and "--reference-field" in bleu.output and not (tmp_path / "b").exists(), bleu.output
    assert "its 'label' is a reference for classification metrics alone" in " ".join(bleu.output.split())
    accuracy = cli("eval", "-m", "accuracy", "--predictions", tmp_path / "sst-hyp.txt", "-r", tmp_path / "sst.jsonl", "-o", tmp_path / "a")
    assert accuracy.exit_code == 0 and json.loads((tmp_path / "a" / "metrics.json").read_text())["accuracy"] == 1.0


def test_classification_equals_sklearn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    refs = rng.integers(0, 3, 300).tolist()
    preds = [r if rng.random() < 0.6 else int(rng.integers(0, 4)) for r in refs]  # class 3 only predicted
    ours = Classification(keep_in_memory=True).compute(predictions=preds, references=refs)
    assert ours["accuracy"] == accuracy_score(refs, preds)
    p, r, f, s = precision_recall_fscore_support(refs, preds, average="macro", zero_division=0)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(refs, preds, average=None, zero_division=0, labels=[0, 1, 2, 3])
    for i in range(4):
        assert ours[f"precision_{i}"] == pytest.approx(p[i]) and ours[f"recall_{i}"] == pytest.approx(r[i])
        assert ours[f"f1_{i}"] == pytest.approx(f[i]) and ours[f"support_{i}"] == s[i]
    names = Classification(keep_in_memory=True).compute(
        predictions=[str(x) for x in preds], references=[str(x) for x in refs]
    )
    assert names["f1"] == pytest.approx(ours["f1"])


def test_metrics_load_through_evaluate_offline(translation):
    import evaluate

    sources, targets, _ = translation
    bleu = evaluate.load(module_path("bleu"))
    assert bleu.compute(predictions=sources, references=targets)["score"] == sacrebleu.corpus_bleu(sources, [targets]).score
    rouge = evaluate.load(module_path("rouge"))
    assert set(rouge.compute(predictions=sources[:5], references=targets[:5])) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_a_run_reports_its_own_peak_memory_not_its_parents(tmp_path):
    """getrusage's ru_maxrss survives exec: a small child of a large process would report the parent's peak."""
    import subprocess
    import sys

    ballast = bytearray(400_000_000)  # this process: over 400 MB resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from llmkit.train.metrics import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 300_000_000, child
    del ballast



def _random_label_sets(count: int, seed: int = 0):
    """Label sets of 2-9 classes and 1-80 examples, some classes only predicted or only true."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        classes = int(rng.integers(2, 10))
        n = int(rng.integers(1, 81))
        refs = rng.integers(0, classes, n).tolist()
        skill = rng.random()
        preds = [r if rng.random() < skill else int(rng.integers(0, classes + 1)) for r in refs]
        yield classes + 1, refs, preds


def _sklearn_scores(refs, preds, labels):
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # zero_division="warn", the default, gives 0
        return (accuracy_score(refs, preds), precision_recall_fscore_support(refs, preds, average="macro")[:3],
                f1_score(refs, preds, average="macro"), precision_recall_fscore_support(refs, preds, average=None, labels=labels))


def test_classification_equals_sklearn_exactly_on_many_label_sets():
    """Equal, not approximately: per-class F1 is scikit-learn's 2tp / (2tp + fp + fn). llmkit computed
    2PR / (P + R), an ulp away in about a quarter of label sets, the macro F1 with it."""
    from llmkit.eval.metrics import classification_scores

    old_formula_differs = 0
    for _, refs, preds in _random_label_sets(300):
        ours = classification_scores(preds, refs)
        labels = sorted(set(refs) | set(preds))
        accuracy, macro, macro_f1, per_class = _sklearn_scores(refs, preds, labels)
        assert ours["accuracy"] == accuracy
        assert (ours["precision"], ours["recall"], ours["f1"]) == macro and ours["f1"] == macro_f1
        for i, label in enumerate(labels):
            got = (ours[f"precision_{label}"], ours[f"recall_{label}"], ours[f"f1_{label}"], ours[f"support_{label}"])
            assert got == tuple(column[i] for column in per_class), (label, refs, preds)
            p, r = got[:2]
            old_formula_differs += (2 * p * r / (p + r) if p + r else 0.0) != got[2]
    assert old_formula_differs > 0  # the label sets do exercise the rounding difference


def test_finetune_val_f1_equals_eval_and_sklearn_exactly():
    """finetune's val_f1 (from a confusion matrix, in torch) and eval's f1 of the same predictions are
    one number, scikit-learn's; a class in neither labels nor predictions is left out of the mean."""
    import torch

    from llmkit.eval.metrics import classification_scores
    from llmkit.finetune.stage import confusion_scores

    for size, refs, preds in _random_label_sets(300, seed=1):
        confusion = torch.zeros(size + 1, size + 1, dtype=torch.float64)  # the last class never occurs
        for p, g in zip(preds, refs):
            confusion[g, p] += 1
        scores = confusion_scores(confusion)
        ours = classification_scores(preds, refs)
        accuracy, _, macro_f1, _ = _sklearn_scores(refs, preds, sorted(set(refs) | set(preds)))
        assert scores == {"val_accuracy": ours["accuracy"], "val_f1": ours["f1"]} == {"val_accuracy": accuracy, "val_f1": macro_f1}


@pytest.mark.parametrize("count", [100, 139, 1000, 4001])
def test_half_width_is_sacrebleus_interval(count):
    """The half-width llmkit's ROUGE and label intervals take is sacrebleu's Score.estimate_ci's, to the
    bit, at resample counts that do and do not divide by 40."""
    import numpy
    from sacrebleu.metrics.base import Score

    from llmkit.eval.metrics._refs import half_width

    samples = numpy.random.default_rng(count).normal(30.0, 4.0, count).tolist()
    reference = Score("x", 0.0)
    reference.estimate_ci([Score("x", s) for s in samples])
    assert half_width(samples) == reference._ci
    assert half_width(samples[::-1]) == reference._ci  # order of the samples given


@pytest.mark.parametrize("classes", [4, 300])
def test_the_label_intervals_score_each_resample_as_classification_scores_does(classes):
    """eval --bootstrap: every resample's confusion counts at once, the same accuracy and macro F1
    (its classes, its F1 formula, its mean) as classification_scores on that resample."""
    import numpy

    from llmkit.eval.metrics._refs import BOOTSTRAP_SEED, half_width
    from llmkit.eval.metrics.classification import classification_intervals, classification_scores

    rng = numpy.random.default_rng(classes)
    labels = [f"c{i}" for i in range(classes)]
    gold = rng.choice(labels, 1500)
    guess = numpy.where(rng.random(1500) < 0.6, gold, rng.choice(labels + ["only-predicted"], 1500))
    guess_norm = numpy.where(rng.random(1500) < 0.7, gold, guess)
    draws = numpy.random.default_rng(BOOTSTRAP_SEED).choice(1500, size=(200, 1500), replace=True)  # sacrebleu's
    each = [classification_scores(guess[draw], gold[draw]) for draw in draws]
    assert classification_intervals(guess, gold, 200, guess_norm) == {
        "accuracy_ci95": half_width([s["accuracy"] for s in each]), "f1_ci95": half_width([s["f1"] for s in each]),
        "accuracy_norm_ci95": half_width([(guess_norm[draw] == gold[draw]).mean() for draw in draws])}


def test_the_bootstrap_draws_in_slices_are_sacrebleus_one_draw(monkeypatch):
    """Resamples drawn a slice at a time (memory bounded) are the rows of sacrebleu's one draw, in order,
    and a slice holds no more than the budget of indices or of a caller's cells per resample."""
    import numpy

    from llmkit.eval.metrics import _refs

    monkeypatch.setattr(_refs, "SLICE_CELLS", 1000)
    whole = numpy.random.default_rng(_refs.BOOTSTRAP_SEED).choice(301, size=(50, 301), replace=True)
    slices = list(_refs.resample_slices(301, 50))
    assert len(slices) == 17 and max(len(part) for part in slices) == 3
    assert (numpy.concatenate(slices) == whole).all()
    assert max(len(part) for part in _refs.resample_slices(301, 50, cells_per_resample=500)) == 2
    values = numpy.random.default_rng(0).random(301)
    assert numpy.allclose(_refs.resampled_sums([values], 50)[0], values[whole].sum(axis=1), rtol=1e-12)


def _answer_like(words: list[str], rng: random.Random) -> str:
    """A span of words as a reader model might answer it: cased, punctuated, with articles, or empty."""
    if rng.random() < 0.05:
        return rng.choice(["", "  ", "the", "A.", "!!"])
    start = rng.randrange(len(words))
    span = words[start : start + rng.randint(1, 6)]
    if rng.random() < 0.3:
        span = [rng.choice(["the", "The", "an", "a"])] + span
    text = " ".join(span)
    if rng.random() < 0.3:
        text = text.upper() if rng.random() < 0.5 else text + rng.choice([".", ",", "?!", " ;"])
    return text


def test_squad_exact_match_and_f1_equal_torchmetrics(summarization):
    from torchmetrics.functional.text import squad as torchmetrics_squad

    from llmkit.eval.metrics import Squad

    rng = random.Random(0)
    predictions, references = [], []
    for summary in summarization[1][:300]:
        words = summary.split()
        references.append([_answer_like(words, rng) for _ in range(rng.randint(1, 3))])
        predictions.append(rng.choice(references[-1]) if rng.random() < 0.3 else _answer_like(words, rng))
    ours = Squad(keep_in_memory=True).compute(predictions=predictions, references=references, use_aggregator=False)
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        theirs = torchmetrics_squad([{"prediction_text": prediction, "id": str(i)}],
                                    [{"answers": {"text": refs, "answer_start": [0] * len(refs)}, "id": str(i)}])
        assert ours["exact_match"][i] * 100 == pytest.approx(float(theirs["exact_match"]), abs=1e-4), (prediction, refs)
        assert ours["f1"][i] * 100 == pytest.approx(float(theirs["f1"]), abs=1e-4), (prediction, refs)
    mean = Squad(keep_in_memory=True).compute(predictions=predictions, references=references)
    whole = torchmetrics_squad([{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)],
                               [{"answers": {"text": r, "answer_start": [0] * len(r)}, "id": str(i)} for i, r in enumerate(references)])
    assert mean["exact_match"] == pytest.approx(float(whole["exact_match"]), abs=1e-3)
    assert mean["f1"] == pytest.approx(float(whole["f1"]), abs=1e-3)
    assert 5 < mean["exact_match"] < mean["f1"] < 95  # (neither all right nor all wrong: the cases differ)


def test_squad_metrics_from_the_command_line(cli, tmp_path):
    (tmp_path / "hyp.txt").write_text("the Eiffel Tower\nParis, France\n1889\n")
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps({"answers": {"text": refs, "answer_start": [0] * len(refs)}}) + "\n"
                                                 for refs in (["Eiffel Tower", "The Eiffel tower."], ["Paris"], ["in 1889"])))
    run = cli("eval", "-m", "squad", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "refs.jsonl",
              "--reference-field", "answers.text", "-o", tmp_path / "ev")
    assert run.exit_code == 0, run.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["exact_match"] == pytest.approx(100 / 3) and metrics["squad_f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
    records = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [r["exact_match"] for r in records] == [1.0, 0.0, 0.0]
    # SQuAD 2.0's unanswerable questions (no answers): the empty answer is right, any other wrong; BLEU needs references
    (tmp_path / "v2.jsonl").write_text("".join(json.dumps({"answers": {"text": refs}}) + "\n" for refs in (["Paris"], [], [])))
    (tmp_path / "v2.txt").write_text("Paris\n\nsomething\n")
    v2 = cli("eval", "-m", "squad", "--predictions", tmp_path / "v2.txt", "-r", tmp_path / "v2.jsonl",
             "-o", tmp_path / "v2")  # (SQuAD's own answers.text found without --reference-field)
    assert v2.exit_code == 0, v2.output
    assert json.loads((tmp_path / "v2" / "metrics.json").read_text())["exact_match"] == pytest.approx(200 / 3)
    bleu = cli("eval", "-m", "squad,bleu", "--predictions", tmp_path / "v2.txt", "-r", tmp_path / "v2.jsonl", "--reference-field",
               "answers.text", "-o", tmp_path / "v2b")
    assert bleu.exit_code == 1 and "is an empty list; give at least one reference" in bleu.output
    from llmkit.eval.metrics import Squad

    assert Squad(keep_in_memory=True).compute(predictions=["", "x"], references=[[], []]) == {"exact_match": 50.0, "f1": 50.0}
    one = cli("eval", "-m", "squad_f1", "--predictions", tmp_path / "hyp.txt", "-r", tmp_path / "refs.jsonl",
              "--reference-field", "answers.text", "-o", tmp_path / "f1")
    assert one.exit_code == 0, one.output
    assert set(json.loads((tmp_path / "f1" / "metrics.json").read_text())) == {"squad_f1"}
