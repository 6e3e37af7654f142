"""The end of the quickstart chain on real stages: tokens -> pretrain -> generate -> eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmkit import artifacts

torch.set_num_threads(1)

FAST = ["--model", "tiny", "--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--seq-len", "64",
        "--batch-tokens", "1024", "--micro-batch", "8", "--eval-tokens", "2048", "--log-every", "50"]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    from llmkit.tokenizer.encode_corpus import TokenizeConfig, tokenize_corpus
    from llmkit.tokenizer.train import TokenizerTrainConfig, train_tokenizer
    from test_pretrain import build_corpus

    from typer.testing import CliRunner

    from llmkit.cli import app

    root = tmp_path_factory.mktemp("pipeline")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:400_000]
    docs = [p.strip() + "\n" for p in text.split("\n\n") if p.strip()]
    corpus = build_corpus(docs, root / "corpus")
    tokenizer = train_tokenizer([corpus], root / "tokenizer", TokenizerTrainConfig(vocab_size=512))
    tokens = tokenize_corpus(corpus, tokenizer, root / "tokens", TokenizeConfig(val_fraction=0.05, workers=1))
    result = CliRunner().invoke(app, ["pretrain", str(tokens), "-o", str(root / "run"), *FAST, "--max-steps", "150", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    return {"tokens": Path(tokens), "run": root / "run", "root": root}


@pytest.mark.slow
def test_generate_and_eval_a_pretrained_checkpoint(cli, trained, tmp_path):
    from llmkit.inference.prompts import document_start_id
    from llmkit.model.io import load_checkpoint

    run, tokens = trained["run"], trained["tokens"]
    loaded = load_checkpoint(run)
    # default shards are `text <|eos|>`: documents start after EOS, and generation/eval follow that
    assert artifacts.load(tokens).stats["add_bos"] is False
    assert document_start_id(loaded.tokenizer, loaded.artifact, loaded.task) == loaded.tokenizer.eos_id

    first = cli("generate", run, "-p", "ROMEO:", "-n", "30", "--seed", "3")
    again = cli("generate", run, "-p", "ROMEO:", "-n", "30", "--seed", "3")
    assert first.exit_code == 0 and first.output == again.output and len(first.output) > len("ROMEO:") + 10

    ev = tmp_path / "ev"
    result = cli("eval", run, "-m", "perplexity", "-m", "bpb", "--data", tokens, "-o", ev)
    assert result.exit_code == 0, result.output
    metrics = json.loads((ev / "metrics.json").read_text())
    # a model trained for 150 steps is far better than uniform over 512 tokens (perplexity 512), and its val loss
    # (pretrain's own, over full windows) is in the same range as the rolling-window perplexity
    assert metrics["perplexity"] < 512 / 2.5
    val_loss = artifacts.load(run).stats["val_loss"]
    assert 0.6 < metrics["perplexity"] / math.exp(val_loss) < 1.6
    assert metrics["bpb"] == pytest.approx(math.log2(metrics["byte_perplexity"]))
    assert "bpb" in result.output and "perplexity" in result.output



@pytest.fixture(scope="module")
def base_and_classifier(shared_data, tmp_path_factory):
    """A random-weight language model and a classifier checkpoint on it (task.json task classify)."""
    from test_generate import make_checkpoint, save_classifier_checkpoint

    from llmkit.model.classifier import SequenceClassifier
    from llmkit.model.io import load_checkpoint

    root = tmp_path_factory.mktemp("classifier")
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
    base = make_checkpoint(root / "base", text)
    torch.manual_seed(0)
    classifier = SequenceClassifier(load_checkpoint(base).model, 2).eval()
    ckpt = save_classifier_checkpoint(classifier, base, root / "cls")
    mc = root / "mc.jsonl"
    mc.write_text(json.dumps({"question": "Sky?", "choices": ["blue", "green"], "label": 0}) + "\n"
                  + json.dumps({"question": "Grass?", "choices": ["blue", "green"], "label": 1}) + "\n")
    return {"base": base, "cls": ckpt, "mc": mc, "sentiment": shared_data / "sentiment" / "test.jsonl"}


@pytest.mark.parametrize("model, data, extra, message", [
    # a classifier checkpoint classifies the bare text: no template reaches it
    ("cls", "sentiment", ["--prompt-template", "Review:{text}"], "--prompt-template would change nothing here"),
    # multiple-choice records bring their own choices: no label names are read
    ("base", "mc", ["--labels", "yes,no"], "--labels would change nothing here"),
])
def test_options_a_checkpoint_never_reads_are_refused(cli, base_and_classifier, tmp_path, model, data, extra, message):
    """They changed no score but were recorded: another fingerprint for the same numbers. Refused in
    one line, non-zero exit, nothing written; without the option the same evaluation runs."""
    paths = base_and_classifier
    args = [paths[model], "-m", "accuracy", "--data", paths[data], "--limit", "8"]
    refused = cli("eval", *args, *extra, "-o", tmp_path / "refused")
    lines = [l for l in refused.output.strip().splitlines() if l.strip()]
    assert refused.exit_code != 0 and len(lines) == 1 and message in lines[0], refused.output
    assert not (tmp_path / "refused").exists()
    plain = cli("eval", *args, "-o", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output


def test_label_and_template_options_still_read_where_they_count(cli, base_and_classifier, tmp_path):
    """--labels renames a classifier's classes; --prompt-template wraps a language model's multiple-choice
    contexts (its scores and fingerprint move with it)."""
    paths = base_and_classifier
    named = cli("eval", paths["cls"], "-m", "accuracy,f1", "--data", paths["sentiment"], "--limit", "8", "--labels", "neg,pos",
                "-o", tmp_path / "named")
    assert named.exit_code == 0, named.output
    assert {"f1_neg", "f1_pos"} <= set(json.loads((tmp_path / "named" / "metrics.json").read_text()))
    for name, extra in (("plain", []), ("wrapped", ["--prompt-template", "Q: {question}\nA:"])):
        result = cli("eval", paths["base"], "-m", "accuracy", "--data", paths["mc"], *extra, "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
    logliks = [[json.loads(l)["logliks"] for l in (tmp_path / n / "predictions.jsonl").read_text().splitlines()] for n in ("plain", "wrapped")]
    assert logliks[0] != logliks[1]


def test_csv_and_parquet_data_are_read_as_they_are_now(tmp_path, monkeypatch):
    """`datasets` keys a local file's prepared copy by its path and time: an edited file that kept
    its time (cp -p, rsync -a) was scored as its old content, under the new content's sha256."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmkit.errors import UserError
    from llmkit.eval.sources import load_records
    from llmkit.runtime import cache_dir, process_namespace

    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))  # its own: other tests fill the worker's pinned cache
    # a killed run's on this machine (no such process): removed by the next
    stale = cache_dir() / f"datasets-local-{process_namespace()}-999999999-x"
    stale.mkdir(parents=True)
    csv = tmp_path / "p.csv"
    csv.write_text("text,label\nthe king is dead,a\n", encoding="utf-8")
    assert load_records(str(csv), "train") == [{"text": "the king is dead", "label": "a"}]
    stamp = csv.stat().st_mtime_ns
    csv.write_text("text,label\nlong live the king,b\n", encoding="utf-8")
    os.utime(csv, ns=(stamp, stamp))
    assert load_records(str(csv), "train") == [{"text": "long live the king", "label": "b"}]
    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "p.parquet")
    assert load_records(str(tmp_path / "p.parquet"), "train", limit=1) == [{"text": "one"}]
    assert not list(cache_dir().glob("datasets-local-*")) and not list((cache_dir() / "datasets").glob("*"))
    (tmp_path / "header.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"--data .*header\.csv holds no records"):
        load_records(str(tmp_path / "header.csv"), "train")


def test_a_corpus_the_model_was_trained_on_is_scored_whole_and_said_so(cli, trained, tmp_path):
    """--data CORPUS scores every document: the model's training text, if it was trained on it, read
    as if held out. Said, naming the tokens artifact whose val split is held out, when the
    checkpoint's recorded inputs lead to the corpus; said in general words when they do not."""
    from test_pretrain import build_corpus

    root = trained["root"]
    result = cli("eval", trained["run"], "-m", "perplexity", "--data", root / "corpus", "--limit", "3", "-o", tmp_path / "own")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "was trained on this corpus (through" in said and "tokens" in said, said
    other = build_corpus(["Now is the winter of our discontent.\n"] * 3, tmp_path / "other")
    result = cli("eval", trained["run"], "-m", "perplexity", "--data", other, "-o", tmp_path / "other-ev")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "a corpus is scored whole" in said and "was trained on this corpus" not in said, said
