"""`llmkit eval --predictions P --references R`: no model, the artifact, the bad inputs."""

from __future__ import annotations

import json
import os

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmkit import artifacts


@pytest.fixture
def files(tmp_path, shared_data):
    rows = [json.loads(l) for l in open(shared_data / "translation" / "test.jsonl", encoding="utf-8")]
    src = tmp_path / "src.txt"
    ref = tmp_path / "ref.txt"
    src.write_text("\n".join(r["source"] for r in rows) + "\n", encoding="utf-8")
    ref.write_text("\n".join(r["target"] for r in rows) + "\n", encoding="utf-8")
    return tmp_path, [r["source"] for r in rows], [r["target"] for r in rows]


def test_text_files_several_metrics_one_run(cli, files):
    tmp, hyps, refs = files
    result = cli("eval", "--metric", "bleu", "--metric", "chrf,rouge", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "ev")
    assert result.exit_code == 0, result.output
    bleu = sacrebleu.metrics.BLEU()
    expected = bleu.corpus_score(hyps, [refs])
    assert str(bleu.get_signature()) in result.output and str(expected) in result.output  # printed
    art = artifacts.load(tmp / "ev", kind="eval")
    metrics = json.loads((art.path / "metrics.json").read_text())
    assert metrics["bleu"] == expected.score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert set(metrics) == {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert art.stats["signatures"]["bleu"] == str(bleu.get_signature())  # stored
    records = [json.loads(l) for l in (art.path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(hyps) and records[3]["prediction"] == hyps[3]
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    assert records[3]["rouge1"] == scorer.score(refs[3], hyps[3])["rouge1"].fmeasure
    assert artifacts.verify(tmp / "ev").ok
    # the config records file names and hashes, never absolute paths
    assert str(tmp) not in json.dumps(art.manifest.config)


def test_an_empty_prediction_scores_a_float_zero_in_every_rouge(cli, tmp_path):
    """rouge_score's LCS gives the int 0 for an empty text: its records said 0 where the others say 0.0."""
    preds, refs = tmp_path / "p.jsonl", tmp_path / "r.txt"
    preds.write_text(json.dumps({"prediction": ""}) + "\n" + json.dumps({"prediction": "a cat sat"}) + "\n")
    refs.write_text("a dog ran\na cat sat\n")
    result = cli("eval", "-m", "rouge", "--predictions", preds, "-r", refs, "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert all(type(first[name]) is float and first[name] == 0.0 for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")), first


def test_jsonl_fields_and_same_fingerprint(cli, files, shared_data):
    tmp, hyps, refs = files
    preds = tmp / "preds.jsonl"
    preds.write_text("".join(json.dumps({"completion": h}) + "\n" for h in hyps), encoding="utf-8")
    data = shared_data / "translation" / "test.jsonl"
    a = cli("eval", "-m", "bleu", "--predictions", preds, "--field", "completion", "-r", data, "--reference-field", "target", "-o", tmp / "a")
    b = cli("eval", "-m", "bleu", "--predictions", preds, "-r", data, "-o", tmp / "b")  # fields found by name
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ma = json.loads((tmp / "a" / "metrics.json").read_text())
    assert ma["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    c = cli("eval", "-m", "bleu", "--predictions", preds, "--field", "completion", "-r", data, "--reference-field", "target", "-o", tmp / "c")
    assert c.exit_code == 0, c.output
    assert artifacts.load(tmp / "a").fingerprint == artifacts.load(tmp / "c").fingerprint
    # without --reference-field, the references' field is the one --field names, as its help says
    same = tmp / "refs-same-field.jsonl"
    same.write_text("".join(json.dumps({"completion": r}) + "\n" for r in refs), encoding="utf-8")
    d = cli("eval", "-m", "bleu", "--predictions", preds, "--field", "completion", "-r", same, "-o", tmp / "d")
    assert d.exit_code == 0, d.output
    assert json.loads((tmp / "d" / "metrics.json").read_text())["bleu"] == ma["bleu"]
    # one file with both columns: its reference column is read, never --field's own (a silent 100)
    both = tmp / "both.jsonl"
    both.write_text("".join(json.dumps({"completion": h, "target": r}) + "\n" for h, r in zip(hyps, refs)), encoding="utf-8")
    e = cli("eval", "-m", "bleu", "--predictions", both, "--field", "completion", "-r", both, "-o", tmp / "e")
    assert e.exit_code == 0, e.output
    assert json.loads((tmp / "e" / "metrics.json").read_text())["bleu"] == ma["bleu"] < 100
    alone = tmp / "alone.jsonl"
    alone.write_text("".join(json.dumps({"completion": h}) + "\n" for h in hyps), encoding="utf-8")
    f = cli("eval", "-m", "bleu", "--predictions", alone, "--field", "completion", "-r", alone, "-o", tmp / "f")
    assert f.exit_code != 0 and "pass --reference-field" in f.output and not (tmp / "f").exists()
    # --field naming the very field the references are found under (a reference name): refused, not a BLEU of 100
    g = cli("eval", "-m", "bleu", "--predictions", both, "--field", "target", "-r", both, "-o", tmp / "g")
    assert g.exit_code == 1 and "scored against itself" in g.output and not (tmp / "g").exists(), g.output
    assert g.output.count("error:") == 1
    h = cli("eval", "-m", "bleu", "--predictions", both, "--field", "target", "-r", both, "--reference-field", "completion",
            "-o", tmp / "h")
    assert h.exit_code == 0 and json.loads((tmp / "h" / "metrics.json").read_text())["bleu"] < 100, h.output


@pytest.mark.parametrize("args, flag", [(["-m", "chrf", "--bleu-tokenize", "zh"], "--bleu-tokenize"),
                                        (["-m", "rouge", "--lowercase"], "--lowercase"),
                                        (["-m", "rouge", "--rouge-tokenize", "char", "--stemmer"], "--stemmer")])
def test_text_options_that_change_no_score_are_refused(cli, files, args, flag):
    """They were recorded (another fingerprint for the same scores; --stemmer with char tokens even
    wrote "stemmer:yes" into the ROUGE signature)."""
    tmp, _, _ = files
    result = cli("eval", *args, "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "unused")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and f"{flag} would change nothing here" in lines[0], result.output
    assert not (tmp / "unused").exists()


def test_label_predictions_accuracy(cli, tmp_path):
    from sklearn.metrics import f1_score

    refs = ["pos", "neg", "pos", "neu", "neg", "pos"]
    preds = ["pos", "pos", "pos", "neu", "neg", "neg"]
    (tmp_path / "p.txt").write_text("\n".join(preds) + "\n")
    (tmp_path / "r.txt").write_text("\n".join(refs) + "\n")
    result = cli("eval", "-m", "accuracy,f1", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt", "-o", tmp_path / "e")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert metrics["f1_neu"] == 1.0


def test_bootstrap_intervals_are_sacrebleus_own_and_sized_as_theory_says(cli, files, tmp_path, monkeypatch):
    """--bootstrap N: BLEU's and chrF's 95% intervals are sacrebleu's (its bootstrap, its seed, as
    `sacrebleu --confidence` prints); ROUGE's and accuracy's come from the same draws of the
    examples, and accuracy's is about 1.96 sqrt(p (1 - p) / n), the normal approximation."""
    import numpy

    tmp, hyps, refs = files
    # a seed of sacrebleu's own in the environment changes nothing, and is left as it was
    monkeypatch.setenv("SACREBLEU_SEED", "1")
    result = cli("eval", "-m", "bleu,chrf,rouge1", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "--bootstrap", "300",
                 "-o", tmp / "e")
    assert result.exit_code == 0, result.output
    assert os.environ["SACREBLEU_SEED"] == "1"
    metrics = json.loads((tmp / "e" / "metrics.json").read_text())
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    for name, metric in (("bleu", sacrebleu.metrics.BLEU()), ("chrf", sacrebleu.metrics.CHRF())):
        scored = metric.corpus_score(hyps, [refs], n_bootstrap=300)
        expected = json.loads(scored.format(width=6, signature=str(metric.get_signature()), is_json=True))
        assert metrics[name] == pytest.approx(expected["score"], abs=1e-6)
        # the interval unrounded, as sacrebleu holds it (it was its 6-decimal print, where the others are not rounded)
        assert metrics[f"{name}_ci95"] == scored._ci and round(scored._ci, 6) == expected["confidence_var"]
    # ROUGE's: the examples' F-measures (rouge-score's) resampled with sacrebleu's draws, its order statistics
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    values = numpy.array([scorer.score(ref, hyp)["rouge1"].fmeasure for hyp, ref in zip(hyps, refs)])
    draws = numpy.random.default_rng(12345).choice(len(values), size=(300, len(values)), replace=True)
    means = sorted(values[draws].sum(axis=1) / len(values))
    assert metrics["rouge1_ci95"] == pytest.approx(0.5 * (means[300 - 300 // 40 - 1] - means[300 // 40]), rel=1e-12)
    art = artifacts.load(tmp / "e")
    assert art.config["bootstrap"] == 300 and "bs:300|seed:12345" in art.stats["signatures"]["bleu"]
    # (the metrics in another order, typed twice: a set, the same artifact)
    again = cli("eval", "-m", "rouge1,chrf", "-m", "bleu", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt",
                "--bootstrap", "300", "-o", tmp / "e2")
    assert again.exit_code == 0 and artifacts.load(tmp / "e2").fingerprint == art.fingerprint
    # (and without SACREBLEU_SEED at all)
    monkeypatch.delenv("SACREBLEU_SEED")
    unset = cli("eval", "-m", "bleu,chrf,rouge1", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "--bootstrap", "300",
                "-o", tmp / "e3")
    assert unset.exit_code == 0 and artifacts.load(tmp / "e3").fingerprint == art.fingerprint
    assert "SACREBLEU_SEED" not in os.environ
    # labels: 400 examples, 70% right
    gold = ["a", "b"] * 200
    guess = [g if i % 10 < 7 else ("b" if g == "a" else "a") for i, g in enumerate(gold)]
    (tmp_path / "p.txt").write_text("\n".join(guess) + "\n")
    (tmp_path / "r.txt").write_text("\n".join(gold) + "\n")
    result = cli("eval", "-m", "accuracy,f1", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt", "--bootstrap", "1000",
                 "-o", tmp_path / "labels")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "labels" / "metrics.json").read_text())
    theory = 1.96 * (0.7 * 0.3 / 400) ** 0.5
    assert metrics["accuracy"] == 0.7 and abs(metrics["accuracy_ci95"] - theory) < 0.15 * theory, (metrics, theory)
    assert 0 < metrics["f1_ci95"] < 0.1
    # without a bootstrap the config and the metrics are as before it existed; too few resamples, or nothing to resample
    plain = cli("eval", "-m", "accuracy", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt", "-o", tmp_path / "plain")
    assert plain.exit_code == 0 and "bootstrap" not in artifacts.load(tmp_path / "plain").config
    assert not any(k.endswith("_ci95") for k in json.loads((tmp_path / "plain" / "metrics.json").read_text()))
    few = cli("eval", "-m", "accuracy", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt", "--bootstrap", "20",
              "-o", tmp_path / "few")
    assert few.exit_code == 2 and "--bootstrap 20 is too few resamples" in few.output


def test_an_unknown_tokenizer_is_a_usage_error(cli, files):
    """A bad value of either tokenizer option exits 2 as every bad option value does; ROUGE's names are the
    option's choices (in --help and the docs' table), the same as the metric module's."""
    from llmkit.eval.config import ROUGE_TOKENIZERS
    from llmkit.eval.metrics.rouge_tokenizers import NAMES

    assert ROUGE_TOKENIZERS == NAMES
    tmp, _, _ = files
    for flag in ("--bleu-tokenize", "--rouge-tokenize"):
        result = cli("eval", "-m", "bleu,rouge", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", flag, "nope", "-o", tmp / "out")
        assert result.exit_code == 2 and flag in result.output, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "bleu", "--predictions", "{tmp}/src.txt"], "needs references"),
        (["-m", "rouge", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/short.txt"], "500 predictions but 3 references"),
        (["-m", "bleu", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt", "--bleu-tokenize", "nope"], "unknown --bleu-tokenize"),
        (["-m", "rouge", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt", "--rouge-tokenize", "nope"],
         "--rouge-tokenize must be one of default, unicode, char"),
        (["-m", "blue", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt"], "unknown metric 'blue'"),
        (["-m", "perplexity", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt"], "perplexity needs a model"),
        # -m left out: perplexity is the default, which the user never asked for
        (["--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt"], "scoring --predictions needs --metric (bleu, chrf"),
        # fields of lines of text: read by nothing, recorded all the same (another fingerprint for the same scores)
        (["-m", "bleu", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt", "--reference-field", "target"],
         "--reference-field"),
        (["-m", "bleu", "--predictions", "{tmp}/src.txt", "-r", "{tmp}/ref.txt", "--field", "text"], "--field"),
        (["-m", "bleu"], "nothing to evaluate"),
        (["-m", "bleu", "--predictions", "{tmp}/missing.txt", "-r", "{tmp}/ref.txt"], "file not found"),
        (["-m", "bleu", "--predictions", "{tmp}/bad.jsonl", "-r", "{tmp}/ref.txt"], "not valid JSON"),
        (["-m", "bleu", "--predictions", "{tmp}/null.jsonl", "-r", "{tmp}/short.txt"], "field 'prediction' is null, expected text"),
        # label metrics on empty files: an "unexpected ValueError" before
        (["-m", "accuracy", "--predictions", "{tmp}/empty.txt", "-r", "{tmp}/empty.txt"], "no predictions to score"),
    ],
)
def test_bad_inputs_one_line(cli, files, args, message):
    tmp, _, _ = files
    (tmp / "short.txt").write_text("a\nb\nc\n")
    (tmp / "bad.jsonl").write_text('{"prediction": "x"}\nnot json\n')
    (tmp / "null.jsonl").write_text('{"prediction": null}\n{"prediction": "b"}\n{"prediction": "c"}\n')
    (tmp / "empty.txt").write_text("")
    result = cli("eval", *[a.format(tmp=tmp) for a in args], "-o", tmp / "out")
    # a command line that lacks something or asks the impossible: 2, like a missing -o; bad files: 1
    usage = ("needs references", "nothing to evaluate", "needs a model", "needs --metric", "--bleu-tokenize", "--rouge-tokenize",
             "unknown metric", "--reference-field", "--field")
    assert result.exit_code == (2 if any(u in message for u in usage) else 1), result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp / "out").exists()


def test_field_names_the_text_of_jsonl_references_beside_a_txt_of_predictions(cli, files):
    """--field is the references' field too, without --reference-field: used, so not refused."""
    tmp, _, _ = files
    (tmp / "p.txt").write_text("the cat sat on the mat\na dog ran in the park\n")
    (tmp / "r.jsonl").write_text(json.dumps({"answer": "the cat sat on the mat"}) + "\n"
                                 + json.dumps({"answer": "a dog ran in the park"}) + "\n")
    result = cli("eval", "-m", "bleu", "--predictions", tmp / "p.txt", "-r", tmp / "r.jsonl", "--field", "answer", "-o", tmp / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp / "o" / "metrics.json").read_text())["bleu"] == pytest.approx(100.0)


def test_config_file_options(cli, files):
    tmp, hyps, refs = files
    (tmp / "eval.toml").write_text('[eval]\nmetrics = ["bleu"]\nbleu_tokenize = "char"\nlowercase = true\n')
    result = cli("eval", "--config", tmp / "eval.toml", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "ev")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert metrics == {"bleu": sacrebleu.corpus_bleu(hyps, [refs], tokenize="char", lowercase=True).score}
    assert artifacts.load(tmp / "ev").manifest.config["bleu_tokenize"] == "char"
    # a flag given on the command line wins over the file
    result = cli("eval", "--config", tmp / "eval.toml", "--bleu-tokenize", "13a", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "ev2")
    assert json.loads((tmp / "ev2" / "metrics.json").read_text())["bleu"] == sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score
    # a string, as the command line takes it ("bleu,chrf"), as --labels and --task take one in a file
    (tmp / "string.toml").write_text('[eval]\nmetrics = "bleu,chrf"\n')
    result = cli("eval", "--config", tmp / "string.toml", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "ev3")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tmp / "ev3").manifest.config["metrics"] == ["bleu", "chrf"]


def test_predictions_of_a_checkpoint_record_its_lineage(cli, files, tmp_path, shared_data):
    from test_generate import make_checkpoint

    tmp, hyps, refs = files
    ckpt = make_checkpoint(tmp_path / "ck", "some text for a tokenizer " * 50)
    result = cli("eval", ckpt, "-m", "chrf", "--predictions", tmp / "src.txt", "-r", tmp / "ref.txt", "-o", tmp / "ev")
    assert result.exit_code == 0, result.output
    art = artifacts.load(tmp / "ev")
    assert [i["role"] for i in art.manifest.inputs] == ["checkpoint"]
    assert art.input("checkpoint").fingerprint == artifacts.load(ckpt).fingerprint


@pytest.mark.parametrize("args, flag", [(["--labels", "foo,bar"], "--labels"), (["--label-field", "xyz"], "--label-field")])
def test_label_options_with_label_files_are_refused(cli, tmp_path, args, flag):
    """Label files are compared as written (their labels read from --references): --labels and
    --label-field were accepted and recorded, another fingerprint for the same scores."""
    (tmp_path / "p.txt").write_text("a\nb\na\n")
    (tmp_path / "r.txt").write_text("a\nb\nb\n")
    base = ["eval", "-m", "accuracy,f1", "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.txt"]
    result = cli(*base, *args, "-o", tmp_path / "unused")
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and f"{flag} would change nothing here" in lines[0], result.output
    assert not (tmp_path / "unused").exists()
    assert cli(*base, "-o", tmp_path / "plain").exit_code == 0  # without it: scored


@pytest.mark.parametrize("metric", ["rouge", "bleu", "chrf"])
@pytest.mark.parametrize("empty_at", [1, 2])
def test_an_empty_reference_list_is_a_one_line_error(cli, tmp_path, metric, empty_at):
    """`{"target": []}` passed as a list of references (all() of [] is True) and ended in an
    IndexError from the scorer, or a misleading count error from sacrebleu."""
    (tmp_path / "p.txt").write_text("a cat sat\nthe dog ran\n")
    rows = [{"target": ["a cat sat down"]}, {"target": ["the dog ran off", "a dog ran"]}]
    rows[empty_at - 1]["target"] = []
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", "-m", metric, "--predictions", tmp_path / "p.txt", "-r", tmp_path / "r.jsonl", "-o", tmp_path / "out")
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert f"r.jsonl: record {empty_at} field 'target' is an empty list; give at least one reference" in lines[0], result.output
    assert not (tmp_path / "out").exists()
